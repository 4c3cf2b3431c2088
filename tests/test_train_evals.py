"""Evaluators during pretraining: validated up front, same as the command."""

import json
import os

import ml_collections
import pytest

from detcon import backbone, evaluators, main_loop, train_evals
from tests.common import mock_run_config, write_voc

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
  config = mock_run_config(dtype=dtype, checkpoint_dir=ckpt)
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
    (dict(evaluator='dense_nn', at_steps=(3, 0)),
     r'config.evals.x.at_steps=\(3, 0\)'),
    (dict(evaluator='dense_nn', at_steps=(3,), every_steps=2),
     'and no every_steps with it'),
    (dict(evaluator='knn', every_steps=1,
          settings=dict(source='folder:/no/such/folder')),
     "config.evals.x.settings: no data folder '/no/such/folder'"),
])
def test_bad_settings_fail_before_the_first_step(tmp_path, entry, message):
  config = mock_run_config(checkpoint_dir=str(tmp_path / 'ckpt'))
  config.evals = ml_collections.ConfigDict(dict(x=entry))
  with pytest.raises(ValueError, match=message):
    main_loop.run(config)
  assert not os.path.exists(tmp_path / 'ckpt')


def test_history_keeps_every_evaluation_across_a_resume(voc_root, tmp_path):
  ckpt = str(tmp_path / 'ckpt')
  config = mock_run_config(checkpoint_dir=ckpt, max_steps=2)
  config.evals = _evals(voc_root, every_steps=1)
  main_loop.run(config)
  config.max_steps = 3  # Resumes from step 2.
  main_loop.run(config)
  with open(os.path.join(ckpt, 'evals.json')) as f:
    written = json.load(f)
  assert [h['step'] for h in written['history']] == [1, 2, 3]
  assert written['history'][-1] == {k: v for k, v in written.items()
                                    if k != 'history'}
  assert all(0 <= h['nn/miou'] <= 1 for h in written['history'])


def test_a_redone_step_replaces_the_entries_at_and_past_it(tmp_path):
  for step, value in ((5, 0.1), (10, 0.2), (15, 0.3), (10, 0.4)):
    train_evals.write(str(tmp_path), step, {'nn/miou': value})
  with open(tmp_path / 'evals.json') as f:
    written = json.load(f)
  assert written['history'] == [{'step': 5, 'nn/miou': 0.1},
                                {'step': 10, 'nn/miou': 0.4}]
  assert (written['step'], written['nn/miou']) == (10, 0.4)


def test_entries_are_due_at_their_steps_and_at_the_last():
  config = ml_collections.ConfigDict(dict(evals=dict(
      every=dict(evaluator='knn', every_steps=3),
      at=dict(evaluator='knn', at_steps=(2, 5)))))
  due = {s: train_evals.due(config, s, total=8) for s in range(1, 9)}
  assert [s for s, names in due.items() if 'every' in names] == [3, 6, 8]
  assert [s for s, names in due.items() if 'at' in names] == [2, 5, 8]
