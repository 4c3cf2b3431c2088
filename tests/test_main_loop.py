"""End to end: what a run writes, multi-process and cluster runs, the
command's errors and help (resuming: test_exact_resume)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from detcon import checkpoint
from detcon import main_loop as main_loop_lib
from detcon.configs import detcon_b
from tests.common import (
  PRETRAINED_STEPS,
  REPO,
  TINY,
  free_port,
  last_json,
  main_loop,
  python,
)


def test_a_run_logs_its_start_and_saves_config_and_tensorboard(
    pretrained_run):
  """What one run writes (conftest's shared run). Resuming from it is
  checked in test_exact_resume: a resumed run ends bitwise where an
  uninterrupted one ends."""
  ckpt, stderr = pretrained_run
  assert 'starting from step 0' in stderr
  assert 'Counted 12 training records' in stderr
  saved = checkpoint.restore_latest(ckpt)
  assert saved['step'] == PRETRAINED_STEPS
  assert saved['config'].model.encoder == 'ResNet18'
  assert saved['config'].model.width_multiplier == 0.25
  assert os.listdir(os.path.join(ckpt, 'tensorboard'))


@pytest.fixture(scope='module')
def mock_step():
  """One step on mock data, with the bar and the original's worker flags.

  Returns the finished process, its output decoded with its '\\r' kept.
  """
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.main_loop', *TINY,
       # One step from the epochs (--max_steps=0, its default): the same
       # schedule as --max_steps=1.
       '--config.mock_data=True', '--pretrain_epochs=1',
       '--num_train_images=4', '--progress_bar=on',
       '--worker_mode=train', '--worker_tpu_driver=local'],
      cwd=REPO, capture_output=True, timeout=900)
  result.stdout, result.stderr = (result.stdout.decode(),
                                  result.stderr.decode())
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_two_processes_equal_one_process(tmp_path, mock_step):
  """Two CPU processes on loopback vs one, same global (mock) batch."""
  args = ('-m', 'detcon.main_loop', *TINY, '--config.mock_data=True',
          '--max_steps=1')
  address = f'localhost:{free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, *args, f'--coordinator_address={address}',
       '--num_processes=2', f'--process_id={i}',
       f'--checkpoint_dir={tmp_path / "multi"}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert 'over 2 devices in 2 processes' in outputs[0][1]
  want = last_json(mock_step)  # The bar and worker flags change nothing.
  for out, _ in outputs:
    got = json.loads(out.strip().splitlines()[-1])
    for key in ('loss', 'repr_loss', 'classif_loss'):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
  # One checkpoint, written once, readable.
  assert checkpoint.restore_latest(str(tmp_path / 'multi'))['step'] == 1


def slurm_env(task, tasks, port):
  """The variables SLURM sets for task `task` of an srun step on this host.

  Those JAX's SLURM detection reads; the coordinator's port, which JAX would
  derive from the job id, is pinned to a free one. Other cluster variables
  of the test's own environment are dropped.
  """
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'OMPI_', 'JAX_COORDINATOR'))}
  return dict(env, SLURM_JOB_ID='4242', SLURM_NTASKS=str(tasks),
              SLURM_PROCID=str(task), SLURM_LOCALID=str(task),
              SLURM_STEP_NODELIST='localhost', SLURM_STEP_NUM_NODES='1',
              JAX_COORDINATOR_PORT=str(port))


def test_slurm_tasks_form_one_run_without_flags(tmp_path, mock_step):
  """Two srun-style tasks, no distributed flags: one run, as one process."""
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'detcon.main_loop', *TINY,
       '--config.mock_data=True', '--max_steps=1',
       f'--checkpoint_dir={tmp_path / "slurm"}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=slurm_env(i, 2, port)) for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outputs, strict=True)):
    assert p.returncode == 0, err[-3000:]
    assert (f"Run formed by JAX's SlurmCluster detection: process {i} of 2, "
            '1 local cpu devices of 2 in all.') in err
    assert 'over 2 devices in 2 processes' in err
  want = last_json(mock_step)
  for out, _ in outputs:
    got = json.loads(out.strip().splitlines()[-1])
    for key in ('loss', 'repr_loss', 'classif_loss'):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
  assert checkpoint.restore_latest(str(tmp_path / 'slurm'))['step'] == 1


def test_cluster_detection_off_runs_alone_under_slurm():
  result = main_loop('--config.mock_data=True', '--max_steps=1',
                     '--cluster_detection=off',
                     env=slurm_env(0, 2, free_port()))
  assert ('Run formed by one process (cluster detection off '
          '(--cluster_detection=off)') in result.stderr
  assert 'over 1 devices in 1 processes' in result.stderr


def test_directory_without_train_shards(tmp_path):
  (tmp_path / 'notes.txt').write_text('not a shard')
  result = python('-m', 'detcon.main_loop', *TINY,
                  f'--dataset_directory={tmp_path}')
  assert result.returncode != 0
  assert 'train-' in result.stderr and 'Traceback' not in result.stderr


def test_bad_shard_names(tmp_path):
  (tmp_path / 'train-3-of-7').write_bytes(b'')
  result = python('-m', 'detcon.main_loop', *TINY,
                  f'--dataset_directory={tmp_path}')
  assert result.returncode != 0
  assert 'train-3-of-7' in result.stderr and 'Traceback' not in result.stderr


def test_help_documents_flags_config_fields_and_max_steps_0():
  result = python('-m', 'detcon.main_loop', '--help')  # absl exits with 1.
  for flag in ('dataset_directory', 'pretrain_epochs', 'batch_size',
               'log_tensors_interval', 'is_test', 'checkpoint_dir', 'encoder',
               'image_size', 'max_steps', 'save_checkpoint_interval', 'dtype',
               'num_train_images', 'coordinator_address', 'num_processes',
               'process_id', 'config'):
    assert f'--{flag}' in result.stdout, flag
  for flag in ('--progress_bar: <auto|on|off>', '--worker_mode',
               '--worker_tpu_driver', '--cluster_detection: <auto|off>',
               '--[no]library_logs', '0: as many as --pretrain_epochs takes'):
    assert flag in ' '.join(result.stdout.split()), flag
  # Every field of the default config, with its default.
  config = detcon_b.get_config()
  fields = {'objective': "'detcon_b'", 'model.encoder': "'ResNet50'",
            'init_from': "''", 'num_classes': '1000', 'masks': "'fh'",
            'optimizer.base_learning_rate': '0.2'}
  for name, default in fields.items():
    assert f'--config.{name}  default: {default}' in result.stdout, name
  flat = main_loop_lib.config_fields_help(config)
  assert len(flat) > 40 and all(line in result.stdout for line in flat)


def test_config_typo_is_one_line_with_the_suggestion():
  result = python('-m', 'detcon.main_loop', '--config.objetive=byol')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip() == (
      "detcon.main_loop: error: --config.objetive: no such config field; "
      "did you mean 'objective' instead of 'objetive'? (`--help` lists the "
      'fields)')


def test_unwritable_checkpoint_dir_is_one_line(tmp_path):
  blocker = tmp_path / 'a-file'
  blocker.write_text('')
  result = python('-m', 'detcon.main_loop', *TINY, '--config.mock_data=True',
                  f'--checkpoint_dir={blocker / "ckpt"}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert (f'detcon.main_loop: error: --checkpoint_dir={blocker / "ckpt"} '
          'cannot be written (Not a directory)') in result.stderr


def test_progress_bar_and_the_original_worker_flags(mock_step):
  err = mock_step.stderr
  assert ('for 1 steps (--max_steps=0: 1 epochs (--pretrain_epochs) of the '
          'training images; 0 warm-up)') in err
  assert ('--worker_mode=train --worker_tpu_driver=local: flags of the '
          'original (jaxline)') in err and 'no effect here' in err
  states = err.replace('\r', '\n').splitlines()
  final = [s for s in states if '| 1/1 [' in s]
  assert final[-1].startswith('100%|')
  assert re.search(r'(step/s|s/step), loss=\d+\.\d{4}, [\d.]+ images/s\]',
                   final[-1])
  assert last_json(mock_step)['loss'] == pytest.approx(
      float(re.search(r'loss=([\d.]+)', final[-1]).group(1)), abs=1e-4)
  # The metric line stays, on a line of its own: the bar's state is
  # overwritten with spaces and the line starts after a '\r'.
  (line,) = [x for x in err.split('\n') if '] step ' in x]
  *_, state, blank, text = line.split('\r')
  assert '| 0/1 [' in state
  assert not blank.strip() and len(blank) >= len(state.rstrip())
  assert text.startswith('I') and 'main_loop.py:' in text
