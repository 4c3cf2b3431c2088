"""What the two dense evaluators share: one protocol of `dense_eval.run`."""

import ml_collections

from detcon import backbone, dense_eval

# Settings and their defaults (those of `python -m detcon.dense_eval`).
DEFAULTS = dict(dataset_directory='', num_classes=21, train_split='train',
                eval_split='val', image_size=448, crops_per_image=2,
                batch_size=16, linear_steps=2000, linear_learning_rate=0.1,
                nn_neighbours=30, nn_temperature=0.02, nn_memory_size=100_000,
                seed=0)


def evaluate_protocol(frozen: backbone.Backbone,
                      settings: ml_collections.ConfigDict,
                      protocol: str) -> dict[str, float]:
  """Runs `protocol` ('linear' or 'nn') of the dense evaluation.

  Args:
    frozen: the backbone.
    settings: `dataset_directory` (a VOC 2012 layout root, required) and any
      of `DEFAULTS`' other keys.
    protocol: the dense protocol.

  Returns:
    {'miou', 'pixel_accuracy'}: fractions in [0, 1] on the evaluation split.

  Raises:
    ValueError: an unknown setting or no `dataset_directory`.
  """
  settings = dict(settings)
  unknown = sorted(set(settings) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'unknown dense evaluation settings {unknown}; known: '
                     f'{", ".join(sorted(DEFAULTS))}')
  values = dict(DEFAULTS, **settings)
  if not values['dataset_directory']:
    raise ValueError('the dense evaluation needs settings.dataset_directory '
                     '(a VOC 2012 layout root)')
  result = dense_eval.run(backbone=frozen, output=None, picture=None,
                          protocols=[protocol], **values)
  return {k: float(result[protocol][k]) for k in ('miou', 'pixel_accuracy')}
