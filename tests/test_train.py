"""The train step: data-parallel equivalence, learning, and clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from detcon import train
from detcon.configs import detcon_b

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(objective='detcon_b'):
  """ResNet18 at 64x64 (2x2 cells) with small heads: fast on a CPU."""
  c = detcon_b.get_config()
  c.objective = objective
  c.model.encoder, c.image_size, c.num_classes = 'ResNet18', 64, 4
  c.model.projector_hidden_size = c.model.predictor_hidden_size = 64
  c.model.projector_output_size = 32
  c.detcon.num_samples = 4
  return c


def fixed_batch(batch_size, image_size=64, seed=0, num_ids=5):
  """A `[1, B, ...]` batch of random images with 4x4-block masks."""
  rng = np.random.default_rng(seed)
  s = image_size

  def masks():
    coarse = rng.integers(0, num_ids, (1, batch_size, 4, 4))
    return np.kron(coarse, np.ones((s // 4, s // 4), np.int64))[
        ..., None].astype(np.int32)

  return dict(view1=rng.random((1, batch_size, s, s, 3), np.float32),
              view2=rng.random((1, batch_size, s, s, 3), np.float32),
              fh_segmentations1=masks(), fh_segmentations2=masks(),
              labels=rng.integers(0, 4, (1, batch_size)).astype(np.int32))


def run_subprocess(code, env_extra=None, args=()):
  env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
  return subprocess.run([sys.executable, *args] if not code else
                        [sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def test_two_devices_equal_one_device():
  """One step on a global batch: same loss and parameters on 1 and 2 devices."""
  code = textwrap.dedent('''
      import jax, numpy as np
      from jax.sharding import Mesh
      from detcon import train
      from tests.test_train import tiny_config, fixed_batch
      assert jax.device_count() == 2
      config = tiny_config()
      config.batch_size = 4
      optimizer, schedule = train.make_optimizer(config, 10, 0)
      init = train.init_state(config, jax.random.PRNGKey(0), optimizer)
      batch = fixed_batch(4)
      out = {}
      for n in (1, 2):
        mesh = Mesh(np.array(jax.devices()[:n]), (train.AXIS,))
        step = train.make_train_step(config, mesh, optimizer, schedule, 10)
        local = {k: v.reshape(n, 4 // n, *v.shape[2:])
                 for k, v in batch.items()}
        state = train.replicate(jax.tree.map(np.array, init), mesh)
        state, metrics = step(state, train.shard_batch(local, mesh))
        out[n] = (jax.device_get(metrics), jax.device_get(state))
      (m1, s1), (m2, s2) = out[1], out[2]
      for k in ('loss', 'repr_loss', 'classif_loss'):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5)
      # Float32 reduction order only: norm-relative error, with an absolute
      # floor for leaves that are noise around 0 (a Linear bias before a
      # BatchNorm has an exactly-zero gradient).
      for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = np.linalg.norm(a - b)
        assert err <= 1e-4 * np.linalg.norm(a) + 1e-6 * np.sqrt(a.size), err
      np.testing.assert_raises(AssertionError, np.testing.assert_allclose,
                               s1.params['encoder/initial_conv']['w'],
                               init.params['encoder/initial_conv']['w'])
      print('EQUAL', float(m1['loss']), float(m2['loss']))
  ''')
  result = run_subprocess(code, {
      'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'EQUAL' in result.stdout


@pytest.mark.parametrize('objective', ['detcon_b', 'byol'])
def test_steps_on_fixed_batch_lower_the_loss(objective):
  config = tiny_config(objective)
  config.batch_size = 8
  config.optimizer.base_learning_rate = 20.0
  for name in ('color_jitter_prob', 'grayscale_prob', 'blur_prob',
               'solarize_prob'):
    config.augment[name] = (0.0, 0.0)
  optimizer, schedule = train.make_optimizer(config, 100, 0)
  mesh = train.make_mesh()
  state = train.replicate(
      train.init_state(config, jax.random.PRNGKey(0), optimizer), mesh)
  step = train.make_train_step(config, mesh, optimizer, schedule, 100)
  batch = train.shard_batch(fixed_batch(8, num_ids=2), mesh)
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  assert int(state.step) == 10


def test_train_state_holds_target_subset():
  config = tiny_config()
  optimizer, _ = train.make_optimizer(config, 10, 1)
  state = train.init_state(config, jax.random.PRNGKey(0), optimizer)
  tops = {name.split('/')[0] for name in state.target_params}
  assert tops == {'encoder', 'projector'}
  assert {'predictor', 'classifier'} <= {n.split('/')[0] for n in state.params}
  for name, p in state.target_params.items():  # Target starts as online.
    for k in p:
      np.testing.assert_array_equal(p[k], state.params[name][k])


def main_loop(*args, env_extra=None):
  return run_subprocess(None, env_extra, ('-m', 'detcon.main_loop', *args))


def test_missing_dataset_directory_says_how_to_make_it(tmp_path):
  result = main_loop(f'--dataset_directory={tmp_path / "nope"}',
                     '--encoder=ResNet18', '--image_size=64', '--batch_size=2')
  assert result.returncode != 0
  assert 'generate_fh_masks_for_imagenet.py' in result.stderr
  assert 'Traceback' not in result.stderr


def test_batch_size_must_divide_over_devices():
  two_devices = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  result = main_loop('--config.mock_data=True', '--batch_size=3',
                     '--encoder=ResNet18', '--image_size=64',
                     env_extra=two_devices)
  assert result.returncode != 0
  assert 'does not divide over the 2 devices' in result.stderr


@pytest.mark.parametrize('flag,message', [
    ('--encoder=ResNet999', 'unknown encoder'),
    ('--image_size=100', 'multiple of 32'),
])
def test_bad_settings_fail_clearly(flag, message):
  result = main_loop('--config.mock_data=True', '--batch_size=2', flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_help_documents_every_flag():
  result = main_loop('--helpfull')
  for flag in ('dataset_directory', 'pretrain_epochs', 'batch_size',
               'log_tensors_interval', 'is_test', 'checkpoint_dir', 'encoder',
               'image_size', 'max_steps', 'save_checkpoint_interval', 'dtype',
               'num_train_images', 'coordinator_address', 'num_processes',
               'process_id', 'config'):
    assert f'--{flag}' in result.stdout, flag


def test_mock_run_flags_bfloat16_epochs_and_periodic_saves(tmp_path):
  """Steps come from epochs x images / batch; a save every step; bf16."""
  ckpt = tmp_path / 'ckpt'
  result = main_loop('--config.mock_data=True', '--batch_size=2',
                     '--pretrain_epochs=1', '--num_train_images=4',
                     '--encoder=ResNet18', '--image_size=64',
                     '--dtype=bfloat16',
                     f'--checkpoint_dir={ckpt}', '--save_checkpoint_interval=0',
                     '--config.model.projector_hidden_size=64',
                     '--config.model.predictor_hidden_size=64')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'for 2 steps' in result.stderr
  assert 'Done: steps 0 -> 2' in result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('loss', 'repr_loss', 'classif_loss', 'lr', 'tau', 'top1',
              'images_per_s', 'step_time_s'):
    assert np.isfinite(metrics[key]), key
  assert sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) == [1, 2]
