"""The pretraining data order: every record addressed by its index.

Each epoch is a fresh seeded permutation of all N records of the train
shards (one global shuffle: no file order, no shuffle buffer). Process p of
P takes every P-th record of it, from p on, and the first N // P of those,
so every process has the same epoch length (at most P - 1 records of an
epoch go unused, other ones each epoch). Element k of a process's stream is
then a pure function of (seed, k, p, P, N): epoch k // (N // P), place
k % (N // P). A run that stops after consuming k elements resumes by
starting the stream at k; what a checkpoint has to keep of the input is
that one number and the settings it depends on (`input_state`).

Records are read at their byte offsets (walked once at the start by
`data.record_offsets_per_file`), each frame's checksums checked (`Reader`).
"""

import collections
import dataclasses
import os
import struct
import threading

import google_crc32c
import numpy as np

# What the order of elements depends on; a resume compares them (`changes`).
ORDER_SETTINGS = ('files', 'records', 'seed', 'process_count',
                  'process_batch', 'masks')


@dataclasses.dataclass(frozen=True)
class RecordIndex:
  """Where every record of some TFRecord files starts.

  Attributes:
    paths: the files, in the order given.
    file_of: int32 `[N]`, the file of each record (records file by file).
    offset_of: int64 `[N]`, the byte offset of each record's frame in it.
  """
  paths: tuple[str, ...]
  file_of: np.ndarray
  offset_of: np.ndarray

  @classmethod
  def from_offsets(cls, paths, offsets_per_file) -> 'RecordIndex':
    """From each file's record offsets (`data.record_offsets_per_file`)."""
    counts = [len(o) for o in offsets_per_file]
    file_of = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
    offset_of = (np.concatenate(offsets_per_file).astype(np.int64) if counts
                 else np.zeros([0], np.int64))
    return cls(tuple(paths), file_of, offset_of)

  @property
  def num_records(self) -> int:
    return len(self.offset_of)


def epoch_length(num_records: int, process_count: int) -> int:
  """Elements per epoch of each process: N // P."""
  length = num_records // process_count
  if length < 1:
    raise ValueError(f'{num_records} training records cannot be split over '
                     f'{process_count} processes; use more records or fewer '
                     'processes')
  return length


def epoch_permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """The record order of one epoch: int64 `[N]`, a permutation of 0..N-1."""
  return np.random.default_rng([seed, epoch]).permutation(num_records)


class Order:
  """Element k of a process's stream -> the record it reads.

  Thread-safe: tf.data calls `record` from several threads. The permutation
  of the newest epoch asked for is cached (ImageNet: 10 MB, ~0.1 s to draw).
  """

  def __init__(self, num_records: int, *, seed: int, process_index: int,
               process_count: int):
    self.num_records = num_records
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.epoch_length = epoch_length(num_records, process_count)
    self._lock = threading.Lock()
    self._cached = (None, None)  # (epoch, its permutation)

  def record(self, k: int) -> int:
    """The index of the record that element `k` (>= 0) reads."""
    epoch, place = divmod(k, self.epoch_length)
    with self._lock:
      cached_epoch, permutation = self._cached
      if cached_epoch != epoch:
        permutation = epoch_permutation(self.seed, epoch, self.num_records)
        self._cached = (epoch, permutation)
    return int(permutation[place * self.process_count + self.process_index])


def masked_crc32c(data: bytes) -> int:
  """The masked CRC-32C that TFRecord frames store (uint32).

  CRC-32C (Castagnoli), rotated right by 15 bits plus 0xa282ead8, modulo
  2^32, as TFRecord files hold it for a record's length and for its data.
  """
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """`data` as one TFRecord frame, the format `Reader` reads."""
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data
          + struct.pack('<I', masked_crc32c(data)))


class Reader:
  """Reads records by index, keeping up to `max_open` files open.

  A frame is `uint64 length, uint32 masked crc of the length, data, uint32
  masked crc of the data` (little-endian). Local files are read with two
  `os.pread` calls a record and both checksums are checked here; other file
  systems (`gs://...`) through TensorFlow's random-access reader, which
  checks them too but refills a buffer of several MB from the offset on
  every read that does not follow the previous one (about 2 ms a record
  from a shard of ImageNet's size, against 0.05 ms here; `bench_input`).

  Thread-safe. A record that cannot be read (a checksum fails, or the frame
  runs past the end of the file: the file was damaged after it was counted)
  comes back as None.
  """

  def __init__(self, index: RecordIndex, max_open: int = 64):
    self._index = index
    self._max_open = max_open
    self._lock = threading.Lock()
    self._open = collections.OrderedDict()  # file -> its read function

  def _reader(self, file: int):
    """`read(offset) -> bytes | None` of file `file`, opened on first use."""
    with self._lock:
      if file in self._open:
        self._open.move_to_end(file)
        return self._open[file]
      path = self._index.paths[file]
      read = (_tensorflow_reader(path) if '://' in path
              else _local_reader(path))
      self._open[file] = read
      if len(self._open) > self._max_open:
        self._open.popitem(last=False)  # Closed when its last read ends.
      return read

  def read(self, record: int) -> bytes | None:
    """The serialized record `record` (an index into the `RecordIndex`)."""
    read = self._reader(int(self._index.file_of[record]))
    return read(int(self._index.offset_of[record]))


def _local_reader(path):
  """Reads the frame at an offset of a local file, checking its checksums.

  The file stays open as long as the returned function lives (it holds the
  file object), so a reader dropped from `Reader`'s cache during a read
  stays usable until that read ends.
  """
  f = open(path, 'rb', buffering=0)  # pylint: disable=consider-using-with

  def read(offset):
    header = os.pread(f.fileno(), 12, offset)
    if len(header) < 12:
      return None
    length, length_crc = struct.unpack('<QI', header)
    if length_crc != masked_crc32c(header[:8]):
      return None
    body = os.pread(f.fileno(), length + 4, offset + 12)
    if len(body) < length + 4:
      return None
    data = body[:length]
    (data_crc,) = struct.unpack('<I', body[length:])
    return data if data_crc == masked_crc32c(data) else None

  return read


def _tensorflow_reader(path):
  """As `_local_reader`, through TensorFlow's file systems (`gs://...`)."""
  # Imported here: the order and local files need no TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.lib.io import tf_record  # pylint: disable=g-import-not-at-top
  reader, lock = tf_record.tf_record_random_reader(path), threading.Lock()

  def read(offset):
    try:
      with lock:
        return reader.read(offset)[0]
    except (tf.errors.DataLossError, IndexError):
      return None

  return read


def input_state(paths, record_counts, *, seed: int, process_count: int,
                process_batch: int, masks: str, origin: int) -> dict:
  """What a checkpoint keeps of the input: small JSON.

  Args:
    paths: the train files (only their names are kept, with their counts).
    record_counts: records of each file of `paths`.
    seed, process_count, process_batch, masks: the order's settings
      (`process_batch`: images per step of one process).
    origin: the stream element of step 0: step s reads elements
      `origin + s * process_batch ...` (0 unless the run was resumed with
      other settings, see `resume_origin`).
  """
  names = [p.rsplit('/', 1)[-1] for p in paths]
  return dict(files=[f'{n}:{c}' for n, c in zip(names, record_counts,
                                                 strict=True)],
              records=int(sum(record_counts)), seed=seed,
              process_count=process_count, process_batch=process_batch,
              masks=masks, origin=origin)


def changes(saved: dict, new: dict) -> list[str]:
  """The order settings that differ, as 'name: saved -> new' lines."""
  lines = []
  for name in ORDER_SETTINGS:
    if saved.get(name) != new[name]:
      if name == 'files':
        gone = sorted(set(saved.get(name) or ()) - set(new[name]))
        came = sorted(set(new[name]) - set(saved.get(name) or ()))
        lines.append(f'train files (name:records): {len(gone)} gone '
                     f'{gone[:3]}, {len(came)} new {came[:3]}')
      else:
        lines.append(f'{name}: {saved.get(name)} -> {new[name]}')
  return lines


def resume_origin(saved: dict | None, new: dict, step: int) -> int:
  """The `origin` of a run resumed at `step` with the order settings `new`.

  Same settings: the saved origin, so the stream continues exactly where the
  checkpoint's step left it. Other settings, or no saved input state (a
  checkpoint from before the input state was kept; its position is then
  taken as `step` batches of the new settings): the stream restarts at the
  first element of the epoch after the one the saved run was in, under the
  new settings.
  """
  if saved is None and step == 0:
    return 0  # A fresh run.
  if saved is not None and not changes(saved, new):
    return saved['origin']
  was = saved if saved is not None else dict(new, origin=0)
  position = was['origin'] + step * was['process_batch']
  epoch = position // epoch_length(was['records'], was['process_count']) + 1
  start = epoch * epoch_length(new['records'], new['process_count'])
  return start - step * new['process_batch']
