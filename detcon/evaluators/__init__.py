"""Evaluators of a frozen backbone, one interface, one registry.

Each evaluator is a module of this package with

  evaluate(backbone: backbone.Backbone,
           settings: ml_collections.ConfigDict) -> dict[str, float]

(data settings in, metrics out). Adding an evaluator is its module and one
entry in `EVALUATORS`.
"""

from collections.abc import Callable

import ml_collections

from detcon import backbone
from detcon.evaluators import dense_linear, dense_nn, knn, linear

Evaluator = Callable[[backbone.Backbone, ml_collections.ConfigDict],
                     dict[str, float]]

EVALUATORS: dict[str, Evaluator] = {
    'linear': linear.evaluate,
    'dense_linear': dense_linear.evaluate,
    'dense_nn': dense_nn.evaluate,
    'knn': knn.evaluate,
}


def get(name: str) -> Evaluator:
  """The evaluator called `name`; a clear error naming the known ones."""
  if name not in EVALUATORS:
    raise ValueError(f'unknown evaluator {name!r}; use one of '
                     f'{", ".join(sorted(EVALUATORS))}')
  return EVALUATORS[name]
