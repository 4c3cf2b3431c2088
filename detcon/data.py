"""The tf.data input pipeline on the CPU (docs/method.md, Input pipeline).

Reads the TFRecords of `generate_fh_masks_for_imagenet.py` (format in
`detcon.records`) and yields NumPy-able dicts:

* `make_pretrain_dataset`: two augmented views of every image with their
  masks cropped, flipped and resized alongside, batched to
  `[local_devices, per_device_batch, ...]`; infinite. The masks are the
  records' own (FH, SLIC or ground truth, whichever method made them) or the
  spatial heuristic's grid (`grid_masks`), drawn over the original image.
* `make_eval_dataset`: one view per image, either a random crop and flip
  (linear-probe training; infinite) or the centre crop (evaluation; one pass).

Randomness is stateless: element k of the (seeded) shuffled stream of a
process draws its crops and flips from `fold_in([seed, process_index], k)`, and
the reading order is deterministic, so a seed reproduces the same batches.

Bad records fail with a message that names the problem, the file and the fix:
`check_dataset` reads the first record eagerly (ValueError) and every record
is checked again inside the pipeline (`tf.errors.InvalidArgumentError` with
the same text, raised when its batch is produced).

Damaged files (cut short, not TFRecords: a partial copy, a disk error) are
found before training: `count_records_per_file` checks every file and lists
all damaged ones in one ValueError with how to remake them. A record that
turns out unreadable later (its checksum fails) ends its file's reading
without failing the pipeline; the records lost are logged once per file and
counted by `skipped_records`.
"""

import concurrent.futures
import os
import re
import struct
import threading

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from detcon import mask_methods, record_order, records

AUTOTUNE = tf.data.AUTOTUNE
# The per-record functions are plain TensorFlow ops, with Python `if`s on
# Python values only: tf.data traces them as written. AutoGraph's rewrite of
# their source would cost about 2 s of every command's start (a profile
# of a tiny run: building the pretraining dataset 3.4 s with it, 1.2 s without).
_no_autograph = tf.autograph.experimental.do_not_convert
SPLITS = ('train', 'validation')
CROP_AREA = (0.08, 1.0)  # Fraction of the image area.
CROP_ASPECT = (3 / 4, 4 / 3)  # Width / height.
EVAL_CROP_PADDING = 32
FIX = 'regenerate the records with generate_fh_masks_for_imagenet.py'
REMAKE = ('delete it and rerun generate_fh_masks_for_imagenet.py with the same '
          'flags (it resumes, writing only the missing shards)')
_SCAN_THREADS = 16  # Files checked at once by count_records_per_file.
_READ_BLOCK = 32  # Records of the pretraining order read per Python call.
ERR_NO_MASKS = (f'record without FH masks (empty {records.MASK_KEY}): the '
                f'records were written without segmentations; {FIX}')
ERR_MASK_SIZE = ('FH mask size differs from its image (image/height x '
                 'image/width): the masks belong to another image or another '
                 f'layout; {FIX}')
ERR_IMAGE_SIZE = ('image/height, image/width differ from the size of the '
                  f'encoded image; {FIX}')
ERR_LABEL = ('image/class/label must be >= 0 (1-based classes; 0 = an image '
             f'without a class); {FIX}')
ERR_MASK_INDEX = ('fh_mask_to_use is not below the number of masks in the '
                  'record; use a smaller index, or regenerate the records '
                  'with more --fh_scales/--fh_min_sizes')


def hide_gpus_from_tf() -> None:
  """Hides every GPU from TensorFlow so that it never takes one from JAX.

  Safe to call any number of times. Raises RuntimeError when TensorFlow has
  already initialised (and so holds) a GPU.
  """
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as e:
    if tf.config.get_visible_devices('GPU'):
      raise RuntimeError(
          'TensorFlow already initialised a GPU; call '
          'detcon.data.hide_gpus_from_tf() before any TensorFlow op') from e


def find_shards(directory: str, split: str) -> list[str]:
  """Returns the sorted shard paths `<directory>/<split>-%05d-of-%05d`.

  Args:
    directory: folder written by `generate_fh_masks_for_imagenet.py` (any
      path `tf.io.gfile` reads, e.g. `gs://...`).
    split: 'train' or 'validation'.

  Raises:
    FileNotFoundError: no such directory, or no shard of `split` in it.
    ValueError: unknown split, files named like shards of `split` that do not
      follow the naming, shards of different set sizes, or missing shards (a
      partial set would silently train on a subset of the classes).
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; use one of {SPLITS}')
  expected = f'{split}-%05d-of-%05d'
  if not tf.io.gfile.isdir(directory):
    raise FileNotFoundError(
        f'dataset directory {directory!r} does not exist; write the records '
        'with generate_fh_masks_for_imagenet.py and point '
        '--dataset_directory at its output directory')
  names = sorted(n for n in tf.io.gfile.listdir(directory)
                 if n.startswith(f'{split}-'))
  pattern = re.compile(rf'{split}-(\d{{5}})-of-(\d{{5}})')
  matches = [pattern.fullmatch(n) for n in names]
  bad = [n for n, m in zip(names, matches, strict=True) if not m]
  if bad:
    raise ValueError(
        f'{directory!r} holds files named like {split} shards that do not '
        f'follow the naming {expected!r}: {_listing(bad)}; rename or remove '
        'them')
  if not names:
    raise FileNotFoundError(
        f'no {split} shards (named {expected!r}) in {directory!r}; write them '
        'with generate_fh_masks_for_imagenet.py')
  totals = sorted({int(m.group(2)) for m in matches})
  if len(totals) > 1:
    raise ValueError(
        f'{directory!r} mixes {split} shard sets of sizes {totals}; keep the '
        f'shards of one run of generate_fh_masks_for_imagenet.py')
  total = totals[0]
  present = {int(m.group(1)) for m in matches}
  missing = [expected % (i, total) for i in range(total) if i not in present]
  extra = [i for i in present if i >= total]
  if missing or extra:
    raise ValueError(
        f'incomplete {split} shards in {directory!r}: missing '
        f'{_listing(missing)}; out of range: {extra}. A partial set trains on '
        'a subset of the classes: finish (generate_fh_masks_for_imagenet.py '
        'resumes) or regenerate the records')
  return [os.path.join(directory, n) for n in names]


def _listing(items, limit=8):
  shown = ', '.join(items[:limit])
  return shown + (f' and {len(items) - limit} more' if len(items) > limit
                  else '')


def count_records(paths: list[str]) -> int:
  """Counts the records of TFRecord files (e.g. for the epoch size).

  Raises:
    ValueError: damaged files, as `count_records_per_file`.
  """
  return sum(count_records_per_file(paths))


def count_records_per_file(paths: list[str]) -> list[int]:
  """Checks that every file is whole and counts its records.

  Raises:
    ValueError: damaged files, as `record_offsets_per_file`.
  """
  return [len(offsets) for offsets in record_offsets_per_file(paths)]


def record_offsets_per_file(paths: list[str]) -> list[np.ndarray]:
  """Checks that every file is whole and finds where each record starts.

  Local files are checked from their record headers (length and its
  checksum) without reading the payload, which takes seconds for ImageNet;
  other file systems (`gs://...`) are read through tf.data, which also checks
  each payload's checksum. Files are scanned by `_SCAN_THREADS` threads.

  Args:
    paths: TFRecord files.

  Returns:
    For each file of `paths`, in order, int64 `[records]`: the byte offset
    of each record's frame.

  Raises:
    ValueError: one or more damaged files (truncated, not a TFRecord file,
      corrupt), all listed in one message with how to remake them.
  """
  def scan(path):
    walk = (_remote_record_offsets if '://' in path
            else _local_record_offsets)
    try:
      return walk(path), None
    except _DamagedFileError as e:
      return None, f'{path}: {e}'

  with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
    results = list(pool.map(scan, paths))
  damaged = [problem for _, problem in results if problem]
  if damaged:
    raise ValueError(
        f'{len(damaged)} of {len(paths)} TFRecord files are damaged:\n  '
        + '\n  '.join(damaged) + f'\nTo remake a damaged file, {REMAKE}.')
  return [offsets for offsets, _ in results]


class _DamagedFileError(Exception):
  """A TFRecord file that cannot be read whole; the message says why."""


def _local_record_offsets(path):
  """Record offsets, by hopping over `length, crc, data, crc` frames.

  Checks each frame's length against its checksum and the file size.

  Returns:
    int64 `[records]`, the byte offset of each frame.

  Raises:
    _DamagedFileError: a frame cut short or a bad length checksum.
  """
  offsets = []
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    while f.tell() < size:
      start = f.tell()
      count = len(offsets)
      header = f.read(12)  # uint64 length, uint32 masked crc32c of it.
      if len(header) < 12:
        raise _DamagedFileError(
            f'truncated: the file ends ({size} bytes) inside the header of '
            f'record {count} at byte {start}')
      length, crc = struct.unpack('<QI', header)
      if crc != record_order.masked_crc32c(header[:8]):
        raise _DamagedFileError(
            'not a TFRecord file' if count == 0 else
            f'corrupt header of record {count} at byte {start}')
      end = start + 12 + length + 4  # Payload and its crc.
      if end > size:
        raise _DamagedFileError(
            f'truncated: record {count} at byte {start} needs {end} bytes, '
            f'the file has {size}')
      f.seek(end)
      offsets.append(start)
  return np.array(offsets, np.int64)


def _remote_record_offsets(path):
  """Record offsets, read through tf.data (any file system; checks payloads).

  The frames read must fill the file: TensorFlow takes a file that ends
  inside a record header for a whole one.

  Raises:
    _DamagedFileError: a record cut short or with a bad checksum.
  """
  ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20).map(
      lambda record: tf.cast(tf.strings.length(record), tf.int64) + 16)
  try:
    frames = np.fromiter(ds.as_numpy_iterator(), np.int64)  # Frame sizes.
  except tf.errors.DataLossError as e:
    # The message's reason, without the op's names around it.
    reason = re.sub(r'\{\{.*?\}\}|\[Op:.*', '', e.message).strip()
    raise _DamagedFileError(reason) from e
  size = int(frames.sum())
  file_size = tf.io.gfile.stat(path).length
  if size != file_size:
    raise _DamagedFileError(
        f'truncated: {file_size - size} bytes after the last whole record '
        f'(byte {size})')
  return np.cumsum(frames) - frames


def skipped_records(paths: list[str] | None = None) -> int:
  """Records this process could not read so far, over all its pipelines.

  The evaluation pipelines read each file with its errors ignored and
  expect its count from `count_records_per_file`; a file that ends early (a
  record whose checksum fails: TensorFlow stops reading a file there; or
  damaged since it was counted) adds its missing records here once, however
  many epochs read it, and logs one warning that names it. With fewer files
  than processes, a process counts only its own share of each file's
  records. The pretraining order reads records one by one: each record it
  cannot read adds one, once, with a warning that names it.

  Args:
    paths: count only these files; None: every file.
  """
  with _skipped_lock:
    paths = set(_skipped_by_file) | set(_unreadable) if paths is None else (
        set(paths))
    return sum(_skipped_by_file.get(p, 0) + len(_unreadable.get(p, ()))
               for p in paths)


_skipped_lock = threading.Lock()
_skipped_by_file: dict[str, int] = {}  # File -> records it lost.
_unreadable: dict[str, set[int]] = {}  # File -> offsets of records lost.


def _note_unreadable_record(index: record_order.RecordIndex, record: int):
  """Counts a record the pretraining order could not read; warns once."""
  path = index.paths[index.file_of[record]]
  offset = int(index.offset_of[record])
  with _skipped_lock:
    lost = _unreadable.setdefault(path, set())
    if offset in lost:
      return
    lost.add(offset)
  logging.warning(
      '%s: the record at byte %d cannot be read (its checksum fails: the '
      'file was damaged after it was counted); it is skipped. To remake the '
      'file, %s.', path, offset, REMAKE)


def _note_short_file(path, expected, share):
  """Counts the records a file lost and warns, once per file.

  Called (through `tf.py_function`) when a file ended before its expected
  records; reads the file again, once, to count the records it still yields.

  Args:
    path: the file.
    expected: records this process expected from it.
    share: maps the records a whole file yields to this process's share.
  """
  with _skipped_lock:
    if path in _skipped_by_file:
      return
  ds = tf.data.TFRecordDataset(path).ignore_errors()
  readable = int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))
  skipped = max(expected - share(readable), 0)
  with _skipped_lock:
    if path in _skipped_by_file:
      return
    _skipped_by_file[path] = skipped
  logging.warning(
      '%s: %d of the %d records expected from it could not be read (the file '
      'is damaged); they are skipped. To remake the file, %s.', path,
      skipped, expected, REMAKE)


def check_dataset(paths: list[str], fh_mask_to_use: int | None = None,
                  masks: str = 'fh') -> dict:
  """Checks the first readable record of `paths` eagerly, to fail early.

  Args:
    paths: TFRecord files; the first record of the first non-empty one is
      read. Files whose first record cannot be read are passed over: the
      pipelines skip them with a warning.
    fh_mask_to_use: the mask channel that will be used (checked to exist).
    masks: a method of `mask_methods.METHODS`. For a stored method ('fh',
      'slic', 'ground_truth'), the masks are decoded and checked, and a
      record that names its masks' method (`records.MASK_SOURCE_KEY`) must
      name this one; a record without that feature (the original release's,
      older ones) is accepted (`mask_source` None). A drawn method ('grid')
      needs no masks: none are read.

  Returns:
    `{'path': the file read, 'label': its first record's 0-based label (-1:
    no class), 'mask_source': the method it names, or None}`.

  Raises:
    ValueError: no readable records, a bad first record (no
      masks, masks of another size than the image, wrong label...), or masks
      made by another method than `masks`, with a message that says how to
      fix it.
  """
  hide_gpus_from_tf()
  stored = mask_methods.get(masks).stored
  serialized = path = None
  damaged = []  # Files whose first record is unreadable: passed over.
  for path in paths:
    try:
      serialized = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.DataLossError:
      damaged.append(path)
      continue
    if serialized is not None:
      break
  if serialized is None and damaged:
    raise ValueError(f'no readable records: the first record of '
                     f'{_listing(damaged)} is damaged; to remake a damaged '
                     f'file, {REMAKE}')
  if serialized is None:
    raise ValueError(f'no records in {_listing(list(paths))}; {FIX}')
  try:
    parsed = _parse(serialized, decode_masks=stored,
                    fh_mask_to_use=fh_mask_to_use)
  except tf.errors.InvalidArgumentError as e:
    raise ValueError(f'{path}: first record: {e.message}') from e
  source = tf.io.parse_single_example(serialized, {
      records.MASK_SOURCE_KEY: tf.io.FixedLenFeature([], tf.string, '')
  })[records.MASK_SOURCE_KEY].numpy().decode()
  if stored and source and source != masks:
    drawn = ' or '.join(f'--config.masks={name}'
                        for name in mask_methods.names(stored=False))
    raise ValueError(
        f'{path}: the records\' masks were made by {source!r} (feature '
        f'{records.MASK_SOURCE_KEY}) but config.masks={masks!r}; set '
        f'--config.masks={source}, or {drawn} (needs no masks), or use '
        f'records made with {masks} masks')
  return dict(path=path, label=int(parsed['label']),
              mask_source=source or None)


def grid_masks(height, width, grid_size: int):
  """The spatial heuristic's masks: `grid_size`^2 rectangles over the image.

  Row r of the grid holds the pixel rows y with floor(y n / H) = r, that is
  y in [ceil(r H / n), ceil((r + 1) H / n)): an integer partition of the
  height into n parts that differ by at most one pixel (a part is empty when
  H < n); columns likewise over the width. Rectangle (r, c) has id r n + c
  (row-major, 0 .. n^2 - 1). No image content is used.

  Args:
    height: scalar int, image height H in pixels.
    width: scalar int, image width W in pixels.
    grid_size: n, rectangles per side.

  Returns:
    int32 `[H, W, 1]`, shaped like a record's masks with one channel.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  rows = tf.range(height) * grid_size // height
  cols = tf.range(width) * grid_size // width
  return (rows[:, None] * grid_size + cols[None, :])[..., None]


def sample_crop_window(seed, height, width):
  """Draws an Inception-style crop window: one draw, no retries.

  Target area ~ U(0.08, 1) x height x width, aspect (w / h) = exp(U(log 3/4,
  log 4/3)); w = round(sqrt(area x aspect)), h = round(sqrt(area / aspect)),
  each clipped to [1, image side]; offsets uniform over the valid range.

  Args:
    seed: int32/int64 `[2]` stateless seed.
    height: scalar int, image height in pixels.
    width: scalar int, image width in pixels.

  Returns:
    int32 `[4]`: (y, x, h, w) in pixels, inside the image.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  u = tf.random.stateless_uniform([4], seed, dtype=tf.float32)
  area_frac = CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * u[0]
  area = area_frac * tf.cast(height * width, tf.float32)
  log_lo, log_hi = tf.math.log(CROP_ASPECT[0]), tf.math.log(CROP_ASPECT[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  w = tf.clip_by_value(w, 1, width)
  h = tf.clip_by_value(h, 1, height)
  y = tf.cast(u[2] * tf.cast(height - h + 1, tf.float32), tf.int32)
  x = tf.cast(u[3] * tf.cast(width - w + 1, tf.float32), tf.int32)
  return tf.stack([tf.minimum(y, height - h), tf.minimum(x, width - w), h, w])


def center_crop_window(height, width, image_size):
  """The evaluation window: a centred square of side S/(S+32) x min(H, W).

  Returns:
    int32 `[4]`: (y, x, h, w) in pixels, as the original (side truncated,
    offsets `(H - side + 1) // 2`).
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  ratio = image_size / (image_size + EVAL_CROP_PADDING)
  side = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side,
                   side])


def _parse(serialized, *, decode_masks, fh_mask_to_use):
  """Parses and checks one record.

  Returns:
    dict: `image` (the encoded bytes), `height`, `width` (int32 scalars),
    `label` (int32, 0-based; a record's label 0, no class, gives -1) and,
    when `decode_masks`, `masks` (uint16 ids `[H, W, n]`, or `[H, W, 1]`
    holding channel `fh_mask_to_use`; the views gather their pixels from
    these and cast only the `[S, S, n]` result to int32).
  """
  spec = dict(records.feature_spec())
  spec['image/filename'] = tf.io.FixedLenFeature([], tf.string, '')
  f = tf.io.parse_single_example(serialized, spec)
  image = f['image/encoded']
  height = tf.cast(f['image/height'], tf.int32)
  width = tf.cast(f['image/width'], tf.int32)
  label = tf.cast(f['image/class/label'], tf.int32)
  where = tf.strings.join(['image/filename: ', f['image/filename']])
  is_jpeg = tf.io.is_jpeg(image)
  image_shape = tf.cond(
      is_jpeg,
      lambda: tf.io.extract_jpeg_shape(image)[:2],
      lambda: tf.shape(tf.io.decode_image(image, 3,
                                          expand_animations=False))[:2])
  checks = [
      tf.debugging.Assert(label >= 0, [ERR_LABEL, where, label]),
      tf.debugging.Assert(
          tf.reduce_all(image_shape == tf.stack([height, width])),
          [ERR_IMAGE_SIZE, where, height, width, image_shape]),
  ]
  out = dict(image=image, height=height, width=width, label=label - 1)
  if decode_masks:
    data = f[records.MASK_KEY]
    empty = tf.equal(tf.strings.length(data), 0)
    checks += [
        tf.debugging.Assert(tf.logical_not(empty), [ERR_NO_MASKS, where]),
        tf.debugging.Assert(empty | _mask_size_ok(data, height, width),
                            [ERR_MASK_SIZE, where, height, width]),
    ]
    with tf.control_dependencies(checks):
      planes = records.decode_mask_planes_tf(data, height, width, tf.uint16)
    if fh_mask_to_use is None:
      out['masks'] = tf.transpose(planes, [1, 2, 0])
    else:
      n_masks = tf.shape(planes)[0]
      checks.append(tf.debugging.Assert(
          fh_mask_to_use < n_masks, [ERR_MASK_INDEX, where, n_masks]))
      with tf.control_dependencies(checks):
        out['masks'] = planes[fh_mask_to_use][..., None]
  with tf.control_dependencies(checks):
    return {k: tf.identity(v) for k, v in out.items()}


def _mask_size_ok(data, height, width):
  """Whether the mask bytes hold whole `[height, width]` maps (bool scalar).

  PNG: the IHDR size must be `width x (n x height)`; checking the width too
  catches masks of the wrong shape whose pixel count happens to fit. Raw: the
  byte count must be a non-zero multiple of `height x width`.
  """
  def png_ok():
    # IHDR: big-endian uint32 width and height at bytes 16-23.
    size = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32,
                            little_endian=False)
    return (size[0] == width) & (size[1] > 0) & (size[1] % height == 0)

  def raw_ok():
    n = tf.strings.length(data)
    return (n > 0) & (n % (height * width) == 0)

  is_png = tf.equal(tf.strings.substr(data, 0, 8), records.PNG_SIGNATURE)
  return tf.cond(
      is_png,
      lambda: tf.cond(tf.strings.length(data) >= 24, png_ok,
                      lambda: tf.constant(False)),
      raw_ok)


def _decode_and_crop(image, window):
  """Decodes the crop `window` (y, x, h, w) of encoded image bytes.

  JPEGs (any APP marker: JFIF, Exif, Adobe...) only decode the window; other
  formats (PNG, GIF, BMP, WebP) decode whole, then crop.

  Returns:
    uint8 `[h, w, 3]`.
  """
  def jpeg():
    return tf.io.decode_and_crop_jpeg(image, window, channels=3)

  def other():
    return _crop(tf.io.decode_image(image, 3, expand_animations=False),
                 window)

  return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _resize_image(image, image_size):
  """uint8 `[h, w, 3]` -> float32 `[S, S, 3]` in [0, 1], bicubic."""
  image = tf.image.resize(image, [image_size, image_size], 'bicubic')
  return tf.clip_by_value(image / 255., 0., 1.)


def _resize_uint8(image, image_size):
  """uint8 `[h, w, 3]` -> uint8 `[S, S, 3]`, bicubic, rounded and clipped.

  The pretraining views stay in bytes until the device (a quarter of the
  float32 copies, batch and transfer; `augment.augment_view` scales them to
  [0, 1]); each pixel is within half a grey level of `_resize_image`'s.
  """
  image = tf.image.resize(image, [image_size, image_size], 'bicubic')
  return tf.saturate_cast(image + 0.5, tf.uint8)


def _window_and_flip(seed, height, width):
  """One view's crop window (y, x, h, w: int32 `[4]`) and flip (bool)."""
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  window = sample_crop_window(crop_seed, height, width)
  return window, tf.random.stateless_uniform([], flip_seed) < 0.5


def _crop(x, window):
  """`x[y:y + h, x:x + w]` of an `[H, W, C]` tensor, window (y, x, h, w)."""
  return x[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _nearest_rows(size, image_size):
  """The source row of each output row of a nearest-neighbour resize.

  Exactly `tf.image.resize(..., 'nearest')`'s choice (half-pixel centres):
  min(floor((i + 0.5) x size / S), size - 1) in float32.

  Returns:
    int32 `[S]`, in [0, size).
  """
  scale = tf.cast(size, tf.float32) / image_size
  rows = tf.floor((tf.range(image_size, dtype=tf.float32) + 0.5) * scale)
  return tf.minimum(tf.cast(rows, tf.int32), size - 1)


def _view(image, masks, window, flip, image_size, resize=_resize_uint8):
  """A view's crop of the image and of its masks, flipped together, resized.

  Args:
    image: uint8 `[h, w, 3]`, the decoded crop `window`.
    masks: integer ids `[H, W, n]` of the whole image, or None.
    window: int32 `[4]`, the crop (y, x, h, w) in the whole image.
    flip: bool scalar, whether to flip left-right.
    image_size: S.
    resize: the image's bicubic resize, `_resize_uint8` (pretraining) or
      `_resize_image` (float32 in [0, 1], evaluation).

  Returns:
    (`[S, S, 3]`, the image flipped then resized by `resize`; int32 `[S, S,
    n]`, the masks cropped, flipped and resized nearest neighbour in one
    gather of their rows and columns, or None).
  """
  image = resize(tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
                 image_size)
  if masks is None:
    return image, None
  rows = window[0] + _nearest_rows(window[2], image_size)
  cols = _nearest_rows(window[3], image_size)
  cols = window[1] + tf.where(flip, window[3] - 1 - cols, cols)
  return image, tf.cast(tf.gather(tf.gather(masks, rows), cols, axis=1),
                        tf.int32)


def _random_view(parsed, seed, image_size):
  """One augmented view: random crop, flip p=0.5, resize (docs/method.md).

  Decodes only the view's window (evaluation's random mode; pretraining
  takes both views of an image from one decode, `two_views`).

  Returns:
    (float32 `[S, S, 3]` in [0, 1], int32 `[S, S, n]` masks, or None when
    `parsed` has no masks).
  """
  window, flip = _window_and_flip(seed, parsed['height'], parsed['width'])
  return _view(_decode_and_crop(parsed['image'], window),
               parsed.get('masks'), window, flip, image_size, _resize_image)


def two_views(parsed, seed, image_size):
  """The two augmented views of one image and its masks (docs/method.md).

  Each view draws its crop window and flip from its half of `seed`
  (`stateless_split(seed, 2)`), exactly as `_random_view` would (whose
  images are float32; these are bytes, `_resize_uint8`). The image
  is decoded once, over the smallest window that holds both crops (for a
  JPEG, only that window), and both crops are cut from it, with the pixels
  of the whole image's decode. (Decoding a view's window on its own gives
  other pixels in its first and last column when the image goes on beyond
  them: libjpeg-turbo upsamples the chroma there without the neighbour.)

  Args:
    parsed: `_parse`'s dict: `image` (encoded bytes), `height`, `width` and,
      optionally, `masks` (integer ids `[H, W, n]` of the whole image).
    seed: int64 `[2]` stateless seed of the image (stream element).
    image_size: S, the side of the square views in pixels.

  Returns:
    (view1, view2, masks1, masks2): uint8 `[S, S, 3]` (`_resize_uint8`);
    int32 `[S, S, n]`, or None when `parsed` has no masks.
  """
  height, width = parsed['height'], parsed['width']
  (window1, flip1), (window2, flip2) = (
      _window_and_flip(s, height, width)
      for s in tf.unstack(tf.random.experimental.stateless_split(seed, 2)))
  top_left = tf.minimum(window1[:2], window2[:2])
  bottom_right = tf.maximum(window1[:2] + window1[2:],
                            window2[:2] + window2[2:])
  union = tf.concat([top_left, bottom_right - top_left], 0)
  image = _decode_and_crop(parsed['image'], union)
  masks = parsed.get('masks')
  views = []
  for window, flip in ((window1, flip1), (window2, flip2)):
    inside = tf.concat([window[:2] - top_left, window[2:]], 0)
    views.append(_view(_crop(image, inside), masks, window, flip,
                       image_size))
  (view1, masks1), (view2, masks2) = views
  return view1, view2, masks1, masks2


def _element_seed(seed, process_index, index):
  """Stateless `[2]` int64 seed of stream element `index` of a process."""
  base = tf.constant([seed, process_index], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, index)


def _read(paths, *, process_index, process_count, shuffle, seed,
          record_counts):
  """Serialized records of this process: `tf.data.Dataset` of tf.string.

  Files are split over processes (`paths[i::count]`); with fewer files than
  processes every file is read and its records are split instead. With
  `shuffle` the file order is shuffled every epoch and the stream repeats.
  Each file is read with its errors ignored (a damaged file ends early) and
  is expected to yield its count from `record_counts` (None: counted here,
  which raises ValueError on damaged files); one that yields fewer is noted
  in `skipped_records()` with a warning. Whole files cost nothing more per
  record: the note is a dataset concatenated after the file's records, only
  reached when they run short of the count.
  """
  paths = list(paths)
  if not paths:
    raise ValueError('no TFRecord paths given; use find_shards()')
  if record_counts is None:
    record_counts = count_records_per_file(paths)
  counts = list(record_counts)
  if len(counts) != len(paths):
    raise ValueError(f'{len(counts)} record counts for {len(paths)} files')
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  shard_records = len(paths) < process_count

  def share(n):  # Of the records 0..n-1 of a file, those of this process.
    return len(range(process_index, n, process_count)) if shard_records else n

  if shard_records:
    counts = [share(n) for n in counts]
  else:
    paths = paths[process_index::process_count]
    counts = counts[process_index::process_count]

  def note_short_file(path, expected):
    _note_short_file(path.numpy().decode(), int(expected), share)
    return path

  def read_file(path, expected):
    """The file's records; when it ends early, notes it and stops there."""
    ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()
    if shard_records:
      ds = ds.shard(process_count, process_index)
    # Pulled only when fewer than `expected` records came: yields nothing.
    short = tf.data.Dataset.from_tensors((path, expected)).map(
        lambda p, n: tf.ensure_shape(
            tf.py_function(note_short_file, [p, n], tf.string), []))
    return ds.concatenate(short.filter(lambda _: False)).take(expected)

  files = tf.data.Dataset.from_tensor_slices(
      (paths, tf.constant(counts, tf.int64)))
  if shuffle:
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    files = files.repeat()
  return files.interleave(read_file, cycle_length=min(len(paths), 16),
                          block_length=1, num_parallel_calls=AUTOTUNE,
                          deterministic=True)


def make_pretrain_dataset(
    paths: list[str], *, per_device_batch: int, local_devices: int,
    image_size: int = 224, fh_mask_to_use: int | None = None, seed: int = 0,
    process_index: int | None = None, process_count: int | None = None,
    masks: str = 'fh', grid_size: int = 4,
    record_offsets: list[np.ndarray] | None = None,
    start: int = 0) -> tf.data.Dataset:
  """The infinite DetCon pretraining stream of this JAX process.

  The records come in the order of `record_order`: a seeded permutation of
  all records each epoch, every process its share, so element k of the
  stream (and its crops and flips) depends only on the settings and k, and
  `start=k` continues a stream that consumed k elements exactly.

  Args:
    paths: TFRecord shards (`find_shards(directory, 'train')`), all of them:
      they are split over processes here.
    per_device_batch: images per device.
    local_devices: devices of this process (`jax.local_device_count()`).
    image_size: side S of the square views, in pixels.
    fh_mask_to_use: None keeps every mask channel; an index keeps that one
      channel only (cheaper), still as a trailing axis of size 1. Unused
      with `masks='grid'` (one map).
    seed: seeds the record order and every crop and flip.
    process_index, process_count: default `jax.process_index()`,
      `jax.process_count()`.
    masks: the views' masks, a method of `mask_methods.METHODS`: a stored
      one ('fh', 'slic', 'ground_truth') takes the records' masks (made by
      that method; see `check_dataset`); a drawn one ('grid': `grid_masks`)
      draws its masks over each original image instead and reads no masks
      from the records (any records work, with or without masks). Either
      way the masks are cropped, flipped and resized with the view by the
      same code.
    grid_size: n of the 'grid' masks (n x n rectangles).
    record_offsets: `record_offsets_per_file(paths)`; None walks the files
      here (which raises ValueError on damaged files). A record that cannot
      be read later (damaged since) is skipped with a warning (see
      `skipped_records`).
    start: the first stream element (elements already consumed).

  Returns:
    A dataset of dicts, with L = local_devices, B = per_device_batch:
      `view1`, `view2`: uint8 `[L, B, S, S, 3]`, the bicubic resize rounded
        (`augment.augment_view` takes them to float32 in [0, 1] on the
        device);
      `fh_segmentations1`, `fh_segmentations2`: int32 `[L, B, S, S, n]`, the
        mask ids of each view (n = masks per record, or 1; 1 for 'grid');
      `labels`: int32 `[L, B]`, 0-based (record label - 1; -1: no class).
  """
  hide_gpus_from_tf()
  if masks == 'grid' and grid_size < 1:
    raise ValueError(f'grid_size={grid_size}: use n >= 1 (n x n rectangles)')
  if record_offsets is None:
    record_offsets = record_offsets_per_file(paths)
  index = record_order.RecordIndex.from_offsets(paths, record_offsets)
  check_dataset(paths, fh_mask_to_use, masks)
  process = jax.process_index() if process_index is None else process_index
  ds = _records_in_order(index, seed=seed, process_index=process,
                         process_count=(jax.process_count()
                                        if process_count is None
                                        else process_count), start=start)
  return views_and_batches(
      ds, per_device_batch=per_device_batch, local_devices=local_devices,
      image_size=image_size, fh_mask_to_use=fh_mask_to_use, seed=seed,
      process_index=process, masks=masks, grid_size=grid_size)


def _records_in_order(index: record_order.RecordIndex, *, seed: int,
                      process_index: int, process_count: int,
                      start: int) -> tf.data.Dataset:
  """`(k, serialized record)` for k = start, start + 1, ... (`record_order`).

  Records are read by several threads in order, `_READ_BLOCK` elements per
  call into Python (one call per record cost as much as the reading); one
  that cannot be read is left out (its k with it) and noted in
  `skipped_records`.
  """
  order = record_order.Order(index.num_records, seed=seed,
                             process_index=process_index,
                             process_count=process_count)
  reader = record_order.Reader(index)

  def read(ks):
    """The records of elements `ks`; (serialized, whether it was read)."""
    serialized = np.empty(len(ks), object)
    ok = np.ones(len(ks), bool)
    for i, k in enumerate(ks):
      record = order.record(int(k))
      serialized[i] = reader.read(record)
      if serialized[i] is None:
        _note_unreadable_record(index, record)
        serialized[i], ok[i] = b'', False
    return serialized, ok

  def read_block(ks):
    serialized, ok = tf.numpy_function(read, [ks], (tf.string, tf.bool),
                                       stateful=False)
    return (ks, tf.ensure_shape(serialized, ks.shape),
            tf.ensure_shape(ok, ks.shape))

  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max).batch(_READ_BLOCK)
  ds = ds.map(read_block, num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.unbatch().filter(lambda k, serialized, ok: ok).map(
      lambda k, serialized, ok: (k, serialized))


def views_and_batches(
    ds: tf.data.Dataset, *, per_device_batch: int, local_devices: int,
    image_size: int, fh_mask_to_use: int | None, seed: int,
    process_index: int, masks: str, grid_size: int) -> tf.data.Dataset:
  """Two augmented views of each `(k, serialized record)`, batched.

  The crops and flips of element k are seeded by (seed, process_index, k).
  Arguments and the returned batches as in `make_pretrain_dataset`.
  """
  method = mask_methods.get(masks)
  batch = per_device_batch * local_devices

  @_no_autograph
  def preprocess(k, serialized):
    parsed = _parse(serialized, decode_masks=method.stored,
                    fh_mask_to_use=fh_mask_to_use)
    if not method.stored:
      parsed['masks'] = method.make(parsed['height'], parsed['width'],
                                    grid_size)
    view1, view2, masks1, masks2 = two_views(
        parsed, _element_seed(seed, process_index, k), image_size)
    return dict(view1=view1, view2=view2, fh_segmentations1=masks1,
                fh_segmentations2=masks2, labels=parsed['label'])

  def split_devices(x):
    return tf.reshape(x, tf.concat([[local_devices, per_device_batch],
                                    tf.shape(x)[1:]], 0))

  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True, num_parallel_calls=AUTOTUNE)
  ds = ds.map(lambda b: tf.nest.map_structure(split_devices, b))
  return ds.prefetch(AUTOTUNE)


def make_eval_dataset(
    paths: list[str], *, batch_size: int, image_size: int = 224,
    mode: str = 'center', seed: int = 0, process_index: int | None = None,
    process_count: int | None = None, shuffle_buffer_batches: int = 10,
    record_counts: list[int] | None = None) -> tf.data.Dataset:
  """Images and labels for linear evaluation (no masks are decoded).

  Args:
    paths: TFRecord shards, split over processes as in pretraining.
    batch_size: images per batch of this process.
    image_size: side S of the square images, in pixels.
    mode: 'random': random crop (as in pretraining) and flip, shuffled,
      infinite, full batches only. 'center': the centre crop of
      `center_crop_window`, one pass in file order, not shuffled; the last
      batch is smaller when the records do not fill it.
    seed: seeds the 'random' mode.
    process_index, process_count: default `jax.process_index()`,
      `jax.process_count()`.
    shuffle_buffer_batches: shuffle buffer in batches ('random' only).
    record_counts: records of each file, as in `make_pretrain_dataset`.

  Returns:
    A dataset of dicts: `images` float32 `[batch, S, S, 3]` in [0, 1],
    `labels` int32 `[batch]`, 0-based.
  """
  hide_gpus_from_tf()
  if mode not in ('center', 'random'):
    raise ValueError(f"unknown eval mode {mode!r}; use 'center' or 'random'")
  index = jax.process_index() if process_index is None else process_index
  random = mode == 'random'
  ds = _read(paths, process_index=process_index, process_count=process_count,
             shuffle=random, seed=seed, record_counts=record_counts)
  if random:
    ds = ds.shuffle(shuffle_buffer_batches * batch_size, seed=seed)
  ds = ds.enumerate()

  @_no_autograph
  def preprocess(k, serialized):
    parsed = _parse(serialized, decode_masks=False, fh_mask_to_use=None)
    if random:
      image, _ = _random_view(parsed, _element_seed(seed, index, k),
                              image_size)
    else:
      window = center_crop_window(parsed['height'], parsed['width'],
                                  image_size)
      image = _resize_image(_decode_and_crop(parsed['image'], window),
                            image_size)
    return dict(images=image, labels=parsed['label'])

  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=random,
                num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)
