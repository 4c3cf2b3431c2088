r"""Dense evaluation speed, scaled to PASCAL VOC 2012 (1,464 + 1,449 images).

  python -m bench.bench_dense_eval [--encoder=ResNet50 --image_size=448]

Times each part of `detcon.dense_eval` with its default settings on a few
generated scenes of VOC's size (480 px; `detcon.scenes`) and random weights:
  * feature extraction of the train crops (the jitted batched forward pass,
    compilation excluded), in crops/s;
  * one linear-probe step (BatchNorm + 1x1 conv, logits upsampled to the
    crop), compilation excluded;
  * one evaluation image per protocol: features, the protocol's scores
    (for nn against a full memory bank of --nn_memory_size patches),
    upsampling to the label size, argmax and confusion counts;
then prints the wall time each protocol would take on VOC's train and val
splits: extraction (shared by both) + the protocol's own work.
"""

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from bench import machine
from detcon import dense_eval, scenes, voc

_ENCODER = flags.DEFINE_string('encoder', 'ResNet50', 'Encoder.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 448, 'dense_eval '
                                   '--image_size.')
_IMAGES = flags.DEFINE_integer('images', 16, 'Scenes timed per split.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'dense_eval --batch_size.')
_MEMORY = flags.DEFINE_integer('nn_memory_size', 100_000,
                               'dense_eval --nn_memory_size.')
_PROBE_STEPS = flags.DEFINE_integer(
    'probe_steps', 100, 'Probe steps timed (minus a 2-step run: each run '
    'compiles once).')

VOC_TRAIN, VOC_VAL, CROPS, LINEAR_STEPS = 1464, 1449, 2, 2000


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def main(argv):
  del argv
  print(f'machine: {machine.describe()}; {machine.describe_jax()}')
  root = tempfile.mkdtemp(prefix='bench_dense_eval_')
  scenes.write_dataset(root, num_train=_IMAGES.value, num_val=_IMAGES.value,
                       image_size=480, seed=0)
  data = os.path.join(root, 'voc')
  train_ids = voc.read_split(data, 'train')
  val_ids = voc.read_split(data, 'val')
  backbone = dense_eval.load_backbone(init='random', encoder=_ENCODER.value)
  size, batch = _IMAGE_SIZE.value, _BATCH.value
  feature_fn = dense_eval.make_feature_fn(backbone, batch)
  feature_fn(np.zeros((batch, size, size, 3), np.uint8))  # Compile.

  (train, _), extract_s = timed(
      dense_eval.extract_train_crops, data, train_ids, feature_fn,
      num_classes=6, image_size=size, crops_per_image=CROPS,
      batch_size=batch, seed=0, progress=False)
  crops_per_s = len(train_ids) * CROPS / extract_s

  def probe(steps):
    return dense_eval.train_linear_probe(
        train.features, train.labels, num_classes=21, steps=steps,
        batch_size=batch, learning_rate=0.1, seed=0)

  _, short = timed(probe, 2)
  probe_params, long = timed(probe, 2 + _PROBE_STEPS.value)
  step_s = (long - short) / _PROBE_STEPS.value

  _, h, w, d = train.features.shape
  rng = np.random.default_rng(0)
  bank = (dense_eval.normalize(rng.normal(size=(_MEMORY.value, d))),
          rng.dirichlet(np.ones(21), _MEMORY.value).astype(np.float32))

  def nn_scores(feats):
    n = len(feats)
    return dense_eval.nn_label_distributions(
        *bank, dense_eval.normalize(feats.reshape(-1, d)), neighbours=30,
        temperature=0.02).reshape(n, h, w, -1)

  scorers = {'linear': lambda f: dense_eval.probe_scores(probe_params, f, 21),
             'nn': nn_scores}
  per_image = {}
  for name, scorer in scorers.items():
    def run(ids, scorer=scorer, name=name):
      return dense_eval.evaluate(data, ids, feature_fn, {name: scorer},
                                 num_classes=21, image_size=size,
                                 batch_size=batch)
    run(val_ids[:batch])  # Compile at the full batch.
    _, seconds = timed(run, val_ids)
    per_image[name] = seconds / len(val_ids)

  extract_voc = VOC_TRAIN * CROPS / crops_per_s
  linear_voc = LINEAR_STEPS * step_s + VOC_VAL * per_image['linear']
  nn_voc = VOC_VAL * per_image['nn']
  print(f'{_ENCODER.value} at {size}x{size} ({h}x{w} features), batch '
        f'{batch}, random weights, {_IMAGES.value} scenes of 480 px per '
        'split:')
  print(f'  feature extraction: {crops_per_s:.2f} crops/s')
  print(f'  linear probe: {step_s * 1000:.0f} ms/step; evaluation '
        f'{per_image["linear"]:.3f} s/image')
  print(f'  nn: evaluation {per_image["nn"]:.3f} s/image against a bank of '
        f'{_MEMORY.value} patches')
  print(f'Scaled to VOC 2012 ({VOC_TRAIN} train x {CROPS} crops, {VOC_VAL} '
        f'val, {LINEAR_STEPS} probe steps):')
  print(f'  train feature extraction (shared): {extract_voc / 60:.1f} min')
  print(f'  linear: {linear_voc / 60:.1f} min '
        f'(+ extraction: {(extract_voc + linear_voc) / 60:.1f} min)')
  print(f'  nn: {nn_voc / 60:.1f} min '
        f'(+ extraction: {(extract_voc + nn_voc) / 60:.1f} min)')
  print(f'  both (the default): {(extract_voc + linear_voc + nn_voc) / 60:.1f}'
        ' min')


if __name__ == '__main__':
  app.run(main)
