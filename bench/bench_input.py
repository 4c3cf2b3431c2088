r"""Throughput of the pretraining input pipeline on ImageNet-like records.

Writes a folder of JPEGs with ImageNet's statistics (mostly 500x375 or
375x500, quality 90, film grain for ImageNet's ~110 KB per file, one in 25
grayscale and one in 50 CMYK), turns it into records with real FH masks with
the mask script (`generate_fh_masks_for_imagenet.py`, defaults: FH scale
1000, min size 1000, PNG masks; it converts the grayscale and CMYK files to
RGB), then times on the same records, in one run:

  decode      `tf.io.decode_jpeg` of the stored JPEG bytes (from memory);
  views       decode plus the two views' crops, flips and resizes
              (`data.two_views` without masks, from memory);
  pipeline    the whole `data.make_pretrain_dataset`: records read by
              index, parsed and checked, masks decoded, both views with
              their masks, batched;

each with all usable cores, the pipeline also with 1 and 2 tf.data threads,
then the CPU time of reading one record by index (as the pipeline's order
does, `record_order.Reader`) in a random order, from these shards and from
one file of ImageNet's shard size (at least 140 MB: the records written
over and over), by the local reader and by TensorFlow's (the one other file
systems use),
and then the resident memory of the pipeline at `--memory_batch` images per
process with its default prefetch (pretraining has no shuffle buffer: the
order is a global permutation, `detcon.record_order`). Every rate is in
images (an image = two views and their masks) per second of wall time, per
tf.data thread, and per second of this process's CPU time (user + system),
which is what one core gives when the machine is not shared; `x decode` is
the CPU time per image against decoding's.

The rate one GPU needs: `--peak_tflops` x `--mfu` / (train step FLOPs per
image), spread over `--cores_per_gpu`; the FLOPs are XLA's count of the
DetCon-B ResNet-50 step at `--image_size` (`bench_train_step`'s network),
or `--gflop_per_image` when given.

  python -m bench.bench_input --num_images=240 --batch_size=64
"""

import glob
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags
from PIL import Image

from bench import machine
from detcon import data, record_order, records, sample_data

_IMAGENET_SHARD_BYTES = 140e6  # ImageNet's train shards: 1024 of ~140 MB.

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'View side, pixels.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per batch.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', 240, 'Distinct photos written (each with its own FH run).')
_EPOCHS = flags.DEFINE_integer(
    'epochs', 4, 'Timed passes over the images per measurement.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 3, 'Measurements of each stage (alternating); the median '
    'is printed.')
_RECORDS_DIR = flags.DEFINE_string(
    'records_dir', None, 'Keep the records here and reuse them when present '
    '(default: a temporary folder).')
_MEMORY_BATCH = flags.DEFINE_integer(
    'memory_batch', 512, 'Images per process of the memory measurement '
    '(0: skip it).')
_MEMORY_BATCHES = flags.DEFINE_integer(
    'memory_batches', 6, 'Batches drawn while the memory is sampled.')
_PEAK_TFLOPS = flags.DEFINE_float(
    'peak_tflops', 990, 'Peak FLOP/s of one GPU, in TFLOP/s (H100 SXM '
    'bfloat16 dense: 990).')
_MFU = flags.DEFINE_float('mfu', 0.35, 'Model FLOPs utilisation, 0 to 1.')
_CORES_PER_GPU = flags.DEFINE_integer('cores_per_gpu', 16,
                                      'CPU cores per GPU.')
_GFLOP_PER_IMAGE = flags.DEFINE_float(
    'gflop_per_image', 0, 'Train step GFLOP per image; 0: XLA\'s count of '
    'the DetCon-B ResNet-50 step at --image_size (about a minute).')


def _write_photos(folder, num_images, seed=0):
  """Writes ImageNet-like JPEGs to `folder/n00000001/`.

  Crops of the bundled photos at ImageNet's typical sizes, with grain (noise
  of 22 grey levels on the luminance, 8 on each channel) that brings a
  quality-90 JPEG of 500x375 to about ImageNet's size per file; every 25th
  is saved grayscale and every 50th CMYK, as some ImageNet files are.
  """
  rng = np.random.default_rng(seed)
  photos = sample_data.photos()
  sizes = ((500, 375),) * 7 + ((375, 500),) * 2 + ((500, 333),)  # (w, h)
  class_dir = os.path.join(folder, 'n00000001')
  os.makedirs(class_dir, exist_ok=True)
  for i in range(num_images):
    photo = photos[i % len(photos)]
    h, w, _ = photo.shape
    top, left = rng.integers(0, h // 4), rng.integers(0, w // 4)
    crop = photo[top:top + h * 3 // 4, left:left + w * 3 // 4]
    size = sizes[int(rng.integers(len(sizes)))]
    pixels = np.asarray(Image.fromarray(crop).resize(
        size, Image.Resampling.BILINEAR), np.float32)
    pixels += rng.normal(0, 22, pixels.shape[:2] + (1,))
    pixels += rng.normal(0, 8, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if i % 25 == 24:
      image = image.convert('L')
    elif i % 50 == 49:
      image = image.convert('CMYK')
    image.save(os.path.join(class_dir, f'n00000001_{i}.JPEG'), 'JPEG',
               quality=90)
  return sorted(glob.glob(os.path.join(class_dir, '*.JPEG')))


def _make_records(directory, num_images):
  """Photos and their records (mask script); returns (photos, shards)."""
  photos = _write_photos(os.path.join(directory, 'photos'), num_images)
  output = os.path.join(directory, 'records')
  if not glob.glob(os.path.join(output, 'train-*')):
    script = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'generate_fh_masks_for_imagenet.py')
    subprocess.run([sys.executable, script,
                    f'--train_directory={os.path.dirname(photos[0])}/..',
                    f'--output_directory={output}', '--train_shards=4',
                    f'--num_threads={os.cpu_count()}'], check=True,
                   capture_output=True)
  return photos, data.find_shards(output, 'train')


def _stored_images(paths):
  """(JPEG bytes, heights, widths) of every record of `paths`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  jpegs, heights, widths = [], [], []
  for serialized in tf.data.TFRecordDataset(paths):
    parsed = tf.io.parse_single_example(serialized, records.feature_spec())
    jpegs.append(parsed['image/encoded'].numpy())
    heights.append(int(parsed['image/height']))
    widths.append(int(parsed['image/width']))
  return jpegs, heights, widths


def _with_threads(ds, threads):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  return ds.with_options(options)


def _decode_only(jpegs, batch_size):
  """Shapes of decoded images, batched (the decoder's cost alone)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
  ds = ds.map(lambda x: tf.shape(tf.io.decode_jpeg(x, channels=3)),
              num_parallel_calls=data.AUTOTUNE)
  return ds.batch(batch_size).prefetch(data.AUTOTUNE)


def _views_only(jpegs, heights, widths, batch_size, image_size):
  """Both views of each image, without masks, record parsing or reading."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices((jpegs, heights, widths)).repeat()

  def views(k, element):
    jpeg, height, width = element
    parsed = dict(image=jpeg, height=height, width=width)
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([0, 0], tf.int64), k)
    view1, view2, _, _ = data.two_views(parsed, seed, image_size)
    return view1, view2

  ds = ds.enumerate().map(views, num_parallel_calls=data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True,
                  num_parallel_calls=data.AUTOTUNE).prefetch(data.AUTOTUNE)


def _pipeline(paths, batch_size, image_size):
  return data.make_pretrain_dataset(
      paths, per_device_batch=batch_size, local_devices=1,
      image_size=image_size, fh_mask_to_use=0, process_index=0,
      process_count=1)


def _rate(ds, batch_size, batches, warmup=2):
  """(images/s, CPU s per image) of `batches` batches after `warmup`."""
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  cpu0, wall0 = os.times(), time.perf_counter()
  for _ in range(batches):
    next(it)
  wall = time.perf_counter() - wall0
  cpu1 = os.times()
  cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
  images = batch_size * batches
  return images / wall, cpu / images


def _rss_mb():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def _memory(paths, batch, batches, image_size):
  """(RSS before, highest RSS while drawing `batches` batches), MiB."""
  before = _rss_mb()
  peak = [before]
  done = threading.Event()

  def sample():
    while not done.wait(0.02):
      peak[0] = max(peak[0], _rss_mb())

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  it = iter(_pipeline(paths, batch, image_size))
  for _ in range(batches):
    next(it)
  done.set()
  sampler.join()
  del it
  return before, peak[0]


def _read_costs(paths, directory, records=400):
  """CPU ms per record read by index: {(shards, reader): ms}.

  Reads `records` records in a random order with `record_order.Reader`, from
  `paths` and from one file of ImageNet's shard size (the same records
  written again until it holds at least 140 MB), locally and through
  TensorFlow's random-access reader (paths given as `file://...`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  big = os.path.join(directory, 'imagenet-size-shard')
  if not os.path.exists(big):
    with tf.io.TFRecordWriter(big) as writer:
      written = 0
      while written < _IMAGENET_SHARD_BYTES:
        for serialized in tf.data.TFRecordDataset(paths).as_numpy_iterator():
          writer.write(serialized)
          written += len(serialized) + 16
  costs = {}
  for shards, files in ((f'{len(paths)} x {_mb(paths):.1f} MB', paths),
                        (f'1 x {_mb([big]):.0f} MB', [big])):
    offsets = data.record_offsets_per_file(files)
    order = np.random.default_rng(0).permutation(sum(map(len, offsets)))
    for reader_name, prefix in (('local', ''), ('tensorflow', 'file://')):
      reader = record_order.Reader(record_order.RecordIndex.from_offsets(
          [prefix + f for f in files], offsets))
      start = time.process_time()
      for record in order[:records]:
        assert reader.read(int(record)) is not None
      costs[shards, reader_name] = (time.process_time() - start) / min(
          records, len(order)) * 1e3
  return costs


def _mb(paths):
  """Mean size of the files `paths`, in MB."""
  return statistics.mean(os.path.getsize(p) for p in paths) / 1e6


def _gflop_per_image(image_size):
  """XLA's FLOPs of the DetCon-B ResNet-50 train step per image, in GFLOP.

  The paper's recipe (`configs/detcon_b.py`: ResNet-50, 1000 classes) at
  `image_size`, as `bench_train_step` counts them.
  """
  from bench import step_cost  # pylint: disable=g-import-not-at-top
  from detcon.configs import detcon_b  # pylint: disable=g-import-not-at-top
  config = detcon_b.get_config()
  config.image_size = image_size
  config.num_classes = 1000
  return step_cost.step_flops_per_image(config) / 1e9


def main(argv):
  del argv
  data.hide_gpus_from_tf()
  cores = len(os.sched_getaffinity(0))
  print(f'machine: {machine.describe()}')
  with tempfile.TemporaryDirectory() as scratch:
    directory = _RECORDS_DIR.value or scratch
    start = time.time()
    photos, paths = _make_records(directory, _NUM_IMAGES.value)
    jpegs, heights, widths = _stored_images(paths)
    file_kb = [os.path.getsize(p) / 1000 for p in photos]
    stored_kb = [len(j) / 1000 for j in jpegs]
    print(f'{len(photos)} photos: {statistics.mean(file_kb):.0f} KB mean '
          f'(median {statistics.median(file_kb):.0f}), '
          f'{statistics.median(widths)}x{statistics.median(heights)} median; '
          f'{len(jpegs)} records, stored JPEGs {statistics.mean(stored_kb):.0f}'
          f' KB mean, FH masks; {time.time() - start:.0f} s to make')
    b, s = _BATCH_SIZE.value, _IMAGE_SIZE.value
    batches = max(1, _EPOCHS.value * len(jpegs) // b)
    stages = {
        'decode only': lambda t: _with_threads(_decode_only(jpegs, b), t),
        'decode + two views': lambda t: _with_threads(
            _views_only(jpegs, heights, widths, b, s), t),
        'whole pipeline': lambda t: _with_threads(_pipeline(paths, b, s), t),
    }
    runs = [(name, threads) for name in stages for threads in (cores,)]
    runs += [('whole pipeline', t) for t in range(1, cores) ]
    results = {run: [] for run in runs}
    for _ in range(_REPEATS.value):  # Alternating: load changes hit all.
      for name, threads in runs:
        results[name, threads].append(_rate(stages[name](threads), b, batches))
    print(f'\n{s}x{s} views, batch {b}, {batches} batches per measurement, '
          f'median of {_REPEATS.value}; load average now '
          f'{machine.load_average()}')
    print(f'{"stage":<20} {"threads":>7} {"images/s":>9} {"/thread":>8} '
          f'{"cores used":>10} {"per CPU s":>10} {"x decode":>9}')
    decode = 1 / statistics.median(c for _, c in results['decode only', cores])
    per_cpu_s = {}
    for (name, threads), rates in results.items():
      rate = statistics.median(r for r, _ in rates)
      per_cpu_s[name, threads] = 1 / statistics.median(c for _, c in rates)
      print(f'{name:<20} {threads:>7} {rate:>9.1f} {rate / threads:>8.1f} '
            f'{rate / per_cpu_s[name, threads]:>10.2f} '
            f'{per_cpu_s[name, threads]:>10.1f} '
            f'{decode / per_cpu_s[name, threads]:>8.2f}x')
    full = {t: statistics.median(r for r, _ in results['whole pipeline', t])
            for t in range(1, cores + 1)}
    print(f'pipeline scaling: {cores} threads / 1 thread = '
          f'{full[cores] / full[1]:.2f}x in images/s')
    per_core = per_cpu_s['whole pipeline', cores]
    print('\nreading one record by index, random order, CPU ms per record:')
    for (shards, reader), ms in _read_costs(paths, directory).items():
      print(f'  shards {shards:<14} {reader:<10} reader {ms:6.3f} ms')
    if _MEMORY_BATCH.value:
      before, peak = _memory(paths, _MEMORY_BATCH.value,
                             _MEMORY_BATCHES.value, s)
      # Two views: uint8 [S, S, 3] and int32 [S, S, 1] masks each.
      batch_mb = _MEMORY_BATCH.value * 2 * s * s * (3 + 4) / 2**20
      print(f'\nmemory at batch {_MEMORY_BATCH.value} (one batch is '
            f'{batch_mb:.0f} MiB), default prefetch, no shuffle buffer: '
            f'resident {before:.0f} MiB before the pipeline, {peak:.0f} MiB '
            f'at most while drawing {_MEMORY_BATCHES.value} batches '
            f'(+{peak - before:.0f} MiB)')
  gflop = _GFLOP_PER_IMAGE.value or _gflop_per_image(s)
  need = _PEAK_TFLOPS.value * 1e3 * _MFU.value / gflop
  print(f'\none GPU at {_PEAK_TFLOPS.value:.0f} TFLOP/s and MFU '
        f'{_MFU.value:.0%} with {gflop:.1f} GFLOP per image (train step, '
        f'{"given" if _GFLOP_PER_IMAGE.value else "XLA count"}) eats '
        f'{need:.0f} images/s: {need / _CORES_PER_GPU.value:.0f} images/s per '
        f'core with {_CORES_PER_GPU.value} cores; the pipeline makes '
        f'{per_core:.0f} per CPU second here '
        f'({per_core / (need / _CORES_PER_GPU.value):.2f}x of it)')


if __name__ == '__main__':
  app.run(main)
