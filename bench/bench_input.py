r"""Throughput of the pretraining input pipeline (docs/method.md) on this CPU.

Writes ImageNet-like records (`detcon.sample_data` photos of 300-500 px with
real FH masks, `felzenszwalb(scale=1000, min_size=1000)`) to a temporary
folder, then times `detcon.data.make_pretrain_dataset` after a warm-up. Every
image yields two views and their masks.

  python -m bench.bench_input --image_size=224 --batch_size=64 \
      --num_batches=20
"""

import glob
import io
import multiprocessing
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image
from skimage import segmentation

from bench import machine
from detcon import data, records, sample_data

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'View side, pixels.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 20, 'Timed batches.')
_WARMUP_BATCHES = flags.DEFINE_integer('warmup_batches', 3,
                                       'Untimed batches first.')
_NUM_RECORDS = flags.DEFINE_integer('num_records', 256, 'Records written.')
_NUM_UNIQUE = flags.DEFINE_integer(
    'num_unique', 48, 'Distinct images (each with its own FH run) that the '
    'records cycle through.')
_MASK_ENCODING = flags.DEFINE_enum('mask_encoding', 'png',
                                   list(records.MASK_ENCODINGS),
                                   'Mask encoding of the records.')


def _read_photo(path):
  """(JPEG bytes, height, width, FH mask `[1, H, W]`) of one photo file."""
  with open(path, 'rb') as f:
    jpeg = f.read()
  pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB'))
  masks = segmentation.felzenszwalb(pixels, scale=1000, min_size=1000)[None]
  return jpeg, pixels.shape[0], pixels.shape[1], masks


def _write_records(directory, num_records, num_unique, encoding, shards=4):
  """Writes `train-%05d-of-%05d` shards; returns their paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder = os.path.join(directory, 'photos')
  sample_data.make_imagenet_folder(folder, num_classes=1,
                                   images_per_class=num_unique, min_side=300,
                                   max_side=500)
  files = sorted(glob.glob(os.path.join(folder, '*', '*.JPEG')))
  with multiprocessing.Pool(os.cpu_count()) as pool:
    images = [(jpeg, height, width, records.encode_masks(masks, encoding))
              for jpeg, height, width, masks in pool.map(_read_photo, files)]
  paths = [os.path.join(directory, f'train-{i:05d}-of-{shards:05d}')
           for i in range(shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i in range(num_records):
    jpeg, height, width, masks = images[i % num_unique]
    example = records.make_example(
        image=jpeg, height=height, width=width, filename=f'{i}.JPEG',
        label=i % 1000 + 1, synset='n00000000', text='bench', masks=masks)
    writers[i % shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  return paths


def main(argv):
  del argv
  data.hide_gpus_from_tf()
  cores = len(os.sched_getaffinity(0))
  print(f'machine: {machine.describe()}')
  with tempfile.TemporaryDirectory() as directory:
    start = time.time()
    paths = _write_records(directory, _NUM_RECORDS.value, _NUM_UNIQUE.value,
                           _MASK_ENCODING.value)
    sizes = sum(os.path.getsize(p) for p in paths)
    print(f'wrote {_NUM_RECORDS.value} records ({_NUM_UNIQUE.value} distinct '
          f'images, {_MASK_ENCODING.value} masks, {sizes / 2**20:.1f} MiB) in '
          f'{time.time() - start:.0f} s')
    ds = data.make_pretrain_dataset(
        paths, per_device_batch=_BATCH_SIZE.value, local_devices=1,
        image_size=_IMAGE_SIZE.value, fh_mask_to_use=0, process_index=0,
        process_count=1)
    it = ds.as_numpy_iterator()
    for _ in range(_WARMUP_BATCHES.value):
      next(it)
    cpu0, wall0 = os.times(), time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
      next(it)
    wall = time.perf_counter() - wall0
    cpu1 = os.times()
  cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
  images = _BATCH_SIZE.value * _NUM_BATCHES.value
  used = cpu / wall
  print(f'image_size {_IMAGE_SIZE.value}, batch {_BATCH_SIZE.value}, '
        f'{_NUM_BATCHES.value} batches in {wall:.1f} s')
  print(f'total: {images / wall:.1f} images/s ({2 * images / wall:.1f} '
        'views/s, each image = two views + masks)')
  print(f'cores used: {used:.2f} of {cores} (CPU time / wall time)')
  print(f'per core: {images / cpu:.1f} images/s per core-second used, '
        f'{images / wall / cores:.1f} images/s per usable core')


if __name__ == '__main__':
  app.run(main)
