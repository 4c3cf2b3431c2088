"""The evaluator registry: one interface, the commands' metrics."""

import os
import subprocess
import sys

import ml_collections
import pytest

from detcon import (
    backbone,
    dense_eval,
    evaluators,
    linear_eval,
    npy_io,
    sample_data,
)
from tests.common import write_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(num_classes=4, image_size=64, crops_per_image=2, batch_size=4,
                linear_steps=20, nn_memory_size=500, seed=3)


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('voc'))
  write_voc(root)
  return root


@pytest.fixture(scope='module')
def frozen():
  return backbone.from_random('ResNet18', seed=2)


def test_dense_evaluators_give_the_command_s_metrics(voc_root, frozen):
  command = dense_eval.run(dataset_directory=voc_root, backbone=frozen,
                           output=None, **SETTINGS)
  for name, protocol in (('dense_linear', 'linear'), ('dense_nn', 'nn')):
    settings = ml_collections.ConfigDict(dict(SETTINGS,
                                              dataset_directory=voc_root))
    metrics = evaluators.get(name)(frozen, settings)
    assert metrics == {'miou': command[protocol]['miou'],
                       'pixel_accuracy': command[protocol]['pixel_accuracy']}


def test_bad_settings_are_clear_errors(frozen):
  with pytest.raises(ValueError, match="unknown evaluator 'dense'.*dense_nn"):
    evaluators.get('dense')
  with pytest.raises(ValueError, match='needs settings.dataset_directory'):
    evaluators.get('dense_nn')(frozen, ml_collections.ConfigDict())
  with pytest.raises(ValueError, match=r"settings \['neighbours'\]"):
    evaluators.get('dense_nn')(frozen, ml_collections.ConfigDict(
        dict(neighbours=3)))


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  """Labelled train records of real photos (3 classes), via the mask script."""
  root = tmp_path_factory.mktemp('records')
  sample_data.make_imagenet_folder(str(root / 'train'), num_classes=3,
                                   images_per_class=2, min_side=64,
                                   max_side=96)
  result = subprocess.run(
      [sys.executable, 'generate_fh_masks_for_imagenet.py',
       f'--train_directory={root / "train"}',
       f'--output_directory={root / "records"}', '--train_shards=1',
       '--num_threads=1', '--fh_scales=100', '--fh_min_sizes=50'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return str(root / 'records')


def test_linear_evaluator_gives_the_command_s_metrics(records, frozen,
                                                      tmp_path):
  npy = str(tmp_path / 'random.npy')
  npy_io.save_npy(npy, frozen.params, frozen.state)
  settings = dict(num_steps=3, batch_size=2, learning_rate=0.1,
                  image_size=64, num_classes=3, seed=1)
  command = linear_eval.run(None, records, npy=npy, **settings)
  metrics = evaluators.get('linear')(frozen, ml_collections.ConfigDict(
      dict(settings, dataset_directory=records)))
  assert metrics == {'top1': command['top1'], 'top5': command['top5']}


def test_knn_evaluator_on_a_folder_finds_each_image_itself(records, frozen):
  """Bank = queries: with k = 1 each image's neighbour is itself."""
  folder = os.path.join(os.path.dirname(records), 'train')
  settings = ml_collections.ConfigDict(dict(
      source=f'folder:{folder}', train_split='', eval_split='',
      image_size=64, batch_size=4, k=1))
  assert evaluators.get('knn')(frozen, settings) == {'top1': 1.0,
                                                      'top5': 1.0}
  with pytest.raises(ValueError, match='needs settings.source'):
    evaluators.get('knn')(frozen, ml_collections.ConfigDict())
  with pytest.raises(ValueError, match='num_classes is needed'):
    evaluators.get('knn')(frozen, ml_collections.ConfigDict(
        dict(source=f'records:{records}')))
