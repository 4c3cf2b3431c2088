"""The evaluator registry: one interface over the dense protocols."""

import ml_collections
import pytest

from detcon import backbone, dense_eval, evaluators
from tests.test_dense_eval import write_voc

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
