"""TensorBoard scalars of a run, written as event files.

An event file is a TFRecord file (frames of `record_order.frame`) of
serialized `Event` protocol buffers (tensorflow/core/util/event.proto).
Pretraining writes only scalars, so the few fields it needs are encoded
here from their field numbers in protobuf's wire format, instead of
importing tensorboardX, whose package imports PyTorch when it is
installed: seconds at the start of every run. TensorBoard,
`tf.compat.v1.train.summary_iterator` and `demo.read_scalars` read them.

Fields used: Event.wall_time (1, double), step (2, int64), file_version
(3, string), summary (5), session_log (7); Summary.value (1);
Summary.Value.tag (1, string), simple_value (2, float);
SessionLog.status (1, enum; START = 1).
"""

import math
import os
import socket
import struct
import time
from collections.abc import Iterable, Mapping

from detcon import record_order

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # Protobuf wire types.
_SESSION_START = 1


def _varint(n: int) -> bytes:
  """`n` >= 0 as a protobuf varint: 7 bits per byte, low bits first."""
  out = bytearray()
  while n > 0x7F:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _float32(value: float) -> bytes:
  """`value` rounded to float32, little-endian; beyond its range +-inf, as
  protobuf stores such a float field."""
  try:
    return struct.pack('<f', value)
  except OverflowError:
    return struct.pack('<f', math.copysign(math.inf, value))


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, _LENGTH) + _varint(len(payload)) + payload


def event(step: int, *, file_version: str | None = None,
          scalar: tuple[str, float] | None = None,
          session_start: bool = False) -> bytes:
  """One serialized Event at `step` (>= 0), now, holding what is given.

  As protobuf writes it: fields in number order, step 0 (the default) left
  out.
  """
  out = _key(1, _FIXED64) + struct.pack('<d', time.time())
  if step:
    out += _key(2, _VARINT) + _varint(step)
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalar is not None:
    tag, value = scalar
    value_message = (_length_delimited(1, tag.encode())
                     + _key(2, _FIXED32) + _float32(value))
    out += _length_delimited(5, _length_delimited(1, value_message))
  if session_start:
    out += _length_delimited(7, _key(1, _VARINT) + _varint(_SESSION_START))
  return out


class ScalarWriter:
  """Appends scalars to a new event file in `log_dir` (created if missing).

  With `purge_step`, TensorBoard hides the steps >= `purge_step` that
  earlier files of the folder logged (a run resumed from a checkpoint
  older than its last logged step computes those steps again).
  """

  def __init__(self, log_dir: str, purge_step: int | None = None):
    os.makedirs(log_dir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    self._file = open(os.path.join(log_dir, name), 'ab')  # pylint: disable=consider-using-with
    header = [event(0, file_version='brain.Event:2')]
    if purge_step is not None:  # TensorBoard's purge marker.
      header += [event(purge_step, file_version='brain.Event:2'),
                 event(purge_step, session_start=True)]
    self._append(header)

  def _append(self, events: Iterable[bytes]) -> None:
    """Writes serialized events, one frame each, and flushes the file."""
    for e in events:
      self._file.write(record_order.frame(e))
    self._file.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes one event per scalar at `step` and flushes the file."""
    self._append(event(step, scalar=(tag, float(value)))
                 for tag, value in scalars.items())

  def close(self) -> None:
    self._file.close()
