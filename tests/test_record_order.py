"""The indexed data order: exact continuation from any element, per process."""

import numpy as np
import pytest
import tensorflow as tf

from detcon import data, record_order
from tests.common import PHOTOS


def test_each_epoch_is_a_permutation_split_over_processes():
  n, count = 11, 3
  orders = [record_order.Order(n, seed=7, process_index=p,
                               process_count=count) for p in range(count)]
  length = n // count
  assert all(o.epoch_length == length for o in orders)
  for epoch in range(3):
    taken = [[o.record(epoch * length + i) for i in range(length)]
             for o in orders]
    flat = sum(taken, [])
    assert len(set(flat)) == len(flat) == count * length  # Disjoint shares.
    # The shares are the permutation's every third element, from p on.
    permutation = record_order.epoch_permutation(7, epoch, n)
    for p in range(count):
      assert taken[p] == [int(r) for r in permutation[p::count][:length]]
  # Epochs differ; the same element is the same record whatever was asked
  # before (no state but the cache).
  first = [orders[0].record(i) for i in range(length)]
  second = [orders[0].record(length + i) for i in range(length)]
  assert first != second
  assert orders[0].record(1) == first[1]
  with pytest.raises(ValueError, match='cannot be split over 4 processes'):
    record_order.Order(3, seed=0, process_index=0, process_count=4)


def test_offsets_point_at_every_record(photos):  # noqa: F811
  directory, _ = photos
  paths = data.find_shards(directory, 'train')
  offsets = data.record_offsets_per_file(paths)
  assert [len(o) for o in offsets] == data.count_records_per_file(paths)
  # The same offsets through the tf.data walk of other file systems.
  remote = data.record_offsets_per_file([f'file://{p}' for p in paths])
  for a, b in zip(offsets, remote, strict=True):
    np.testing.assert_array_equal(a, b)
  index = record_order.RecordIndex.from_offsets(paths, offsets)
  reader = record_order.Reader(index, max_open=1)  # Reopens files.
  labels = []
  for record in range(index.num_records):
    parsed = data._parse(reader.read(record), decode_masks=False,
                         fh_mask_to_use=None)
    labels.append(int(parsed['label']))
  assert labels == list(range(len(PHOTOS)))  # Written in label order.
  # The records as tf.data reads them, also through TensorFlow's reader of
  # other file systems, in an order that jumps back and forth.
  expected = [r.numpy() for r in tf.data.TFRecordDataset(paths)]
  remote_index = record_order.RecordIndex.from_offsets(
      [f'file://{p}' for p in paths], offsets)
  for each in (index, remote_index):
    reader = record_order.Reader(each, max_open=2)
    order = np.random.default_rng(0).permutation(each.num_records)
    assert [reader.read(r) for r in order] == [expected[r] for r in order]


def _slow_masked_crc32c(data):
  """CRC-32C bit by bit (reflected polynomial 0x82f63b78), then masked."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_masked_crc32c_against_its_definition():
  # The catalogue's check value of CRC-32C: 0xe3069283 for b'123456789'.
  unmasked = 0xE3069283
  assert record_order.masked_crc32c(b'123456789') == (
      ((unmasked >> 15) | (unmasked << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  rng = np.random.default_rng(0)
  for n in (0, 1, 8, 1000):
    data_bytes = rng.integers(0, 256, n, np.uint8).tobytes()
    assert record_order.masked_crc32c(data_bytes) == _slow_masked_crc32c(
        data_bytes)


def _stream(paths, start, n, **kwargs):
  ds = data.make_pretrain_dataset(paths, per_device_batch=2, local_devices=1,
                                  image_size=32, seed=3, start=start,
                                  **kwargs)
  return [b for _, b in zip(range(n), ds.as_numpy_iterator(), strict=False)]


@pytest.mark.parametrize('process_index,process_count', [(0, 1), (0, 2),
                                                         (1, 2)])
def test_a_stream_started_at_k_continues_the_stream(photos, process_index,  # noqa: F811
                                                    process_count):
  directory, _ = photos
  paths = data.find_shards(directory, 'train')
  share = dict(process_index=process_index, process_count=process_count)
  whole = _stream(paths, 0, 7, **share)  # Several epochs of 6 or 3 records.
  resumed = _stream(paths, 6, 4, **share)  # From the 4th batch (element 6).
  for a, b in zip(whole[3:], resumed, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Every epoch of a process holds each of its records once.
  labels = np.concatenate([b['labels'].ravel() for b in whole])
  length = len(PHOTOS) // process_count
  for epoch in range(len(labels) // length):
    chunk = labels[epoch * length:(epoch + 1) * length]
    assert len(set(chunk)) == length


def test_the_two_processes_share_each_epoch(photos):  # noqa: F811
  directory, _ = photos
  paths = data.find_shards(directory, 'train')
  labels = [np.concatenate([b['labels'].ravel() for b in _stream(
      paths, 0, 3, process_index=p, process_count=2)]) for p in range(2)]
  for epoch in range(2):
    both = np.concatenate([x[epoch * 3:(epoch + 1) * 3] for x in labels])
    assert sorted(both) == list(range(len(PHOTOS)))


def _state(**changes):
  paths = ['/d/train-00000-of-00002', '/d/train-00001-of-00002']
  settings = dict(seed=1, process_count=2, process_batch=4, masks='fh',
                  origin=0)
  counts = changes.pop('counts', [5, 5])
  settings.update(changes)
  return record_order.input_state(paths, counts, **settings)


def test_resume_origin_same_settings_continue_others_restart_an_epoch():
  saved = _state(origin=3)
  # Same settings (from another folder): the saved origin.
  assert record_order.resume_origin(saved, _state(), step=7) == 3
  # 10 records over 2 processes: epochs of 5; the saved run was at element
  # 3 + 7 * 4 = 31, epoch 6: the new stream starts at element 35 (epoch 7).
  new = _state(seed=2)
  origin = record_order.resume_origin(saved, new, step=7)
  assert origin + 7 * 4 == 35
  # Another batch: the same epoch boundary, reached with 8 images a step.
  new = _state(process_batch=8)
  assert record_order.resume_origin(saved, new, step=7) + 7 * 8 == 35
  # No saved state: the position is taken as 7 steps of the new settings
  # (element 28, epoch 5): the next epoch starts at 30.
  assert record_order.resume_origin(None, _state(), step=7) + 28 == 30
  assert record_order.resume_origin(None, _state(), step=0) == 0  # Fresh.


def test_changes_name_each_setting_and_both_values():
  saved = _state()
  assert record_order.changes(saved, _state()) == []
  assert record_order.changes(saved, _state(seed=5)) == ['seed: 1 -> 5']
  assert record_order.changes(saved, _state(process_count=4)) == [
      'process_count: 2 -> 4']
  assert record_order.changes(saved, _state(masks='slic')) == [
      'masks: fh -> slic']
  files, records = record_order.changes(saved, _state(counts=[5, 6]))
  assert files.startswith('train files (name:records): 1 gone')
  assert 'train-00001-of-00002:5' in files
  assert 'train-00001-of-00002:6' in files
  assert records == 'records: 10 -> 11'


@pytest.mark.parametrize('remote', [False, True])
def test_a_damaged_record_reads_as_none(tmp_path, remote):
  path = str(tmp_path / 'records')
  written = [bytes([i]) * (100 + i) for i in range(5)]
  with tf.io.TFRecordWriter(path) as writer:
    for record in written:
      writer.write(record)
  offsets = data.record_offsets_per_file([path])[0]
  content = bytearray(open(path, 'rb').read())
  content[int(offsets[1]) + 20] ^= 0xFF  # Inside record 1's data.
  content[int(offsets[2]) + 3] ^= 0xFF  # Record 2's length.
  with open(path, 'wb') as f:
    f.write(content[:int(offsets[4]) + 30])  # Record 4 cut short.
  name = f'file://{path}' if remote else path
  reader = record_order.Reader(
      record_order.RecordIndex.from_offsets([name], [offsets]))
  assert [reader.read(r) for r in range(5)] == [written[0], None, None,
                                                written[3], None]
