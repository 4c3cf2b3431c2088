"""Tooling around the commands, outside the method: the command runner of
the demo and the studies (`commands`) and the pretraining progress bar
(`progress`)."""
