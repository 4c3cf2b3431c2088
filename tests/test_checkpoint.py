"""Checkpoints: bit-identical round trip, any topology, interrupted saves."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np

from detcon import checkpoint, train
from tests.common import tiny_config, two_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed):
  config = tiny_config()
  optimizer, _ = train.make_optimizer(config, 10, 1)
  state = train.init_state(config, jax.random.PRNGKey(seed), optimizer)
  # Non-trivial optimiser state and step, so every leaf is checked.
  state = state._replace(
      step=state.step + 7,
      opt_state=jax.tree.map(lambda x: x + 0.5, state.opt_state))
  return config, train.replicate(state, train.make_mesh())


def test_round_trip_is_bit_identical(tmp_path):
  config, state = _state(0)
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, state, config)
  manager.wait_until_finished()
  _, other = _state(1)
  restored = checkpoint.restore_latest_state(manager, other)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                  strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(restored.step) == 7
  host = checkpoint.restore_latest(str(tmp_path))
  assert host['step'] == 7 and host['config'].image_size == 64


def test_keeps_the_newest_few(tmp_path):
  config, state = _state(0)
  manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
  for step in range(4):
    checkpoint.save(manager, state._replace(step=state.step * 0 + step),
                    config)
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 3]


def test_interrupted_save_leaves_newest_complete_readable(tmp_path):
  config, state = _state(0)
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, state, config)
  manager.wait_until_finished()
  # What a process killed while writing step 9 leaves: a partial temporary
  # folder beside the complete step 7.
  partial = tmp_path / '9.orbax-checkpoint-tmp-1234567890'
  shutil.copytree(tmp_path / '7', partial)
  shutil.rmtree(partial / 'state')
  assert checkpoint.restore_latest(str(tmp_path))['step'] == 7
  fresh = checkpoint.make_manager(str(tmp_path))
  assert fresh.latest_step() == 7


def test_restore_on_host_from_two_device_checkpoint(tmp_path):
  code = textwrap.dedent(f'''
      import jax
      from detcon import checkpoint, train
      from tests.common import tiny_config
      assert jax.device_count() == 2
      config = tiny_config()
      optimizer, _ = train.make_optimizer(config, 10, 1)
      state = train.replicate(
          train.init_state(config, jax.random.PRNGKey(3), optimizer),
          train.make_mesh())
      manager = checkpoint.make_manager({str(tmp_path)!r})
      checkpoint.save(manager, state, config)
      manager.wait_until_finished()
  ''')
  env = dict(two_devices_env(), PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  host = checkpoint.restore_latest(str(tmp_path))
  config = tiny_config()
  optimizer, _ = train.make_optimizer(config, 10, 1)
  want = train.init_state(config, jax.random.PRNGKey(3), optimizer)
  for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(
      host['params']), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)
