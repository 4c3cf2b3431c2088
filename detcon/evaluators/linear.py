"""Classification evaluator: the linear probe of `linear_eval` (BYOL's).

Records: our `train-*` / `validation-*` TFRecords.
"""

import ml_collections

from detcon import backbone, linear_eval

# Settings and their defaults (those of `python -m detcon.linear_eval`);
# None: from the backbone's pretraining run (see `linear_eval.run`).
DEFAULTS = dict(dataset_directory=None, num_steps=10_000, batch_size=256,
                learning_rate=0.2, image_size=None, eval_split='validation',
                seed=0, num_classes=None)


def evaluate(frozen: backbone.Backbone,
             settings: ml_collections.ConfigDict) -> dict[str, float]:
  """{'top1', 'top5'}: accuracies in [0, 1] of a linear classifier.

  Raises:
    ValueError: an unknown setting, or those of `linear_eval.run`.
  """
  settings = dict(settings)
  unknown = sorted(set(settings) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'unknown linear evaluation settings {unknown}; known: '
                     f'{", ".join(sorted(DEFAULTS))}')
  values = dict(DEFAULTS, **settings)
  result = linear_eval.evaluate_source(
      linear_eval.source_of(frozen), values.pop('dataset_directory'),
      **values)
  return {k: float(result[k]) for k in ('top1', 'top5')}
