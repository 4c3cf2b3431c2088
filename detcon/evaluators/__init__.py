"""Evaluators of frozen features."""
