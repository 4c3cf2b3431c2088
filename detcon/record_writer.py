"""Writes images, labels and masks as DetCon TFRecord shards (docs/records.md).

The machinery behind `generate_fh_masks_for_imagenet.py`, for any entry point
that turns a list of image files into shards of the format of
`detcon/records.py`: plan the shards (`plan_shards`), guard a resumed job
(`fingerprint`, `check_resume`, `remove_stale_tmp_files`), then `run` them
with a pool of worker processes and print `format_summary`.

Images: a file that already is an RGB JPEG is stored byte for byte; any other
image PIL reads is converted to RGB and stored as a quality-95 JPEG. The masks
are made from the stored bytes as the trainer decodes them
(`decode_like_trainer`) by the method of `Settings.segmentation`
(`make_masks`: its function in `mask_methods.METHODS`: FH, SLIC, or the
image's ground-truth label PNG), and each record names that method in
`records.MASK_SOURCE_KEY`. A file that cannot give a record raises
`SkipImage` in `make_record`; `write_shard` counts it and goes on. A shard
is written to `.<shard name>.tmp-<pid>`, synced and renamed once complete,
so no partial file ever has a final name.
"""

import atexit
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import queue as queue_lib
import random
import threading
import time
from typing import NamedTuple

import numpy as np
import tqdm
from absl import logging
from PIL import Image

from detcon import image_io, mask_methods, memory_budget, records, voc

MIN_SIDE = 8  # Images with a shorter side (pixels) are skipped as too small.
JPEG_QUALITY = 95  # For images that are not RGB JPEGs already.
# What the ignore / boundary pixels (255) of a ground-truth label PNG become:
# id 0, or an id of their own, one above the image's largest other id.
GROUND_TRUTH_IGNORE = ('background', 'own_id')


class InputError(Exception):
  """A problem with the flags or directories, found before any work."""


class SkipImage(Exception):
  """The file cannot give a record: `reason` (a category) and `detail`."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason} ({detail})')
    self.reason = reason
    self.detail = detail


class Entry(NamedTuple):
  """One input file, its class and, for ground-truth masks, its label PNG."""
  path: str
  label: int  # 1-based; 0 for an unlabelled image.
  synset: str  # '' when unlabelled.
  text: str  # '' when unlabelled.
  # Label PNGs to try in order (`ground_truth_paths`); the first that exists
  # gives the masks. Only read with `Settings.segmentation='ground_truth'`.
  ground_truth: tuple[str, ...] = ()


class Record(NamedTuple):
  """One image's record and what the summary counts of it."""
  serialized: bytes  # A tf.train.Example.
  segments: tuple[int, ...]  # Distinct ids, per mask.
  image_bytes: int  # Stored JPEG.
  mask_bytes: int
  source: str | None  # E.g. 'PNG RGB' when re-encoded, else None.
  mask_cpu_s: float  # CPU seconds spent making the masks.


class Shard(NamedTuple):
  """One output file (`path`, final name) and the inputs it holds, in order."""
  path: str
  entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
  """How each image's masks are made (`make_masks`) and stored.

  Attributes:
    fh_pairs: Felzenszwalb (scale, min_size in pixels) pairs, one mask each.
    mask_encoding: one of `records.MASK_ENCODINGS`.
    segmentation: where the masks come from, a stored method of
      `mask_methods.METHODS`; only that method's settings below matter.
    slic_n_segments: SLIC's target number of segments (about).
    slic_compactness: SLIC's balance of colour and space; higher gives
      squarer segments.
    ground_truth_directory: the folder of the label PNGs (the files read are
      those of `Entry.ground_truth`).
    ground_truth_ignore: one of `GROUND_TRUTH_IGNORE`.
  """
  fh_pairs: tuple[tuple[float, int], ...]
  mask_encoding: str
  segmentation: str = 'fh'
  slic_n_segments: int = 25
  slic_compactness: float = 10.0
  ground_truth_directory: str = ''
  ground_truth_ignore: str = 'background'

  def __post_init__(self):
    for name, allowed in (('mask_encoding', records.MASK_ENCODINGS),
                          ('segmentation', mask_methods.names(stored=True)),
                          ('ground_truth_ignore', GROUND_TRUTH_IGNORE)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'unknown {name} {getattr(self, name)!r}; use one '
                         f'of {allowed}')


@dataclasses.dataclass
class Stats:
  """Counts of one shard, or of the whole run when merged."""
  images: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # Split -> images written.
  image_bytes: int = 0
  mask_bytes: int = 0
  file_bytes: int = 0
  cpu_s: float = 0.0  # CPU time of the workers in shards (all threads).
  mask_cpu_s: float = 0.0  # The part of `cpu_s` spent making the masks.
  unlabelled: int = 0  # Images written with label 0.
  segments: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
  converted: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # 'PNG RGB' etc. -> count.
  skipped: list[tuple[str, str, str]] = dataclasses.field(
      default_factory=list)  # (path, reason, detail).

  def merge(self, other: 'Stats'):
    self.images.update(other.images)
    self.image_bytes += other.image_bytes
    self.mask_bytes += other.mask_bytes
    self.file_bytes += other.file_bytes
    self.cpu_s += other.cpu_s
    self.mask_cpu_s += other.mask_cpu_s
    self.unlabelled += other.unlabelled
    self.segments.extend(other.segments)
    self.converted.update(other.converted)
    self.skipped.extend(other.skipped)


@dataclasses.dataclass
class Summary:
  """What a run did, for the final report and the benchmark."""
  stats: Stats = dataclasses.field(default_factory=Stats)
  shards_written: int = 0
  failed: list[tuple[str, str]] = dataclasses.field(
      default_factory=list)  # (shard name, error).
  elapsed_s: float = 0.0
  startup_s: float = 0.0  # Until every worker had imported TensorFlow.
  processed_after_startup: int = 0  # Files done after `startup_s`.
  ran_alone: int = 0  # Images over the memory budget, made one at a time.


# Sharding and resume (main process).


def ground_truth_paths(path: str, input_directory: str,
                       ground_truth_directory: str) -> tuple[str, ...]:
  """The label PNGs of image `path`, in the order to try them.

  First the image's path relative to `input_directory` with its extension
  replaced by `.png`, then `<image file stem>.png` directly in
  `ground_truth_directory` (VOC's flat layout).

  Args:
    path: the image file, inside `input_directory`.
    input_directory: the split's input folder.
    ground_truth_directory: the folder of the label PNGs.

  Returns:
    One or two paths (one when both rules give the same).
  """
  rel = os.path.splitext(os.path.relpath(path, input_directory))[0]
  stem = os.path.splitext(os.path.basename(path))[0]
  nested = os.path.join(ground_truth_directory, rel + '.png')
  flat = os.path.join(ground_truth_directory, stem + '.png')
  return (nested,) if nested == flat else (nested, flat)


def plan_shards(split: str, entries: list[Entry], num_shards: int, seed: int,
                output_directory: str) -> list[Shard]:
  """Shuffles `entries` (seeded) and cuts them into `num_shards` shards."""
  entries = list(entries)
  random.Random(seed).shuffle(entries)
  bounds = np.linspace(0, len(entries), num_shards + 1).astype(int)
  return [Shard(os.path.join(output_directory,
                             f'{split}-{i:05d}-of-{num_shards:05d}'),
                tuple(entries[bounds[i]:bounds[i + 1]]))
          for i in range(num_shards)]


def fingerprint(shards: list[Shard], settings: Settings,
                input_directory: str) -> str:
  """A digest of everything that decides the shards' contents.

  The settings in it are the method's (`mask_methods.MaskMethod.settings`)
  and `mask_encoding`.
  """
  fields = dataclasses.asdict(settings)
  decisive = {name: fields[name] for name in (
      *mask_methods.METHODS[settings.segmentation].settings, 'mask_encoding')}
  digest = hashlib.sha256(json.dumps(decisive).encode())
  for shard in shards:
    digest.update(os.path.basename(shard.path).encode() + b'\n')
    for e in shard.entries:
      rel = os.path.relpath(e.path, input_directory)
      digest.update(f'{rel}\0{e.label}\0{e.synset}\0{e.text}\n'.encode())
  return digest.hexdigest()


def check_resume(split: str, shards: list[Shard], digest: str,
                 output_directory: str):
  """Refuses to mix with shards made otherwise; records this job's digest."""
  marker = os.path.join(output_directory,
                        f'.{split}-of-{len(shards):05d}.fingerprint')
  done = sum(os.path.exists(s.path) for s in shards)
  if done:
    old = open(marker).read().strip() if os.path.exists(marker) else None
    if old != digest:
      raise InputError(
          f'{output_directory} already holds {done} {split} shards made from '
          'other input files or settings (or without a fingerprint); resuming '
          'would mix them. Use another --output_directory, or delete those '
          'shards to start over.')
  tmp = f'{marker}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(digest + '\n')
  os.replace(tmp, marker)


def remove_stale_tmp_files(shards: list[Shard]) -> int:
  """Deletes the temporary files a killed run left for these shards."""
  removed = 0
  for directory in sorted({os.path.dirname(s.path) for s in shards}):
    prefixes = tuple(f'.{os.path.basename(s.path)}.tmp-' for s in shards)
    for e in os.scandir(directory):
      if e.name.startswith(prefixes):
        os.remove(e.path)
        removed += 1
  return removed


# Per image and per shard (worker processes).

# Set in each worker by `init_worker`; None in the main process.
_progress = None  # The worker's queue to the main process.
_budget = None  # The `memory_budget.MemoryBudget` the workers share.


def _report(*message):
  if _progress is not None:
    _progress.put(message)


def _reserved_memory(path: str, width: int, height: int, num_bytes: int):
  """Holds `num_bytes` of the workers' budget (a `with` context).

  An image over the whole budget is reported ('alone'): it waits for the
  other workers' images and runs by itself.
  """
  if _budget is None:
    return contextlib.nullcontext()
  if num_bytes > _budget.total:
    _report('alone', path, width, height, num_bytes, _budget.total)
  return _budget.reserve(num_bytes)


def _exit_with_parent(parent_pid: int):
  """Ends this worker when the main process is gone (e.g. killed)."""
  while os.getppid() == parent_pid:
    time.sleep(0.5)
  os._exit(1)


def keep_freed_memory():
  """Makes glibc keep freed memory for reuse instead of handing it back.

  FH allocates tens of MB of temporaries per image. By default glibc maps
  each large block fresh and unmaps it when freed (or trims the heap), so
  every image pays about 8000 page faults: 10% of FH's CPU time on one core,
  more when workers fault at once. With these settings a worker's memory
  stays at its peak (about 170 MB for ImageNet-sized images) and FH runs
  without faults. Nothing happens without glibc (e.g. on macOS).
  """
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return
  m_trim_threshold, m_mmap_threshold = -1, -3  # From glibc's malloc.h.
  libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64 bits.
  libc.mallopt(m_trim_threshold, 1 << 30)


def init_worker(progress, budget: memory_budget.MemoryBudget,
                parent_pid: int):
  """Worker set-up: malloc, 1 TF thread, no GPU, queue, budget, parent watch."""
  global _progress, _budget
  keep_freed_memory()
  os.environ['CUDA_VISIBLE_DEVICES'] = ''
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  threading.Thread(target=_exit_with_parent, args=(parent_pid,),
                   daemon=True).start()
  # At exit multiprocessing has already flushed this worker's queues; skip
  # TensorFlow's interpreter teardown, which takes seconds.
  atexit.register(os._exit, 0)
  _progress, _budget = progress, budget
  _report('ready')


def _to_rgb_jpeg(image: Image.Image) -> bytes:
  """Decodes `image` with PIL and re-encodes it as an RGB JPEG.

  Images deeper than 8 bits (16-bit PNGs, 32-bit or float TIFFs) are scaled
  to 8 bits by their range first (`image_io.to_rgb`).
  """
  try:
    rgb = image_io.to_rgb(image)
  except Exception as e:  # PIL raises many kinds of errors on bad data.
    raise SkipImage('corrupt or truncated image',
                    f'{type(e).__name__}: {e}') from e
  buf = io.BytesIO()
  rgb.save(buf, 'JPEG', quality=JPEG_QUALITY)
  return buf.getvalue()


def decode_like_trainer(jpeg: bytes) -> np.ndarray | None:
  """Decodes as the trainer does: uint8 `[H, W, 3]`, None on failure."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.io.decode_image(jpeg, channels=3, expand_animations=False).numpy()
  except tf.errors.OpError:
    return None


def read_ground_truth(paths: tuple[str, ...], shape: tuple[int, int],
                      ignore: str) -> np.ndarray:
  """An image's ids from the first label PNG of `paths` that exists.

  Args:
    paths: candidate label PNGs (palette or 8-bit grayscale; pixel values
      are the ids, 255 is ignore / boundary), e.g. `Entry.ground_truth`.
    shape: the decoded image's (height, width).
    ignore: what 255 becomes, one of `GROUND_TRUTH_IGNORE`: 0
      (`'background'`), or one above the largest other id (`'own_id'`).

  Returns:
    int32 `[height, width]`: the PNG's values, 255 replaced.

  Raises:
    SkipImage: no label PNG, an unreadable one, or one of another size.
  """
  path = next((p for p in paths if os.path.isfile(p)), None)
  if path is None:
    raise SkipImage('no ground-truth label',
                    f'none of {", ".join(paths) or "(no paths given)"}')
  try:
    ids = voc.read_label_png(path).astype(np.int32)
  except voc.VocError as e:
    raise SkipImage('unreadable ground-truth label', str(e)) from e
  if ids.shape != shape:
    raise SkipImage(
        'ground-truth size differs from the image',
        f'{path} is {ids.shape[1]}x{ids.shape[0]}, the image {shape[1]}x'
        f'{shape[0]} (width x height)')
  ignored = ids == voc.IGNORE
  if ignore == 'own_id':
    ids[ignored] = ids[~ignored].max(initial=-1) + 1
  else:
    ids[ignored] = 0
  return ids


def make_masks(pixels: np.ndarray, entry: Entry,
               settings: Settings) -> np.ndarray:
  """The masks of one image by `settings.segmentation` (its `make`).

  Args:
    pixels: the stored image as the trainer decodes it, uint8 `[H, W, 3]`.
    entry: the input file (its `ground_truth` paths for ground-truth masks).
    settings: the method and its settings.

  Returns:
    Integer ids >= 0, `[n_masks, H, W]`: one mask per FH pair (ids 0..n-1
    each), one SLIC mask (ids 0..n-1), or one ground-truth mask (the label
    PNG's values, see `read_ground_truth`).

  Raises:
    SkipImage: for ground-truth masks, see `read_ground_truth`.
  """
  return mask_methods.METHODS[settings.segmentation].make(pixels, entry,
                                                         settings)


def make_record(entry: Entry, settings: Settings) -> Record:
  """Reads one file and builds its record.

  Args:
    entry: the input file and its class.
    settings: how the masks are made and encoded.

  Returns:
    The record and its counts.

  Raises:
    SkipImage: when the file cannot give a record.
  """
  try:
    with open(entry.path, 'rb') as f:
      content = f.read()
  except OSError as e:
    raise SkipImage('unreadable file', str(e)) from e
  if not content:
    raise SkipImage('not an image', 'empty file')
  try:
    image = Image.open(io.BytesIO(content))
  except Image.UnidentifiedImageError as e:
    raise SkipImage('not an image', 'PIL cannot identify the format') from e
  except Exception as e:  # PIL raises many kinds of errors on bad data.
    raise SkipImage('corrupt or truncated image',
                    f'{type(e).__name__}: {e}') from e
  width, height = image.size
  if min(width, height) < MIN_SIDE:
    raise SkipImage(f'too small (side under {MIN_SIDE} px)',
                    f'{width}x{height} px')
  need = memory_budget.mask_bytes(width, height, settings.segmentation,
                                 len(settings.fh_pairs))
  with _reserved_memory(entry.path, width, height, need):
    source = None
    pixels = None
    if image.format in ('JPEG', 'MPO') and image.mode == 'RGB':
      stored = content
      pixels = decode_like_trainer(stored)
    if pixels is None:  # Not an RGB JPEG, or one TF cannot decode.
      source = f'{image.format} {image.mode}'
      stored = _to_rgb_jpeg(image)
      pixels = decode_like_trainer(stored)
      if pixels is None:
        raise SkipImage('corrupt or truncated image',
                        'TensorFlow cannot decode it, even re-encoded')
    start_cpu = time.process_time()
    masks = make_masks(pixels, entry, settings)
    mask_cpu_s = time.process_time() - start_cpu
    segments = tuple(int(np.count_nonzero(np.bincount(m.ravel())))
                     for m in masks)
    try:
      mask_bytes = records.encode_masks(masks, settings.mask_encoding)
    except records.MaskEncodingError as e:
      raise SkipImage('mask ids above 255 (raw encoding)',
                      f'{max(segments)} segments; {e}') from e
  example = records.make_example(
      image=stored, height=pixels.shape[0], width=pixels.shape[1],
      filename=os.path.basename(entry.path), label=entry.label,
      synset=entry.synset, text=entry.text, masks=mask_bytes,
      mask_source=settings.segmentation)
  return Record(example.SerializeToString(), segments, len(stored),
                len(mask_bytes), source, mask_cpu_s)


def write_shard(shard: Shard, settings: Settings) -> Stats:
  """Writes one shard under a temporary name, then renames it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  name = os.path.basename(shard.path)
  split = name.split('-')[0]
  tmp = os.path.join(os.path.dirname(shard.path), f'.{name}.tmp-{os.getpid()}')
  stats = Stats()
  start_cpu = time.process_time()
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for entry in shard.entries:
        try:
          record = make_record(entry, settings)
        except SkipImage as e:
          stats.skipped.append((entry.path, e.reason, e.detail))
          _report('skip', entry.path, e.reason, e.detail)
          continue
        except Exception as e:  # One file never ends the job.
          detail = f'{type(e).__name__}: {e}'
          stats.skipped.append((entry.path, 'unexpected error', detail))
          _report('skip', entry.path, 'unexpected error', detail)
          continue
        writer.write(record.serialized)
        stats.images[split] += 1
        stats.image_bytes += record.image_bytes
        stats.mask_bytes += record.mask_bytes
        stats.mask_cpu_s += record.mask_cpu_s
        if entry.label == 0:
          stats.unlabelled += 1
        stats.segments.append(record.segments)
        if record.source:
          stats.converted[record.source] += 1
        _report('image')
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, shard.path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  stats.file_bytes = os.path.getsize(shard.path)
  stats.cpu_s = time.process_time() - start_cpu
  return stats


# Orchestration (main process).


def default_mask_memory() -> int:
  """The workers' default memory budget: half the machine's (bytes)."""
  return memory_budget.machine_memory_bytes() // 2


def run(shards: list[Shard], settings: Settings, num_workers: int,
        show_progress: bool = True,
        mask_memory: int | None = None) -> Summary:
  """Writes `shards` with `num_workers` processes; failures are recorded.

  Args:
    shards: what to write (`plan_shards`).
    settings: how the masks are made and stored.
    num_workers: worker processes.
    show_progress: a progress bar on stderr.
    mask_memory: bytes that the workers' images may take at once while their
      masks are made (`memory_budget`); None: `default_mask_memory()`.

  Returns:
    What was written, skipped and failed.
  """
  summary = Summary()
  start = time.time()
  ctx = multiprocessing.get_context('spawn')
  progress = ctx.Queue()
  budget = memory_budget.MemoryBudget(
      ctx, default_mask_memory() if mask_memory is None else mask_memory)
  pool = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=ctx, initializer=init_worker,
      initargs=(progress, budget, os.getpid()))
  bar = tqdm.tqdm(total=sum(len(s.entries) for s in shards), unit='img',
                  smoothing=0.05, mininterval=1.0, disable=not show_progress)
  ready = processed = processed_at_ready = 0

  def drain(timeout):
    nonlocal ready, processed, processed_at_ready
    try:
      message = progress.get(timeout=timeout)
      while True:
        if message[0] == 'ready':
          ready += 1
          if ready == num_workers:
            summary.startup_s = time.time() - start
            processed_at_ready = processed
        elif message[0] == 'alone':
          summary.ran_alone += 1
          path, width, height, need, total = message[1:]
          with tqdm.tqdm.external_write_mode():
            logging.warning(
                '%s is %dx%d px: its masks take about %.1f GB, more than the '
                'workers\' memory budget (%.1f GB, --mask_memory_gb); it runs '
                'alone, once the other workers\' images are done.', path,
                width, height, need / 1e9, total / 1e9)
        else:
          processed += 1
          bar.update(1)
          if message[0] == 'skip':
            with tqdm.tqdm.external_write_mode():
              logging.warning('Skipped %s: %s (%s).', *message[1:])
        message = progress.get_nowait()
    except queue_lib.Empty:
      pass

  try:
    futures = {pool.submit(write_shard, s, settings): s for s in shards}
    pending = set(futures)
    while pending:
      drain(timeout=0.1)
      for future in [f for f in pending if f.done()]:
        pending.remove(future)
        name = os.path.basename(futures[future].path)
        try:
          summary.stats.merge(future.result())
          summary.shards_written += 1
        except Exception as e:  # Reported; a rerun retries the shard.
          summary.failed.append((name, f'{type(e).__name__}: {e}'))
          with tqdm.tqdm.external_write_mode():
            logging.error('Shard %s failed: %s', name, e)
    summary.elapsed_s = time.time() - start
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    drain(timeout=0)
    bar.close()
  summary.processed_after_startup = processed - processed_at_ready
  return summary


def _size(num_bytes: int) -> str:
  return f'{num_bytes / 1e6:.2f} MB'


def format_summary(summary: Summary, settings: Settings,
                   already_complete: int) -> str:
  """The final report, one fact a line."""
  stats = summary.stats
  method = mask_methods.METHODS[settings.segmentation]
  images = sum(stats.images.values())
  rate = images / summary.elapsed_s if summary.elapsed_s else 0.0
  per_split = ', '.join(f'{k} {v}' for k, v in sorted(stats.images.items()))
  lines = [
      'Summary of this run (shards completed earlier are not counted):',
      f'  shards: {summary.shards_written} written, {already_complete} '
      f'already complete, {len(summary.failed)} failed',
      *[f'    failed {name}: {error}' for name, error in summary.failed],
      f'  images written: {images} ({per_split or "none"}) in '
      f'{summary.elapsed_s:.1f} s, {rate:.2f} images/s',
  ]
  if stats.unlabelled:
    lines.append(f'  unlabelled images written (label 0): {stats.unlabelled}')
  if images:
    lines.append(f'  worker CPU time: {stats.cpu_s / images:.3f} s per image '
                 f'written, {stats.mask_cpu_s / stats.cpu_s:.0%} of it in '
                 f'{method.work} (workers ready after {summary.startup_s:.1f} '
                 's)')
  if summary.ran_alone:
    lines.append(f'  images over the memory budget, run alone: '
                 f'{summary.ran_alone}')
  if stats.converted:
    kinds = ', '.join(f'{k}: {v}' for k, v in sorted(stats.converted.items()))
    lines.append(f'  re-encoded as RGB JPEG: {sum(stats.converted.values())} '
                 f'({kinds})')
  lines.append(f'  files skipped: {len(stats.skipped)}')
  by_reason = collections.defaultdict(list)
  for path, reason, detail in sorted(stats.skipped):
    by_reason[reason].append(f'{path} ({detail})')
  for reason, items in sorted(by_reason.items()):
    lines.append(f'    {reason}: {len(items)}')
    lines.extend(f'      {item}' for item in items[:20])
    if len(items) > 20:
      lines.append(f'      ... and {len(items) - 20} more (see the log)')
  for j, name in enumerate(method.describe(settings)):
    counts = [s[j] for s in stats.segments]
    if counts:
      lines.append(
          f'  segments per image ({name}): min {min(counts)}, median '
          f'{np.median(counts):g}, max {max(counts)}')
  ratio = stats.mask_bytes / stats.image_bytes if stats.image_bytes else 0.0
  lines.append(
      f'  bytes written: images {_size(stats.image_bytes)}, masks '
      f'{_size(stats.mask_bytes)} ({settings.mask_encoding}, {ratio:.1%} of '
      f'the images), shard files {_size(stats.file_bytes)}')
  return '\n'.join(lines)


