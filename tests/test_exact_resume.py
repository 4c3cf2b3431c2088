"""A stopped and resumed pretraining run ends bitwise where an uninterrupted
one ends: the parameters, the data order, the crops (real records, CPU).
Two processes that stop and resume together: test_two_process_resume."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from detcon import checkpoint, main_loop
from tests.common import PRETRAINED_STEPS as STEPS
from tests.common import (
  REPO,
  assert_same_final_state,
  last_json,
  pretrain_args,
  python,
)


@pytest.fixture(scope='module')
def uninterrupted(pretrained_run):
  """The shared run: `pretrain_args` from step 0 to STEPS, never stopped."""
  ckpt, _ = pretrained_run
  return ckpt, checkpoint.restore_latest(ckpt)


def _start_and_stop(args, after_line, stop):
  """Starts a run, waits for a log line holding `after_line`, calls `stop`."""
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stderr:
    if after_line in line:
      break
  stop(proc)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_at_a_step_then_resume_equals_uninterrupted(
    records, uninterrupted, tmp_path, sig):
  ckpt = tmp_path / 'ckpt'
  status, err = _start_and_stop(pretrain_args(records['png'], ckpt),
                                '] step 2:', lambda p: p.send_signal(sig))
  assert f'{sig.name} received' in err
  assert status == main_loop.EXIT_STOPPED_EARLY, err[-3000:]
  stopped = checkpoint.restore_latest(str(ckpt))['step']
  assert 2 <= stopped < STEPS
  resumed = python(*pretrain_args(records['png'], ckpt))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {stopped}' in resumed.stderr
  assert f'for {STEPS} steps (--max_steps={STEPS};' in resumed.stderr
  assert (f'data continues at element {4 * stopped} of this process'
          in resumed.stderr)
  assert_same_final_state(ckpt, uninterrupted[1])


def test_kill_after_a_periodic_save_then_resume_equals_uninterrupted(
    records, uninterrupted, tmp_path):
  ckpt = tmp_path / 'ckpt'
  args = pretrain_args(records['png'], ckpt, '--save_checkpoint_interval=0')
  status, _ = _start_and_stop(args, '] step 3:', lambda p: p.kill())
  assert status == -signal.SIGKILL
  resumed = python(*args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step' in resumed.stderr
  assert_same_final_state(ckpt, uninterrupted[1])


def _copy(uninterrupted, tmp_path, step=STEPS):
  """A copy of the shared run's checkpoints up to `step` (it kept the last
  three): (folder, that step's folder). A copy to STEPS - 1 resumes to
  take one step with the shared run's compiled program."""
  ckpt = shutil.copytree(uninterrupted[0], tmp_path / 'ckpt')
  for later in range(step + 1, STEPS + 1):
    shutil.rmtree(os.path.join(ckpt, str(later)))
  return ckpt, os.path.join(ckpt, str(step))


def test_a_changed_input_says_what_changed_and_restarts_an_epoch(
    records, uninterrupted, tmp_path):
  ckpt, _ = _copy(uninterrupted, tmp_path)
  # Nothing left to train.
  result = python(*pretrain_args(records['png'], ckpt, '--config.seed=5',
                                 '--batch_size=8', '--config.masks=grid'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'The input differs from the checkpoint' in result.stderr
  for change in ('seed: 0 -> 5', 'process_batch: 4 -> 8',
                 'masks: fh -> grid'):
    assert change in result.stderr
  assert 'restarts at the next epoch' in result.stderr
  # The other settings that changed, in one line.
  assert "Settings changed since: batch_size: 4 -> 8" in result.stderr


def test_a_changed_network_stops_with_both_values(records, uninterrupted,
                                                  tmp_path):
  ckpt, _ = _copy(uninterrupted, tmp_path)
  result = python(*pretrain_args(records['png'], ckpt, '--encoder=ResNet34',
                                 '--config.objective=byol'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert ("--config.model.encoder: 'ResNet18' in the checkpoint, 'ResNet34' "
          'now') in result.stderr
  assert "--config.objective: 'detcon_b' in the checkpoint, 'byol' now" in (
      result.stderr)
  assert 'another --checkpoint_dir' in result.stderr
  assert '--config.init_from' in result.stderr


def test_another_dataset_is_named(records, uninterrupted, tmp_path):
  ckpt, _ = _copy(uninterrupted, tmp_path, STEPS - 1)
  # The last step again, on the original release's raw mask layout.
  result = python(*pretrain_args(records['raw'], ckpt, '--library_logs'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Done: steps {STEPS - 1} -> {STEPS}' in result.stderr
  metrics = last_json(result)
  assert np.isfinite(metrics['loss']) and metrics['repr_loss'] > 0
  assert f'/{STEPS} [' not in result.stderr  # No bar on a pipe.
  # --library_logs shows orbax's INFO lines and JAX's backend probing.
  assert 'Restoring checkpoint from' in result.stderr
  assert "Unable to initialize backend 'tpu'" in result.stderr
  # The raw layout's shards hold the same images under the same names and
  # counts: the same order continues. A folder of other shards is named.
  assert 'data continues' in result.stderr
  other = tmp_path / 'one-shard'
  other.mkdir()
  shutil.copy(os.path.join(records['png'], 'train-00000-of-00002'),
              other / 'train-00000-of-00001')
  result = python(*pretrain_args(str(other), ckpt))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Restoring checkpoint from' not in result.stderr  # Quiet default.
  assert "Unable to initialize backend 'tpu'" not in result.stderr
  assert 'train files (name:records): 2 gone' in result.stderr
  assert 'restarts at the next epoch' in result.stderr


def test_a_checkpoint_without_input_state_resumes_with_a_warning(
    records, uninterrupted, tmp_path):
  ckpt, step_dir = _copy(uninterrupted, tmp_path, STEPS - 1)
  shutil.rmtree(os.path.join(step_dir, 'input'))  # As written before.
  result = python(*pretrain_args(records['png'], ckpt))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'keeps no input position' in result.stderr
  assert 'data order restarts at the next epoch' in result.stderr
  assert f'Done: steps {STEPS - 1} -> {STEPS}' in result.stderr
