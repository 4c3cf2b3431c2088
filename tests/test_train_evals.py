"""Evaluators during pretraining: validated up front, same as the command."""

import json
import os

import ml_collections
import pytest

from detcon import backbone, evaluators, main_loop
from tests.test_backbone import tiny_config
from tests.test_dense_eval import write_voc

DENSE = dict(num_classes=4, image_size=64, crops_per_image=1, batch_size=4,
             nn_memory_size=200, seed=5)


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('voc'))
  write_voc(root, train=3, val=2)
  return root


def _evals(voc_root, every_steps=5):
  return ml_collections.ConfigDict(dict(nn=dict(
      evaluator='dense_nn', every_steps=every_steps,
      settings=dict(DENSE, dataset_directory=voc_root))))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_last_step_eval_equals_the_command_on_the_final_checkpoint(
    voc_root, tmp_path, dtype):
  ckpt = str(tmp_path / 'ckpt')
  config = tiny_config(dtype=dtype, checkpoint_dir=ckpt)
  config.evals = _evals(voc_root)  # Runs at the last step (2) only.
  metrics = main_loop.run(config)
  with open(os.path.join(ckpt, 'evals.json')) as f:
    written = json.load(f)
  assert written['step'] == 2
  command = evaluators.get('dense_nn')(
      backbone.from_checkpoint(ckpt),
      ml_collections.ConfigDict(dict(DENSE, dataset_directory=voc_root)))
  assert {'nn/miou': written['nn/miou'],
          'nn/pixel_accuracy': written['nn/pixel_accuracy']} == {
              f'nn/{k}': v for k, v in command.items()}
  assert metrics['nn/miou'] == command['miou']


@pytest.mark.parametrize('entry, message', [
    (dict(evaluator='dense', every_steps=1), r'config.evals.x.evaluator: '
     r"unknown evaluator 'dense'"),
    (dict(evaluator='dense_nn', every_steps=0),
     'config.evals.x.every_steps=0'),
    (dict(evaluator='knn', every_steps=1,
          settings=dict(source='folder:/no/such/folder')),
     "config.evals.x.settings: no data folder '/no/such/folder'"),
])
def test_bad_settings_fail_before_the_first_step(tmp_path, entry, message):
  config = tiny_config(checkpoint_dir=str(tmp_path / 'ckpt'))
  config.evals = ml_collections.ConfigDict(dict(x=entry))
  with pytest.raises(ValueError, match=message):
    main_loop.run(config)
  assert not os.path.exists(tmp_path / 'ckpt')
