"""The mask-method registry: one entry is all a new method needs."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detcon import data, mask_methods, record_writer, records


def test_registry_holds_the_known_methods():
  assert mask_methods.names(stored=True) == ('fh', 'slic', 'ground_truth')
  assert mask_methods.names(stored=False) == ('grid',)
  fields = {f.name for f in dataclasses.fields(record_writer.Settings)}
  for name in mask_methods.names(stored=True):
    method = mask_methods.METHODS[name]
    assert set(method.settings) <= fields, name
    assert method.work and method.help and method.describe, name
    assert method.bytes_per_pixel > 0, name
  with pytest.raises(ValueError, match='use one of fh, slic, ground_truth, '
                     'grid'):
    mask_methods.get('mcg')


def _halves(pixels, entry, settings):
  """The toy method: id 0 on the left half, 1 on the right, `[1, H, W]`."""
  del entry, settings
  height, width = pixels.shape[:2]
  right = np.arange(width) >= width // 2
  return np.broadcast_to(right.astype(np.int32), (1, height, width))


def test_one_entry_adds_a_stored_method(monkeypatch, tmp_path):
  monkeypatch.setitem(mask_methods.METHODS, 'halves', mask_methods.MaskMethod(
      stored=True, make=_halves, settings=('segmentation',), work='halving',
      describe=lambda settings: ['halves']))
  rng = np.random.default_rng(0)
  entries = []
  for i in range(3):
    path = str(tmp_path / f'{i}.jpg')
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), np.uint8)).save(path)
    entries.append(record_writer.Entry(path, i + 1, f's{i}', f'class {i}'))
  settings = record_writer.Settings(((1000.0, 1000),), 'png',
                                    segmentation='halves')
  shard = record_writer.Shard(str(tmp_path / 'train-00000-of-00001'),
                              tuple(entries))
  stats = record_writer.write_shard(shard, settings)  # In this process.
  assert stats.images['train'] == 3
  assert stats.segments == [(2,)] * 3

  for serialized in tf.data.TFRecordDataset(shard.path).as_numpy_iterator():
    record = records.read_example(serialized)
    assert record['mask_source'] == 'halves'
    np.testing.assert_array_equal(record['masks'],
                                  _halves(np.zeros((24, 40, 3)), None, None))
  summary = record_writer.Summary(stats=stats, elapsed_s=1.0)
  text = record_writer.format_summary(summary, settings, 0)
  assert 'in halving' in text
  assert 'segments per image (halves): min 2' in text
  assert record_writer.fingerprint([shard], settings, str(tmp_path)) != (
      record_writer.fingerprint(
          [shard], dataclasses.replace(settings, segmentation='fh'),
          str(tmp_path)))

  with pytest.raises(ValueError, match=r"made by 'halves'"):
    data.check_dataset([shard.path], masks='fh')
  ds = data.make_pretrain_dataset(
      [shard.path], per_device_batch=2, local_devices=1, image_size=32,
      process_index=0, process_count=1, masks='halves')
  batch = next(ds.as_numpy_iterator())
  assert batch['fh_segmentations1'].shape == (1, 2, 32, 32, 1)
  assert set(np.unique(batch['fh_segmentations1'])) <= {0, 1}
