"""Damaged shards: listed at the start, or skipped, warned and counted."""

import glob
import json
import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import segmentation

from detcon import data, linear_eval, main_loop, records, sample_data
from detcon.configs import detcon_b
from tests.common import TINY, python

PER_SHARD = 6  # Records in each of the two shards.
CORRUPT = 3  # The record whose payload is damaged: records 3-5 are lost.
REMEDY = 'delete it and rerun generate_fh_masks_for_imagenet.py with the same'


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """Two train shards of real photos with FH masks (labels 1-3)."""
  root = tmp_path_factory.mktemp('damaged')
  sample_data.make_imagenet_folder(str(root / 'photos'), num_classes=3,
                                   images_per_class=4, min_side=64,
                                   max_side=96)
  examples = []
  for label, folder in enumerate(sorted(glob.glob(str(root / 'photos/*'))), 1):
    for path in sorted(glob.glob(os.path.join(folder, '*.JPEG'))):
      pixels = np.asarray(Image.open(path))
      masks = segmentation.felzenszwalb(pixels, scale=100, min_size=50)
      with open(path, 'rb') as f:
        examples.append(records.make_example(
            image=f.read(), height=pixels.shape[0], width=pixels.shape[1],
            filename=os.path.basename(path), label=label,
            synset=os.path.basename(folder), text='photo',
            masks=records.encode_masks(masks[None], 'png')))
  directory = root / 'records'
  directory.mkdir()
  for shard in range(2):
    path = str(directory / f'train-{shard:05d}-of-00002')
    with tf.io.TFRecordWriter(path) as writer:
      for example in examples[shard::2]:
        writer.write(example.SerializeToString())
  return directory


def _copy(directory, tmp_path, name='records'):
  """A copy of the shards and the path of its first shard."""
  copy = shutil.copytree(directory, tmp_path / name)
  return str(copy), str(copy / 'train-00000-of-00002')


def _corrupt_record(path, index):
  """Flips a payload byte of record `index`; the framing stays intact."""
  with open(path, 'rb') as f:
    raw = bytearray(f.read())
  start = 0
  for _ in range(index):
    (length,) = struct.unpack('<Q', raw[start:start + 8])
    start += 12 + length + 4
  raw[start + 12 + 20] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(raw)


def _cut_to_half(path):
  with open(path, 'rb') as f:
    raw = f.read()
  with open(path, 'wb') as f:
    f.write(raw[:len(raw) // 2])


def test_damaged_files_are_all_listed_before_anything_runs(shards,
                                                           tmp_path):
  directory, first = _copy(shards, tmp_path)
  _cut_to_half(first)
  second = first.replace('00000-of', '00001-of')
  shutil.copy(glob.glob(str(shards.parent / 'photos/*/*.JPEG'))[0], second)
  # main_loop's own run(), as the command calls it (the command prints the
  # ValueError's message and exits; test_main_loop checks that path).
  config = detcon_b.get_config()
  config.update(dataset_directory=directory, num_train_images=12,
                checkpoint_dir=str(tmp_path / 'ckpt'), batch_size=4,
                image_size=64, max_steps=1)
  config.model.encoder = 'ResNet18'
  with pytest.raises(ValueError) as error:
    main_loop.run(config)
  message = str(error.value)
  assert message.startswith('2 of 2 TFRecord files are damaged')
  assert f'{first}: truncated' in message
  assert f'{second}: not a TFRecord file' in message
  assert REMEDY in message
  assert not (tmp_path / 'ckpt').exists()  # Stopped before any step.

  # A remote file system goes through tf.data (here file://): it names the
  # damaged file too.
  with pytest.raises(ValueError, match=f'file://{first}: truncated'):
    data.count_records_per_file([f'file://{first}'])


def test_share_of_skipped_records_with_more_processes_than_files(shards,
                                                                 tmp_path):
  labels, skipped = [], []
  for index in range(4):
    directory, first = _copy(shards, tmp_path, f'process{index}')
    _corrupt_record(first, CORRUPT)
    paths = data.find_shards(directory, 'train')
    ds = data.make_eval_dataset(paths, batch_size=8, image_size=8,
                                process_index=index, process_count=4)
    labels.append(sum(len(b['labels']) for b in ds.as_numpy_iterator()))
    skipped.append(data.skipped_records(paths))
  # Record k of a file goes to process k % 4: of the lost records 3, 4, 5 of
  # the first shard, processes 3, 0 and 1 lose one each.
  assert skipped == [1, 1, 0, 1]
  assert labels == [3, 3, 2, 1]
  assert sum(labels) + sum(skipped) == 2 * PER_SHARD


@pytest.fixture(scope='module')
def corrupt_run(shards, tmp_path_factory):
  """Pretraining on shards whose first holds a corrupt record."""
  tmp_path = tmp_path_factory.mktemp('corrupt')
  directory, first = _copy(shards, tmp_path)
  _corrupt_record(first, CORRUPT)
  ckpt = tmp_path / 'ckpt'
  result = python('-m', 'detcon.main_loop', *TINY, '--max_steps=1',
                  f'--dataset_directory={directory}', '--num_train_images=12',
                  f'--checkpoint_dir={ckpt}')
  assert result.returncode == 0, result.stderr[-3000:]
  return result, directory, first, ckpt


def _warnings_about(path, stderr):
  return [line for line in stderr.splitlines()
          if line.startswith('W') and path in line]


def test_training_skips_warns_once_and_counts(corrupt_run):
  result, _, first, ckpt = corrupt_run
  assert 'Done: steps 0 -> 1' in result.stderr
  # Pretraining reads records one by one (record_order): only the damaged
  # record is lost, once, however many epochs the pipeline read ahead.
  (warning,) = _warnings_about(first, result.stderr)
  assert 'cannot be read' in warning and REMEDY in warning
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['skipped_records'] == 1
  assert np.isfinite(metrics['loss'])
  assert 'skipped_records=1' in result.stderr  # The log line.
  (events,) = glob.glob(str(ckpt / 'tensorboard' / 'events.*'))
  logged = [v.simple_value for e in tf.compat.v1.train.summary_iterator(events)
            for v in e.summary.value if v.tag == 'skipped_records']
  assert logged == [1]


def test_linear_eval_reports_skipped_records(corrupt_run, caplog):
  _, directory, first, ckpt = corrupt_run
  result = linear_eval.run(str(ckpt), directory, num_steps=2, batch_size=4,
                           learning_rate=0.1, eval_split='train')
  with open(ckpt / linear_eval.RESULT_FILE) as f:
    assert json.load(f) == result
  assert result['skipped_records'] == PER_SHARD - CORRUPT
  assert result['num_examples'] == 2 * PER_SHARD - result['skipped_records']
  (warning,) = [r.getMessage() for r in caplog.records
                if r.levelname == 'WARNING' and first in r.getMessage()]
  assert REMEDY in warning
