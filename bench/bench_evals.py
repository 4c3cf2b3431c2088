r"""Evaluation time during pretraining, as a share of training time.

  python -m bench.bench_evals [--bench_encoder=ResNet18 --bench_image_size=64 \
      --bench_batch_size=8 --train_steps=5 --eval_images=64 --every_steps=1000]

Times pretraining steps (mock data, compilation excluded: the first step is
not counted) and one k-NN evaluation (`evaluators.knn`, bank and queries of
`--eval_images` each from an ImageNet-layout folder of generated photos, the
encoder's compilation included as it is in every call), then prints the
evaluation's share of the training time when it runs every `--every_steps`
steps: eval_s / (every_steps x step_s + eval_s).
"""

import os
import tempfile
import time

import ml_collections
from absl import app, flags

from bench import machine
from detcon import backbone, evaluators, main_loop, sample_data
from detcon.configs import detcon_b

_ENCODER = flags.DEFINE_string('bench_encoder', 'ResNet18', 'Encoder.')
_IMAGE_SIZE = flags.DEFINE_integer('bench_image_size', 64, 'Pretraining and '
                                   'evaluation crop side, pixels.')
_BATCH = flags.DEFINE_integer('bench_batch_size', 8, 'Pretraining batch.')
_STEPS = flags.DEFINE_integer('train_steps', 5, 'Pretraining steps timed.')
_EVAL_IMAGES = flags.DEFINE_integer('eval_images', 64, 'Images in the k-NN '
                                    'bank and in the queries.')
_EVERY = flags.DEFINE_integer('every_steps', 1000, 'Evaluation interval, '
                              'steps.')


def _train_step_s() -> float:
  """Seconds per pretraining step, from the run's own step timing."""
  c = detcon_b.get_config()
  c.mock_data, c.image_size = True, _IMAGE_SIZE.value
  c.batch_size = _BATCH.value
  c.max_steps, c.model.encoder = _STEPS.value + 1, _ENCODER.value
  c.log_tensors_interval = 10**9  # Logged at the last step only.
  start = time.time()
  main_loop.run(c)
  total = time.time() - start
  # The first step compiles; time the rest from a second, 1-step run.
  c.max_steps = 1
  start = time.time()
  main_loop.run(c)
  first = time.time() - start
  return (total - first) / _STEPS.value


def main(argv):
  del argv
  step_s = _train_step_s()
  with tempfile.TemporaryDirectory() as root:
    folder = os.path.join(root, 'folder')
    sample_data.make_imagenet_folder(
        folder, num_classes=4, images_per_class=max(_EVAL_IMAGES.value // 4, 1),
        min_side=_IMAGE_SIZE.value, max_side=2 * _IMAGE_SIZE.value)
    frozen = backbone.from_random(_ENCODER.value)
    settings = ml_collections.ConfigDict(dict(
        source=f'folder:{folder}', train_split='', eval_split='',
        image_size=_IMAGE_SIZE.value, batch_size=32))
    start = time.time()
    evaluators.get('knn')(frozen, settings)
    eval_s = time.time() - start
  every = _EVERY.value
  share = eval_s / (every * step_s + eval_s)
  print(f'Machine: {machine.describe()}; {machine.describe_jax()}')
  print(f'{_ENCODER.value} at {_IMAGE_SIZE.value} px: pretraining step '
        f'{step_s:.3f} s (batch {_BATCH.value}); k-NN evaluation of '
        f'{_EVAL_IMAGES.value} + {_EVAL_IMAGES.value} images {eval_s:.2f} s; '
        f'every {every} steps: {100 * share:.2f}% of the training time')


if __name__ == '__main__':
  app.run(main)
