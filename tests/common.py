"""Helpers shared by the test modules: commands, tiny configs, small data.

Fixtures built once per session (records, the quick demo, the photo
shards) are in conftest.py; what is here is plain functions and constants.
"""

import functools
import io
import json
import os
import socket
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import segmentation, transform

from detcon import checkpoint, networks, records, voc
from detcon.configs import detcon_b

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags of a pretraining run small enough for a CPU test: ResNet-18 at a
# quarter of its width (a step takes 1/19 of the full width's time) at 64 px.
TINY = ('--encoder=ResNet18', '--config.model.width_multiplier=0.25',
        '--image_size=64', '--batch_size=4',
        '--config.model.projector_hidden_size=64',
        '--config.model.predictor_hidden_size=64',
        '--config.model.projector_output_size=32',
        '--config.detcon.num_samples=4', '--config.num_classes=3',
        '--log_tensors_interval=0')
# Steps of the shared TINY run on real records (conftest's `pretrained_run`):
# with 12 records at batch 4 it crosses epoch boundaries.
PRETRAINED_STEPS = 5


def pretrain_args(records_dir, ckpt, *extra):
  """`python` arguments of the shared TINY run (conftest's `pretrained_run`)
  on the records in `records_dir`, saving to `ckpt`, then `extra`."""
  return ('-m', 'detcon.main_loop', *TINY, f'--max_steps={PRETRAINED_STEPS}',
          f'--dataset_directory={records_dir}', f'--checkpoint_dir={ckpt}',
          *extra)


def assert_same_final_state(ckpt, want):
  """The newest checkpoint in `ckpt` is step PRETRAINED_STEPS and bitwise
  `want`'s (a `checkpoint.restore_latest` result): online and target
  networks and BatchNorm state."""
  got = checkpoint.restore_latest(str(ckpt))
  assert got['step'] == want['step'] == PRETRAINED_STEPS
  keys = ('params', 'state', 'target_params')
  for a, b in zip(jax.tree.leaves({k: want[k] for k in keys}),
                  jax.tree.leaves({k: got[k] for k in keys}), strict=True):
    np.testing.assert_array_equal(a, b)


def python(*args, env=None, timeout=900, **kwargs):
  """Runs `python *args` in the repository; the finished process (text)."""
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=env, **kwargs)


def main_loop(*args, env=None):
  """Runs `detcon.main_loop` with TINY and `args`; asserts that it succeeds."""
  result = python('-m', 'detcon.main_loop', *TINY, *args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def two_devices_env():
  """This process's environment, its XLA_FLAGS kept, with two CPU devices."""
  flags = os.environ.get('XLA_FLAGS', '')
  return dict(os.environ,
              XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count=2')


def last_json(result):
  """The JSON object on the last line of a command's stdout."""
  return json.loads(result.stdout.strip().splitlines()[-1])


def free_port():
  """A TCP port of this host that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def tiny_config(objective='detcon_b'):
  """ResNet18 at width 0.25, 64x64 (2x2 cells), small heads: fast on a CPU."""
  c = detcon_b.get_config()
  c.objective = objective
  c.model.encoder, c.image_size, c.num_classes = 'ResNet18', 64, 4
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_size = c.model.predictor_hidden_size = 64
  c.model.projector_output_size = 32
  c.detcon.num_samples = 4
  return c


def mock_run_config(**overrides):
  """ResNet-18 (width 0.25) pretraining on mock data: 64 px, batch 2."""
  c = detcon_b.get_config()
  c.mock_data, c.image_size, c.batch_size, c.max_steps = True, 64, 2, 2
  c.model.encoder, c.model.width_multiplier = 'ResNet18', 0.25
  c.model.projector_hidden_size = c.model.predictor_hidden_size = 32
  c.model.projector_output_size = 16
  c.detcon.num_samples, c.num_classes = 4, 3
  c.log_tensors_interval = 0
  c.update_from_flattened_dict(overrides)  # Dotted keys: 'model.bn_eps'.
  return c


def fixed_batch(batch_size, image_size=64, seed=0, num_ids=5):
  """A `[1, B, ...]` batch of random images with 4x4-block masks."""
  rng = np.random.default_rng(seed)
  s = image_size

  def masks():
    coarse = rng.integers(0, num_ids, (1, batch_size, 4, 4))
    return np.kron(coarse, np.ones((s // 4, s // 4), np.int64))[
        ..., None].astype(np.int32)

  def views():
    return rng.integers(0, 256, (1, batch_size, s, s, 3), np.uint8)

  return dict(view1=views(), view2=views(),
              fh_segmentations1=masks(), fh_segmentations2=masks(),
              labels=rng.integers(0, 4, (1, batch_size)).astype(np.int32))


def write_voc(root, *, train=6, val=4, size=(48, 40), classes=3, seed=0):
  """A tiny VOC folder: coloured rectangles (class c: colour c) on noise."""
  rng = np.random.default_rng(seed)
  for d in (voc.IMAGE_DIR, voc.CLASS_DIR, voc.SPLIT_DIR):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  colours = np.array([[40, 40, 40], [230, 30, 30], [30, 30, 230],
                      [30, 200, 30]], np.uint8)
  ids = {}
  for split, n in (('train', train), ('val', val)):
    ids[split] = [f'{split}_{k}' for k in range(n)]
    for image_id in ids[split]:
      h, w = size
      labels = np.zeros((h, w), np.uint8)
      for _ in range(2):
        c = int(rng.integers(1, classes))
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        labels[y:y + h // 2, x:x + w // 2] = c
      image = colours[labels] + rng.integers(0, 20, (h, w, 3)).astype(
          np.uint8)
      labels[0, :] = 255  # A border row, ignored.
      Image.fromarray(image).save(voc.image_path(root, image_id), quality=95)
      voc.write_label_png(voc.label_path(root, image_id), labels)
    with open(os.path.join(root, voc.SPLIT_DIR, f'{split}.txt'), 'w') as f:
      f.write('\n'.join(ids[split]) + '\n')
  return ids


# (skimage photo, height, width, image encoding, mask encoding); label = i + 1.
PHOTOS = (
    ('chelsea', 90, 140, 'jpeg', 'png'),
    ('coffee', 120, 80, 'jpeg', 'raw'),
    ('camera', 100, 100, 'jpeg', 'png'),  # Grayscale JPEG.
    ('rocket', 70, 150, 'png', 'raw'),  # Non-JPEG bytes.
    ('astronaut', 110, 95, 'jpeg', 'png'),
    ('immunohistochemistry', 64, 130, 'jpeg', 'raw'),
)
FH_PARAMS = ((1000, 100), (300, 60))  # (scale, min_size) of the two masks.


def encode_image(image, fmt='jpeg'):
  """JPEG (quality 95, no chroma subsampling) or PNG bytes of `image`."""
  buf = io.BytesIO()
  if fmt == 'jpeg':
    Image.fromarray(image).save(buf, format='JPEG', quality=95, subsampling=0)
  else:
    Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def photo_example(image, masks, label, *, fmt='jpeg', encoding='png',
                  masks_bytes=None, size=None):
  """A pretraining record of `image` and its `[2, H, W]` masks."""
  height, width = size or image.shape[:2]
  if masks_bytes is None:
    masks_bytes = records.encode_masks(masks, encoding)
  return records.make_example(
      image=encode_image(image, fmt), height=height, width=width,
      filename=f'img{label}.JPEG', label=label, synset=f'n{label:08d}',
      text=f'class {label}', masks=masks_bytes)


def write_records(path, examples):
  """Writes `examples` to the TFRecord file `path`; returns the path."""
  # Imported here: the test commands that import this module for a config
  # or a batch then skip TensorFlow's seconds of import.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  return str(path)


def photo(name, height, width):
  """A scikit-image photo resized to uint8 `[H, W(, 3)]`, its 2 FH masks."""
  image = getattr(skdata, name)()
  image = transform.resize(image, (height, width), anti_aliasing=True)
  image = (image * 255).round().astype(np.uint8)
  fh_input = np.stack([image] * 3, -1) if image.ndim == 2 else image
  masks = np.stack([
      segmentation.felzenszwalb(fh_input, scale=s, min_size=m)
      for s, m in FH_PARAMS])
  assert masks.max() < 256  # The raw layout holds uint8 ids.
  return image, masks


# BatchNorm of the encoders the export tests build.
BN = networks.bn_config(0.9, 1e-5, None)


@functools.cache
def encoder_model(encoder):
  """The encoder alone (width 1) as a Haiku transform with state."""
  return hk.without_apply_rng(hk.transform_with_state(
      lambda x, is_training: networks.ResNetEncoder(encoder, 1, BN)(
          x, is_training)))


@functools.cache
def encoder_forward(encoder):
  """Jitted inference forward: (params, state, images) -> features."""
  model = encoder_model(encoder)
  return jax.jit(lambda p, s, x: model.apply(p, s, x, False)[0])


def random_images(size, seed=1):
  """Two `[size, size, 3]` float32 images, uniform in [0, 1)."""
  return np.random.default_rng(seed).uniform(
      0, 1, (2, size, size, 3)).astype(np.float32)


def torch_features(model, images):
  """Final feature map [B, H/32, W/32, C] of a torchvision ResNet."""
  import torch
  x = (images - np.asarray(networks.IMAGENET_MEAN, np.float32)) / np.asarray(
      networks.IMAGENET_STD, np.float32)
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    logits = model.fc(torch.flatten(model.avgpool(x), 1))
  return x.numpy().transpose(0, 2, 3, 1), logits.numpy()
