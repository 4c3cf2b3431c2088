r"""Throughput of generate_fh_masks_for_imagenet.py against ideal scaling.

  python -m bench.bench_fh_masks [--max_workers=4] [--num_images=80]

Writes a folder of real photos (`detcon.sample_data`, sides of 300-500 px,
about ImageNet's), times FH alone on one core to get the single-worker FH CPU
time per image `t`, then runs the script's pipeline (read, decode, FH, mask PNG,
TFRecord write) with 1..max_workers processes. The ideal for `w` workers is
`w / t` images/s: the FH work alone, perfectly spread. Throughput is counted
once every worker is up (each imports TensorFlow, a one-off of seconds that
a multi-hour job does not feel); the wall-clock figure with start-up is
printed beside it. `CPU s/image` is the workers' CPU time per image (FH plus
decoding, mask PNG and writing); `cores used` is that CPU time over the wall
time after start-up: below the number of workers, other processes held the
cores (check the load average printed before and after).
"""

import math
import os
import shutil
import tempfile
import time

from absl import app, flags
from skimage import segmentation

import generate_fh_masks_for_imagenet as fh_masks
from bench import machine
from detcon import sample_data

flags.DEFINE_integer('max_workers', os.cpu_count(),
                     'Time 1, 2, ..., max_workers worker processes.')
flags.DEFINE_integer('num_images', 80, 'Images in the generated folder.')
flags.DEFINE_integer('min_side', 300, 'Smallest image side, pixels.')
flags.DEFINE_integer('max_side', 500, 'Largest image side, pixels.')
flags.DEFINE_float('fh_scale', 1000, 'Felzenszwalb scale.')
flags.DEFINE_integer('fh_min_size', 1000, 'Felzenszwalb min segment size.')
flags.DEFINE_integer('images_per_shard', 4,
                     'Shard size; small shards balance the last ones.')
FLAGS = flags.FLAGS


def fh_seconds_per_image(entries, settings) -> tuple[float, float]:
  """Mean FH (CPU, wall) seconds per image on one core, images as stored.

  The CPU time is what a core of its own gives; the wall time also holds
  whatever other processes took from this core.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = wall = 0.0
  for entry in entries:
    with open(entry.path, 'rb') as f:
      pixels = tf.io.decode_image(f.read(), channels=3).numpy()
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for scale, min_size in settings.fh_pairs:
      segmentation.felzenszwalb(pixels, scale=scale, min_size=min_size)
    cpu += time.process_time() - start_cpu
    wall += time.perf_counter() - start_wall
  return cpu / len(entries), wall / len(entries)


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  print(f'machine: {machine.describe()}')
  root = tempfile.mkdtemp(prefix='bench_fh_masks_')
  try:
    folder = os.path.join(root, 'images')
    num_classes = 4
    sample_data.make_imagenet_folder(
        folder, num_classes=num_classes,
        images_per_class=math.ceil(FLAGS.num_images / num_classes),
        min_side=FLAGS.min_side, max_side=FLAGS.max_side)
    entries = fh_masks.list_files(
        folder, fh_masks.load_labels(None, None, [folder]))
    settings = fh_masks.Settings(((FLAGS.fh_scale, FLAGS.fh_min_size),),
                                 'png')
    t, t_wall = fh_seconds_per_image(entries, settings)
    print(f'{len(entries)} images, {FLAGS.min_side}-{FLAGS.max_side} px '
          f'sides; FH scale={FLAGS.fh_scale:g} min_size={FLAGS.fh_min_size}: '
          f'{t:.3f} CPU s per image on one core ({t_wall:.3f} s wall)')
    print(f'{"workers":>7} {"images/s":>9} {"ideal":>7} {"ratio":>6} '
          f'{"wall s":>7} {"start-up s":>10} {"with start-up":>14} '
          f'{"CPU s/image":>12} {"cores used":>10}')
    for workers in range(1, FLAGS.max_workers + 1):
      out = os.path.join(root, f'out-{workers}')
      os.makedirs(out)
      shards = fh_masks.plan_shards(
          'train', entries, max(1, len(entries) // FLAGS.images_per_shard),
          seed=0, output_directory=out)
      summary = fh_masks.run(shards, settings, workers, show_progress=False)
      if summary.failed or sum(summary.stats.images.values()) != len(entries):
        raise RuntimeError(f'the run with {workers} workers failed: '
                           f'{summary.failed}')
      rate = summary.processed_after_startup / (summary.elapsed_s -
                                                summary.startup_s)
      ideal = workers / t
      cpu = summary.stats.cpu_s
      print(f'{workers:>7} {rate:>9.2f} {ideal:>7.2f} {rate / ideal:>6.2f} '
            f'{summary.elapsed_s:>7.1f} {summary.startup_s:>10.1f} '
            f'{len(entries) / summary.elapsed_s:>14.2f} '
            f'{cpu / len(entries):>12.3f} '
            f'{cpu / (summary.elapsed_s - summary.startup_s):>10.2f}')
    load = machine.load_average()
    print(f'load average after: {load}')
  finally:
    shutil.rmtree(root)


if __name__ == '__main__':
  app.run(main)
