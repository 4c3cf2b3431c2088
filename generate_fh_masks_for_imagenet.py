r"""Writes ImageNet as DetCon TFRecords: image, label and FH masks (SPEC 1).

  python generate_fh_masks_for_imagenet.py \
      --train_directory=imagenet/train --validation_directory=imagenet/val \
      --output_directory=imagenet-fh

Inputs are `<directory>/<synset>/<image file>` (ImageNet layout; give either
directory or both). A label is the synset's 1-based line in `--labels_file`
and its text comes from `--imagenet_metadata_file` (`synset<TAB>text`), as in
the original; without those files the sorted class folders give the labels
and the text is the synset. Records have the features of `detcon/records.py`,
in shards `train-%05d-of-%05d` and `validation-%05d-of-%05d`.

Images: a file that already is an RGB JPEG is stored byte for byte (EXIF and
other APP markers included); any other image PIL reads (PNG, CMYK or grayscale
JPEG, ...) is converted to RGB and stored as a quality-95 JPEG. EXIF
orientation is never applied: the stored pixels are the file's, as the
trainer's `tf.io.decode_jpeg` returns them. The masks are computed on exactly
those pixels: the stored bytes are decoded with `tf.io.decode_image(...,
channels=3)` (PIL's JPEG decoder differs from it by a few levels), then
`skimage.segmentation.felzenszwalb` runs once per (scale, min_size) pair.

Skipped, with the reason logged and counted: empty, unreadable, unknown or
corrupt (e.g. truncated) files; images whose shorter side is under 8 pixels
(`MIN_SIDE`, one JPEG block: the input pipeline's smallest random crop, 8% of
the area, would then be about 2x2 pixels and FH has nothing to separate);
and, with `--mask_encoding=raw`, images with more than 256 segments, whose
ids the original uint8 layout cannot hold (they are never wrapped).

Work: the file list is sorted, shuffled with `--seed` and cut into contiguous
shards; `--num_threads` worker processes each write whole shards. A shard is
written to `.<shard name>.tmp-<pid>` and renamed once complete, so a killed
job leaves no partial file under a final name, and rerunning the same command
skips the complete shards and redoes only those that were in flight. A
fingerprint of the inputs and settings of each split, kept beside the shards,
stops a rerun with other inputs or settings from mixing its shards with the
old ones. `--num_tasks`/`--task_index` split the shards over machines sharing
the output directory (shard i goes to task i % num_tasks).

Exit code: non-zero for wrong flags or directories (with a message saying
what to fix, before any work), when a shard could not be written (rerun to
retry it), or when not a single image could be; skipped files alone never
fail the job.
"""

import atexit
import collections
import concurrent.futures
import ctypes
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import queue as queue_lib
import random
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import numpy as np
import tqdm
from absl import app, flags, logging
from PIL import Image
from skimage import segmentation

from detcon import records

MIN_SIDE = 8  # Images with a shorter side (pixels) are skipped as too small.
JPEG_QUALITY = 95  # For images that are not RGB JPEGs already.
SPLITS = ('train', 'validation')

flags.DEFINE_string(
    'train_directory', None,
    'Training images as <dir>/<synset>/<image file>. Omit to skip the split.')
flags.DEFINE_string(
    'validation_directory', None,
    'Validation images as <dir>/<synset>/<image file>. Omit to skip the '
    'split.')
flags.DEFINE_string(
    'output_directory', None,
    'Where the TFRecord shards go; created when missing. A rerun into the '
    'same directory resumes: complete shards are kept.')
flags.DEFINE_integer('train_shards', 2048, 'Number of training shards.')
flags.DEFINE_integer('validation_shards', 256, 'Number of validation shards.')
flags.DEFINE_integer(
    'num_threads', os.cpu_count(),
    'Number of worker processes (the original name is kept); each one '
    'writes whole shards. Default: the number of CPUs.')
flags.DEFINE_list(
    'fh_scales', ['1000'],
    'Felzenszwalb scales, comma-separated; pairs with --fh_min_sizes, one '
    'mask per pair, stacked [n_masks, H, W].')
flags.DEFINE_list(
    'fh_min_sizes', ['1000'],
    'Felzenszwalb minimum segment sizes (pixels), comma-separated, as many '
    'as --fh_scales.')
flags.DEFINE_string(
    'labels_file', 'imagenet_lsvrc_2015_synsets.txt',
    'One synset a line; a label is the 1-based line number. When this '
    'default file does not exist, or the flag is empty, the labels are the '
    '1-based positions of the sorted class folders.')
flags.DEFINE_string(
    'imagenet_metadata_file', 'imagenet_metadata.txt',
    'Lines of synset<TAB>human readable text. When this default file does '
    'not exist, or the flag is empty, the text is the synset.')
flags.DEFINE_enum(
    'mask_encoding', 'png', records.MASK_ENCODINGS,
    'png: one compact grayscale PNG (8 or 16 bit) per image. raw: the '
    'original uint8 bytes of [n_masks, H, W], about 65x larger; images with '
    'more than 256 segments are then skipped.')
flags.DEFINE_integer(
    'seed', 12345, 'Seed of the shuffle of all files before sharding.')
flags.DEFINE_integer(
    'num_tasks', 1,
    'Number of machines sharing the job (same flags, same output directory).')
flags.DEFINE_integer(
    'task_index', 0,
    'This machine\'s index in [0, num_tasks): it writes the shards i with '
    'i % num_tasks == task_index.')

FLAGS = flags.FLAGS


class InputError(Exception):
  """A problem with the flags or directories, found before any work."""


class SkipImage(Exception):
  """The file cannot give a record: `reason` (a category) and `detail`."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason} ({detail})')
    self.reason = reason
    self.detail = detail


class Entry(NamedTuple):
  """One input file and its class."""
  path: str
  label: int  # 1-based.
  synset: str
  text: str


class Record(NamedTuple):
  """One image's record and what the summary counts of it."""
  serialized: bytes  # A tf.train.Example.
  segments: tuple[int, ...]  # Per FH pair.
  image_bytes: int  # Stored JPEG.
  mask_bytes: int
  source: str | None  # E.g. 'PNG RGB' when re-encoded, else None.
  fh_cpu_s: float  # CPU seconds spent in FH.


class Shard(NamedTuple):
  """One output file (`path`, final name) and the inputs it holds, in order."""
  path: str
  entries: tuple[Entry, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What each image gets: FH (scale, min_size) pairs and the mask encoding."""
  fh_pairs: tuple[tuple[float, int], ...]
  mask_encoding: str


@dataclasses.dataclass
class Stats:
  """Counts of one shard, or of the whole run when merged."""
  images: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)  # Split -> images written.
  image_bytes: int = 0
  mask_bytes: int = 0
  file_bytes: int = 0
  cpu_s: float = 0.0  # CPU time of the workers in shards (all threads).
  fh_cpu_s: float = 0.0  # The part of `cpu_s` spent in FH.
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
    self.fh_cpu_s += other.fh_cpu_s
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


# Input listing, labels and sharding (main process).


def load_labels(labels_file: str | None, metadata_file: str | None,
                directories: list[str]) -> dict[str, tuple[int, str]]:
  """Maps synset -> (1-based label, text), from the files or the folders."""
  if labels_file:
    with open(labels_file) as f:
      synsets = [line.strip() for line in f if line.strip()]
    if len(set(synsets)) != len(synsets):
      raise InputError(f'--labels_file={labels_file} lists a synset twice; '
                       'give each synset once, one a line')
  else:
    synsets = sorted({e.name for d in directories for e in os.scandir(d)
                      if e.is_dir() and not e.name.startswith('.')})
    logging.info('No labels file: the labels are the 1-based positions of '
                 'the %d sorted class folders.', len(synsets))
  texts = {}
  if metadata_file:
    with open(metadata_file) as f:
      for line in f:
        synset, _, text = line.rstrip('\n').partition('\t')
        texts[synset.strip()] = text.strip()
    missing = sum(s not in texts for s in synsets)
    if missing:
      logging.warning('%d synsets have no text in %s; their text is the '
                      'synset.', missing, metadata_file)
  else:
    logging.info('No metadata file: the text of a class is its synset.')
  return {s: (i + 1, texts.get(s, s)) for i, s in enumerate(synsets)}


def list_files(directory: str,
               label_map: dict[str, tuple[int, str]]) -> list[Entry]:
  """The files of `directory/<synset>/` for known synsets, sorted."""
  folders = sorted(e.name for e in os.scandir(directory)
                   if e.is_dir() and not e.name.startswith('.'))
  unknown = [f for f in folders if f not in label_map]
  if unknown:
    logging.warning('%s: ignoring %d class folders that have no label: %s',
                    directory, len(unknown), ', '.join(unknown[:10]))
  entries = []
  for synset in folders:
    if synset in label_map:
      label, text = label_map[synset]
      names = sorted(e.name for e in os.scandir(os.path.join(directory, synset))
                     if e.is_file() and not e.name.startswith('.'))
      entries.extend(Entry(os.path.join(directory, synset, name), label,
                           synset, text) for name in names)
  return entries


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
  """A digest of everything that decides the shards' contents."""
  digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings)).encode())
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

_progress = None  # The worker's queue to the main process, if any.


def _report(*message):
  if _progress is not None:
    _progress.put(message)


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


def init_worker(progress, parent_pid: int):
  """Worker set-up: malloc, one TF thread, no GPU, progress, parent watch."""
  global _progress
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
  _progress = progress
  _report('ready')


def _to_rgb_jpeg(image: Image.Image) -> bytes:
  """Decodes `image` with PIL and re-encodes it as an RGB JPEG."""
  try:
    rgb = image.convert('RGB')
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


def make_record(entry: Entry, settings: Settings) -> Record:
  """Reads one file and builds its record.

  Args:
    entry: the input file and its class.
    settings: FH pairs and mask encoding.

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
  masks = np.stack([
      segmentation.felzenszwalb(pixels, scale=scale, min_size=min_size)
      for scale, min_size in settings.fh_pairs])
  fh_cpu_s = time.process_time() - start_cpu
  segments = tuple(int(m.max()) + 1 for m in masks)
  try:
    mask_bytes = records.encode_masks(masks, settings.mask_encoding)
  except records.MaskEncodingError as e:
    raise SkipImage('mask ids above 255 (raw encoding)',
                    f'{max(segments)} segments; {e}') from e
  example = records.make_example(
      image=stored, height=pixels.shape[0], width=pixels.shape[1],
      filename=os.path.basename(entry.path), label=entry.label,
      synset=entry.synset, text=entry.text, masks=mask_bytes)
  return Record(example.SerializeToString(), segments, len(stored),
                len(mask_bytes), source, fh_cpu_s)


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
        stats.fh_cpu_s += record.fh_cpu_s
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


def run(shards: list[Shard], settings: Settings, num_workers: int,
        show_progress: bool = True) -> Summary:
  """Writes `shards` with `num_workers` processes; failures are recorded."""
  summary = Summary()
  start = time.time()
  ctx = multiprocessing.get_context('spawn')
  progress = ctx.Queue()
  pool = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=ctx, initializer=init_worker,
      initargs=(progress, os.getpid()))
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
  if images:
    lines.append(f'  worker CPU time: {stats.cpu_s / images:.3f} s per image '
                 f'written, {stats.fh_cpu_s / stats.cpu_s:.0%} of it in FH '
                 f'(workers ready after {summary.startup_s:.1f} s)')
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
  for j, (scale, min_size) in enumerate(settings.fh_pairs):
    counts = [s[j] for s in stats.segments]
    if counts:
      lines.append(
          f'  segments per image (scale={scale:g}, min_size={min_size}): '
          f'min {min(counts)}, median {np.median(counts):g}, '
          f'max {max(counts)}')
  ratio = stats.mask_bytes / stats.image_bytes if stats.image_bytes else 0.0
  lines.append(
      f'  bytes written: images {_size(stats.image_bytes)}, masks '
      f'{_size(stats.mask_bytes)} ({settings.mask_encoding}, {ratio:.1%} of '
      f'the images), shard files {_size(stats.file_bytes)}')
  return '\n'.join(lines)


def _existing_file_flag(name: str) -> str | None:
  """The flag's path; None when empty, or when its default file is absent."""
  path = FLAGS[name].value
  if not path:
    return None
  if not os.path.isfile(path):
    if FLAGS[name].present:
      raise InputError(f'--{name}={path} does not exist; give the right '
                       f'path, or --{name}= to do without it')
    return None
  return path


def _parse_settings() -> Settings:
  try:
    scales = [float(s) for s in FLAGS.fh_scales]
    min_sizes = [int(s) for s in FLAGS.fh_min_sizes]
  except ValueError as e:
    raise InputError(f'--fh_scales and --fh_min_sizes take comma-separated '
                     f'numbers: {e}') from e
  if not scales or len(scales) != len(min_sizes):
    raise InputError(f'--fh_scales ({len(scales)} values) and --fh_min_sizes '
                     f'({len(min_sizes)} values) must pair up one to one')
  if min(scales) <= 0 or min(min_sizes) < 0:
    raise InputError('FH scales must be > 0 and min sizes >= 0')
  return Settings(tuple(zip(scales, min_sizes, strict=True)),
                  FLAGS.mask_encoding)


def _check_output_directory(path: str):
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise InputError(f'cannot create --output_directory={path} '
                     f'({e.strerror}); give a directory you can write '
                     'to') from e
  try:
    fd, probe = tempfile.mkstemp(dir=path, prefix='.write-test-')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise InputError(f'--output_directory={path} is not writable '
                     f'({e.strerror}); fix its permissions or give another '
                     'directory') from e


def prepare() -> tuple[Settings, list[Shard], int]:
  """Checks the flags and directories, and plans this task's shards.

  Returns:
    (settings, shards still to write, number of shards already complete).

  Raises:
    InputError: with what is wrong and how to fix it, before any work.
  """
  settings = _parse_settings()
  for name in ('train_shards', 'validation_shards', 'num_threads',
               'num_tasks'):
    if FLAGS[name].value < 1:
      raise InputError(f'--{name} must be at least 1')
  if not 0 <= FLAGS.task_index < FLAGS.num_tasks:
    raise InputError('--task_index must be in [0, --num_tasks='
                     f'{FLAGS.num_tasks})')
  splits = [('train', FLAGS.train_directory, FLAGS.train_shards),
            ('validation', FLAGS.validation_directory,
             FLAGS.validation_shards)]
  splits = [split for split in splits if split[1]]
  if not splits:
    raise InputError('give --train_directory and/or --validation_directory')
  for split, directory, _ in splits:
    if not os.path.isdir(directory):
      raise InputError(f'--{split}_directory={directory} does not exist or '
                       'is not a directory; give the folder that holds one '
                       'sub-folder of images per class '
                       '(<dir>/<synset>/<image>)')
  label_map = load_labels(_existing_file_flag('labels_file'),
                          _existing_file_flag('imagenet_metadata_file'),
                          [directory for _, directory, _ in splits])
  listed = []
  for split, directory, num_shards in splits:
    entries = list_files(directory, label_map)
    if not entries:
      raise InputError(f'--{split}_directory={directory} holds no image files '
                       'of a labelled class; expected <dir>/<synset>/<image> '
                       '(one sub-folder per class)')
    classes = len({e.synset for e in entries})
    logging.info('%s: %d files in %d classes from %s.', split, len(entries),
                 classes, directory)
    listed.append((split, directory, num_shards, entries))
  _check_output_directory(FLAGS.output_directory)
  todo, complete = [], 0
  for split, directory, num_shards, entries in listed:
    shards = plan_shards(split, entries, num_shards, FLAGS.seed,
                         FLAGS.output_directory)
    check_resume(split, shards, fingerprint(shards, settings, directory),
                 FLAGS.output_directory)
    mine = shards[FLAGS.task_index::FLAGS.num_tasks]
    done = [s for s in mine if os.path.exists(s.path)]
    complete += len(done)
    if done:
      logging.info('%s: %d of this task\'s %d shards are complete from an '
                   'earlier run; writing the other %d.', split, len(done),
                   len(mine), len(mine) - len(done))
    todo.extend(s for s in mine if not os.path.exists(s.path))
  removed = remove_stale_tmp_files(todo)
  if removed:
    logging.info('Removed %d temporary files of an interrupted run.', removed)
  return settings, todo, complete


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    settings, todo, complete = prepare()
  except InputError as e:
    sys.exit(f'{os.path.basename(__file__)}: error: {e}')
  num_workers = min(FLAGS.num_threads, len(todo))
  summary = Summary()
  if todo:
    logging.info('Writing %d shards (%d files) with %d worker processes.',
                 len(todo), sum(len(s.entries) for s in todo), num_workers)
    try:
      summary = run(todo, settings, num_workers)
    except KeyboardInterrupt:
      logging.error('Interrupted; rerun the same command to finish the '
                    'shards that are not complete.')
      return 130
  else:
    logging.info('Nothing to do: all of this task\'s shards are complete.')
  print(format_summary(summary, settings, complete), flush=True)
  files = sum(len(s.entries) for s in todo)
  if summary.failed or (files and not sum(summary.stats.images.values())):
    logging.error('The job failed: %d shards not written, %d images written. '
                  'Rerun the same command to retry.', len(summary.failed),
                  sum(summary.stats.images.values()))
    return 1
  return 0


if __name__ == '__main__':
  flags.mark_flag_as_required('output_directory')
  app.run(main)
