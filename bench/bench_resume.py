r"""What exact resume costs: the input state, the index, the first batch, speed.

The pretraining order (`detcon/record_order.py`) addresses every record by
index, so a checkpoint keeps only a few numbers of the input. This prints, in
one run:

1. ImageNet scale (1,281,167 records in 1024 shards, global batch 4096 over
   8 processes), simulated with an index of that size: the input state's
   JSON size and write + read time, the index's memory, the time to draw one
   epoch's permutation, and record lookups per second. The offset walk at
   the start is timed on generated shards and scaled to 1.28 M records.
2. On ImageNet-like records (those of `bench_input`): the time to the first
   batch of a fresh stream and of one resumed deep into training (step
   100,000 at 512 images per process), and the images/s of the whole
   pipeline with the previous reading stage (files shuffled and interleaved,
   a shuffle buffer of 10 batches) and with the indexed one, in the same run;
   and, for the previous stage, the size of a `tf.train.Checkpoint` of its
   iterator (what tf.data's own checkpointing would have saved).

  python -m bench.bench_resume --batch_size=64 --num_batches=20
"""

import json
import os
import tempfile
import time

import numpy as np
from absl import app

from bench import bench_input, machine
from detcon import data, record_order

# The records part takes bench_input's flags (--batch_size, --num_batches,
# --num_records, --image_size).
_BATCH_SIZE, _NUM_BATCHES = bench_input._BATCH_SIZE, bench_input._NUM_BATCHES
_NUM_RECORDS, _IMAGE_SIZE = bench_input._NUM_RECORDS, bench_input._IMAGE_SIZE

IMAGENET_RECORDS, IMAGENET_SHARDS = 1_281_167, 1024
GLOBAL_BATCH, PROCESSES, DEEP_STEP = 4096, 8, 100_000


def _timed(fn, repeat=1):
  start = time.perf_counter()
  for _ in range(repeat):
    out = fn()
  return out, (time.perf_counter() - start) / repeat


def imagenet_scale(directory: str) -> None:
  """Part 1: the index and the input state at ImageNet scale."""
  counts = np.full(IMAGENET_SHARDS, IMAGENET_RECORDS // IMAGENET_SHARDS)
  counts[:IMAGENET_RECORDS % IMAGENET_SHARDS] += 1
  paths = [f'/data/imagenet-fh/train-{i:05d}-of-{IMAGENET_SHARDS:05d}'
           for i in range(IMAGENET_SHARDS)]
  offsets = [np.arange(n, dtype=np.int64) * 140_000 for n in counts]
  index = record_order.RecordIndex.from_offsets(paths, offsets)
  process_batch = GLOBAL_BATCH // PROCESSES
  state = record_order.input_state(
      paths, counts.tolist(), seed=0, process_count=PROCESSES,
      process_batch=process_batch, masks='fh', origin=0)
  path = os.path.join(directory, 'input.json')

  def write_and_read():
    with open(path, 'w') as f:
      json.dump(state, f)
    with open(path) as f:
      return json.load(f)

  _, seconds = _timed(write_and_read, repeat=20)
  print(f'ImageNet scale: {IMAGENET_RECORDS:,} records in {IMAGENET_SHARDS} '
        f'shards, batch {GLOBAL_BATCH} over {PROCESSES} processes')
  print(f'  input state: {os.path.getsize(path):,} bytes of JSON per '
        f'checkpoint, written + read in {1e3 * seconds:.2f} ms')
  memory = index.file_of.nbytes + index.offset_of.nbytes
  print(f'  index in memory: {memory / 2**20:.1f} MiB per process')
  _, seconds = _timed(lambda: record_order.epoch_permutation(
      0, 3, IMAGENET_RECORDS), repeat=3)
  print(f'  one epoch\'s permutation: {1e3 * seconds:.0f} ms (once per epoch '
        f'of {IMAGENET_RECORDS // PROCESSES:,} elements of a process)')
  order = record_order.Order(IMAGENET_RECORDS, seed=0, process_index=5,
                             process_count=PROCESSES)
  deep = DEEP_STEP * process_batch
  _, seconds = _timed(lambda: order.record(deep))  # Draws that epoch.
  print(f'  first lookup at step {DEEP_STEP:,} (element {deep:,}, epoch '
        f'{deep // order.epoch_length}): {1e3 * seconds:.0f} ms')
  _, seconds = _timed(lambda: [order.record(deep + i) for i in range(10_000)])
  print(f'  then {10_000 / seconds:,.0f} lookups/s')


def offset_walk(directory: str) -> None:
  """The start-up walk of every record's offset, scaled to ImageNet."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shards, per_shard = 64, 400
  payload = os.urandom(1000)
  paths = []
  for s in range(shards):
    paths.append(os.path.join(directory, f'walk-{s:05d}'))
    with tf.io.TFRecordWriter(paths[-1]) as writer:
      for _ in range(per_shard):
        writer.write(payload)
  _, seconds = _timed(lambda: data.record_offsets_per_file(paths))
  n = shards * per_shard
  print(f'  offset walk: {n:,} records in {seconds:.2f} s '
        f'({n / seconds:,.0f} records/s; headers only, so record size does '
        f'not matter): ~{IMAGENET_RECORDS / (n / seconds):.0f} s for '
        'ImageNet from a warm page cache')


def _previous_stage(paths, batch):
  """The reading stage before the indexed order (same seed semantics)."""
  ds = data._read(paths, process_index=0, process_count=1, shuffle=True,
                  seed=0, record_counts=None)
  return ds.shuffle(10 * batch, seed=0).enumerate()


def _indexed_stage(paths, start):
  index = record_order.RecordIndex.from_offsets(
      paths, data.record_offsets_per_file(paths))
  return data._records_in_order(index, seed=0, process_index=0,
                                process_count=1, start=start)


def _pipeline(stage, batch):
  return data.views_and_batches(
      stage, per_device_batch=batch, local_devices=1,
      image_size=_IMAGE_SIZE.value, fh_mask_to_use=0, seed=0,
      process_index=0, masks='fh', grid_size=4).as_numpy_iterator()


def _rate(iterator, batch) -> float:
  next(iterator)  # Warm-up.
  next(iterator)
  cpu0, wall0 = os.times(), time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    next(iterator)
  wall = time.perf_counter() - wall0
  cpu1 = os.times()
  cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
  return batch * _NUM_BATCHES.value / wall, batch * _NUM_BATCHES.value / cpu


def on_records(directory: str) -> None:
  """Part 2: first batch, throughput before/after, iterator checkpoints."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  paths = bench_input._write_records(directory, _NUM_RECORDS.value, 48,
                                     'png')
  batch = _BATCH_SIZE.value
  print(f'records: {_NUM_RECORDS.value} ImageNet-like (bench_input), batch '
        f'{batch}, views {_IMAGE_SIZE.value} px')
  for name, start in (('fresh stream', 0),
                      (f'resumed at step {DEEP_STEP:,} x 512',
                       DEEP_STEP * 512)):
    _, seconds = _timed(lambda s=start: next(_pipeline(
        _indexed_stage(paths, s), batch)))
    print(f'  first batch, {name}: {seconds:.2f} s (index walk included)')
  rates = {}
  for name, stage in (('previous (files + shuffle buffer)',
                       _previous_stage(paths, batch)),
                      ('indexed order', _indexed_stage(paths, 0))):
    rates[name] = _rate(_pipeline(stage, batch), batch)
    wall, per_cpu = rates[name]
    print(f'  {name}: {wall:.1f} images/s, {per_cpu:.1f} images/s per '
          'core-second')
  (old, _), (new, _) = rates.values()
  print(f'  indexed / previous: {new / old:.2f}x')
  iterator = iter(_pipeline(_previous_stage(paths, batch), batch))
  next(iterator)
  try:
    prefix = tf.train.Checkpoint(iterator=iterator).write(
        os.path.join(directory, 'iterator', 'ckpt'))
    size = sum(os.path.getsize(os.path.join(os.path.dirname(prefix), f))
               for f in os.listdir(os.path.dirname(prefix)))
    per_record = sum(os.path.getsize(p) for p in paths) / _NUM_RECORDS.value
    print(f'  tf.data iterator checkpoint of the previous pipeline: '
          f'{size / 2**20:.1f} MiB at batch {batch} (buffers of serialized '
          f'records and decoded views); its shuffle buffer alone at batch 512 '
          f'per process: ~{10 * 512 * per_record / 2**20:.0f} MiB of these '
          f'records, ~{10 * 512 * 110e3 / 2**20:.0f} MiB of ImageNet\'s')
  except (tf.errors.OpError, ValueError, TypeError) as e:
    print(f'  tf.data iterator checkpoint of the previous pipeline: fails '
          f'({type(e).__name__}: {str(e).splitlines()[0][:120]})')


def main(argv):
  del argv
  data.hide_gpus_from_tf()
  print(f'machine: {machine.describe()}')
  with tempfile.TemporaryDirectory() as directory:
    imagenet_scale(directory)
    offset_walk(directory)
    on_records(directory)


if __name__ == '__main__':
  app.run(main)
