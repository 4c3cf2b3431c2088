"""Dense evaluator: the nearest-neighbour retrieval of `dense_eval`."""

import ml_collections

from detcon import backbone
from detcon.evaluators import dense


def evaluate(frozen: backbone.Backbone,
             settings: ml_collections.ConfigDict) -> dict[str, float]:
  """{'miou', 'pixel_accuracy'} of the 'nn' protocol (`dense.DEFAULTS`)."""
  return dense.evaluate_protocol(frozen, settings, 'nn')
