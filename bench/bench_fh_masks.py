r"""Throughput of generate_fh_masks_for_imagenet.py against ideal scaling.

  python -m bench.bench_fh_masks [--max_workers=4] [--num_images=120]
      [--rounds=3]

Writes a folder of real photos (`detcon.sample_data`, sides of 300-500 px,
about ImageNet's), then repeats `--rounds` rounds of: time FH alone on one core
(the images as stored, decoded as the script does) to get the single-worker FH
CPU time per image `t`; run the script's pipeline (read, decode, FH, mask PNG,
TFRecord write) with 1..max_workers processes. A last FH timing closes the
final round. The ideal for `w` workers is `w / t` images/s: the FH work alone,
perfectly spread, with `t` the mean of the timings just before and just after
the round, since a shared machine's speed drifts by 10-20% over minutes. The
figures per round are printed, then the median over rounds. FH is timed with
the malloc settings the workers use (`keep_freed_memory`, which saves FH its
page faults); the time with glibc's defaults is printed once for comparison.
Shards hold one image each by default, so that no worker idles long at the
end of a run (ImageNet's shards hold 625 images, a tail a long job does not
feel).

Throughput is counted once every worker is up (each imports TensorFlow, a
one-off of seconds that a multi-hour job does not feel); the wall-clock figure
with start-up is printed beside it. `CPU s/image` is the workers' CPU time per
image and `FH share` the part of it spent in FH (the rest is decoding, mask
PNG and writing); `cores used` is that CPU time over the wall time after
start-up: below the number of workers, other processes held the cores.
"""

import math
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags
from skimage import segmentation

import generate_fh_masks_for_imagenet as fh_masks
from bench import machine
from detcon import record_writer, sample_data

flags.DEFINE_integer('max_workers', os.cpu_count(),
                     'Time 1, 2, ..., max_workers worker processes.')
flags.DEFINE_integer('num_images', 120, 'Images in the generated folder.')
flags.DEFINE_integer('rounds', 3, 'Repetitions of the FH timing + runs.')
flags.DEFINE_integer('min_side', 300, 'Smallest image side, pixels.')
flags.DEFINE_integer('max_side', 500, 'Largest image side, pixels.')
flags.DEFINE_float('fh_scale', 1000, 'Felzenszwalb scale.')
flags.DEFINE_integer('fh_min_size', 1000, 'Felzenszwalb min segment size.')
flags.DEFINE_integer('images_per_shard', 1,
                     'Shard size; small shards balance the last ones.')
FLAGS = flags.FLAGS


def decode_all(entries) -> list:
  """The stored images' pixels, decoded as the script's workers decode."""
  pixels = []
  for entry in entries:
    with open(entry.path, 'rb') as f:
      pixels.append(record_writer.decode_like_trainer(f.read()))
  return pixels


def fh_cpu_seconds_per_image(pixels, settings) -> float:
  """Mean FH CPU seconds per image on one core."""
  start = time.process_time()
  for image in pixels:
    for scale, min_size in settings.fh_pairs:
      segmentation.felzenszwalb(image, scale=scale, min_size=min_size)
  return (time.process_time() - start) / len(pixels)


def run_workers(entries, settings, workers: int, out: str) -> dict:
  """One run of the script's pipeline; its figures."""
  os.makedirs(out)
  shards = record_writer.plan_shards(
      'train', entries, max(1, len(entries) // FLAGS.images_per_shard),
      seed=0, output_directory=out)
  summary = record_writer.run(shards, settings, workers, show_progress=False)
  if summary.failed or sum(summary.stats.images.values()) != len(entries):
    raise RuntimeError(f'the run with {workers} workers failed: '
                       f'{summary.failed}')
  busy_s = summary.elapsed_s - summary.startup_s
  stats = summary.stats
  return {
      'rate': summary.processed_after_startup / busy_s,
      'wall': summary.elapsed_s,
      'startup': summary.startup_s,
      'with_startup': len(entries) / summary.elapsed_s,
      'cpu': stats.cpu_s / len(entries),
      'fh_share': stats.mask_cpu_s / stats.cpu_s,
      'cores': stats.cpu_s / busy_s,
  }


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
    settings = record_writer.Settings(
        ((FLAGS.fh_scale, FLAGS.fh_min_size),), 'png')
    pixels = decode_all(entries)
    t_default = fh_cpu_seconds_per_image(pixels, settings)
    record_writer.keep_freed_memory()  # As in the workers: the ideal's FH too.
    print(f'{len(entries)} images, {FLAGS.min_side}-{FLAGS.max_side} px '
          f'sides; FH scale={FLAGS.fh_scale:g} min_size={FLAGS.fh_min_size}; '
          f'FH alone with glibc\'s default malloc settings: {t_default:.3f} '
          'CPU s per image (below, `FH t` is with the workers\' settings)')
    header = (f'{"round":>5} {"workers":>7} {"FH t":>6} {"images/s":>9} '
              f'{"ideal":>7} {"ratio":>6} {"wall s":>7} {"start-up s":>10} '
              f'{"with start-up":>14} {"CPU s/image":>12} {"FH share":>8} '
              f'{"cores used":>10}')
    print(header)
    workers_range = range(1, FLAGS.max_workers + 1)
    ratios = {w: [] for w in workers_range}
    rates = {w: [] for w in workers_range}
    t_before = fh_cpu_seconds_per_image(pixels, settings)
    for r in range(FLAGS.rounds):
      results = {w: run_workers(entries, settings, w,
                                os.path.join(root, f'out-{r}-{w}'))
                 for w in workers_range}
      t_after = fh_cpu_seconds_per_image(pixels, settings)
      t = (t_before + t_after) / 2
      for w, res in results.items():
        ideal = w / t
        ratios[w].append(res['rate'] / ideal)
        rates[w].append(res['rate'])
        print(f'{r:>5} {w:>7} {t:>6.3f} {res["rate"]:>9.2f} {ideal:>7.2f} '
              f'{res["rate"] / ideal:>6.2f} {res["wall"]:>7.1f} '
              f'{res["startup"]:>10.1f} {res["with_startup"]:>14.2f} '
              f'{res["cpu"]:>12.3f} {res["fh_share"]:>8.1%} '
              f'{res["cores"]:>10.2f}')
      t_before = t_after
    print(f'median over {FLAGS.rounds} rounds:')
    for w in workers_range:
      speedup = statistics.median(rates[w]) / statistics.median(rates[1])
      print(f'  {w} workers: {statistics.median(rates[w]):.2f} images/s, '
            f'ratio to ideal {statistics.median(ratios[w]):.2f} '
            f'(rounds: {", ".join(f"{x:.2f}" for x in ratios[w])}), '
            f'{speedup:.2f}x one worker')
    print(f'load average after: {machine.load_average()}')
  finally:
    shutil.rmtree(root)


if __name__ == '__main__':
  app.run(main)
