"""LARS, learning-rate schedule and target EMA against docs/method.md."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from detcon import optim
from tests import reference

IMAGENET_TRAIN_IMAGES = 1_281_167


def test_warmup_and_total_steps_paper_numbers():
  # 1000 * 1281167 // 4096 = 312784 (1281167000 / 4096 = 312784.9);
  # 10 * 1281167 // 4096 = 3127.
  assert optim.warmup_and_total_steps(1000, 4096, IMAGENET_TRAIN_IMAGES) == (
      3127, 312784)


@pytest.mark.parametrize('epochs,batch,expected', [
    (300, 4096, (938, 93835)),
    (100, 256, (5004, 500455)),
    (50, 4096, (0, 15639)),  # Fewer than 100 epochs: no warm-up.
    (1, 4, (0, 320291)),
])
def test_warmup_and_total_steps_other(epochs, batch, expected):
  warmup, total = optim.warmup_and_total_steps(epochs, batch,
                                               IMAGENET_TRAIN_IMAGES)
  assert (warmup, total) == expected
  assert isinstance(warmup, int) and isinstance(total, int)


def _lr(step, **kwargs):
  return float(optim.learning_rate_schedule(step, **kwargs))


PAPER = dict(batch_size=4096, total_steps=312784, warmup_steps=3127)


def test_learning_rate_landmarks():
  peak = 0.2 * 4096 / 256
  assert peak == 3.2
  assert _lr(0, **PAPER) == 0.0
  np.testing.assert_allclose(_lr(3127, **PAPER), peak, rtol=1e-6)
  np.testing.assert_allclose(_lr(312784, **PAPER), 0.0, atol=1e-6)
  # Middle of the warm-up and middle of the decay: half the peak.
  np.testing.assert_allclose(_lr(3127 / 2, **PAPER), peak / 2, rtol=1e-6)
  middle = 3127 + (312784 - 3127) // 2
  np.testing.assert_allclose(_lr(middle, **PAPER), peak / 2, rtol=1e-4)
  # A quarter into the decay: peak (1 + cos(pi / 4)) / 2.
  quarter = 3127 + (312784 - 3127) / 4
  np.testing.assert_allclose(_lr(quarter, **PAPER),
                             peak * (1 + math.sqrt(0.5)) / 2, rtol=1e-5)


@pytest.mark.parametrize('step', [1, 17, 1000, 3126, 3128, 50000, 200000,
                                  312784])
def test_learning_rate_matches_reference(step):
  np.testing.assert_allclose(
      _lr(step, **PAPER), reference.learning_rate(step, **PAPER), rtol=1e-5,
      atol=1e-7)


def test_learning_rate_traced_int_step_and_base_rate():
  kwargs = dict(batch_size=512, total_steps=100, warmup_steps=10,
                base_learning_rate=0.3)
  steps = jnp.arange(101, dtype=jnp.int32)
  fast = jax.jit(jax.vmap(
      lambda s: optim.learning_rate_schedule(s, **kwargs)))(steps)
  expected = [reference.learning_rate(s, **kwargs) for s in range(101)]
  np.testing.assert_allclose(np.asarray(fast), expected, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(float(fast[10]), 0.3 * 512 / 256, rtol=1e-6)


def test_learning_rate_without_warmup():
  kwargs = dict(batch_size=256, total_steps=40, warmup_steps=0)
  np.testing.assert_allclose(_lr(0, **kwargs), 0.2, rtol=1e-6)
  np.testing.assert_allclose(_lr(20, **kwargs), 0.1, rtol=1e-5)
  np.testing.assert_allclose(_lr(40, **kwargs), 0.0, atol=1e-7)


def test_target_ema_landmarks():
  np.testing.assert_allclose(float(optim.target_ema(0, 1000)), 0.996,
                             rtol=1e-7)
  np.testing.assert_allclose(float(optim.target_ema(500, 1000)), 0.998,
                             rtol=1e-7)
  np.testing.assert_allclose(float(optim.target_ema(1000, 1000)), 1.0,
                             rtol=1e-7)
  np.testing.assert_allclose(float(optim.target_ema(0, 10, base_ema=0.99)),
                             0.99, rtol=1e-7)


def test_target_ema_matches_reference():
  steps = jnp.array([0, 1, 77, 1000, 156392, 250000, 312784], jnp.int32)
  fast = jax.jit(lambda s: optim.target_ema(s, 312784))(steps)
  expected = [reference.target_ema(int(s), 312784) for s in steps]
  np.testing.assert_allclose(np.asarray(fast), expected, rtol=1e-6)


def _params_and_grads(seed, num_steps):
  rng = np.random.default_rng(seed)

  def tree(scale_w=1.0):
    return {
        'linear': {'w': rng.normal(size=(4, 3)) * scale_w,
                   'b': rng.normal(size=(3,))},
        'batchnorm': {'scale': 1 + rng.normal(size=(3,)) * 0.1,
                      'offset': rng.normal(size=(3,))},
        'conv': {'w': rng.normal(size=(2, 2, 3, 2)) * scale_w},
        'zero_init': {'w': np.zeros((3, 2))},  # ||w|| = 0: trust ratio 1.
        'dead': {'w': np.zeros((2,))},  # ||w|| = ||g|| = 0.
    }

  params = tree()
  params['zero_init']['w'] = np.zeros((3, 2))
  params['dead']['w'] = np.zeros((2,))
  grads = []
  for _ in range(num_steps):
    g = tree(scale_w=0.01)
    g['dead']['w'] = np.zeros((2,))
    grads.append(g)
  to32 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float32), t)
  return to32(params), [to32(g) for g in grads]


def _run_reference(params, grads, lrs):
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  buffers = jax.tree.map(np.zeros_like, params)
  all_updates = []
  for g, lr in zip(grads, lrs, strict=True):
    updates, buffers = reference.lars_step(params, g, buffers, lr)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    all_updates.append(updates)
  return params, all_updates


def _run_fast(opt, params, grads):
  state = opt.init(params)
  update = jax.jit(opt.update)
  all_updates = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    all_updates.append(updates)
  return params, all_updates


def _assert_trees_close(fast, expected, rtol=1e-5, atol=1e-10):
  for module in expected:
    for name in expected[module]:
      np.testing.assert_allclose(np.asarray(fast[module][name]),
                                 expected[module][name], rtol=rtol, atol=atol,
                                 err_msg=f'{module}/{name}')


def test_lars_step_varying_schedule_matches_reference():
  lrs = [0.5, 2.0, 0.1]
  params, grads = _params_and_grads(0, len(lrs))
  schedule = lambda count: jnp.asarray(lrs, jnp.float32)[count]
  fast_params, fast_updates = _run_fast(optim.lars(schedule), params, grads)
  ref_params, ref_updates = _run_reference(params, grads, lrs)
  for fast, expected in zip(fast_updates, ref_updates, strict=True):
    _assert_trees_close(fast, expected)
  _assert_trees_close(fast_params, ref_params, rtol=1e-6)
  # The zero-norm parameters: ratio 1 (plain momentum SGD), and no NaN.
  first = np.asarray(fast_updates[0]['zero_init']['w'])
  np.testing.assert_allclose(first, -0.5 * grads[0]['zero_init']['w'],
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(fast_params['dead']['w']), 0.0)


def test_lars_constant_learning_rate_matches_reference():
  params, grads = _params_and_grads(1, 2)
  fast_params, fast_updates = _run_fast(optim.lars(0.7), params, grads)
  ref_params, ref_updates = _run_reference(params, grads, [0.7, 0.7])
  for fast, expected in zip(fast_updates, ref_updates, strict=True):
    _assert_trees_close(fast, expected)
  _assert_trees_close(fast_params, ref_params, rtol=1e-6)


def test_lars_exclusions_matter():
  """Biases and BatchNorm params step by -lr x g; weights are rescaled."""
  params, grads = _params_and_grads(2, 1)
  _, (updates,) = _run_fast(optim.lars(1.0), params, grads)
  for module, name in [('linear', 'b'), ('batchnorm', 'scale'),
                       ('batchnorm', 'offset')]:
    np.testing.assert_allclose(np.asarray(updates[module][name]),
                               -grads[0][module][name], rtol=1e-6)
  # A weight: -(eta ||w|| / ||g + wd w||) (g + wd w).
  w = params['linear']['w'].astype(np.float64)
  g = grads[0]['linear']['w'] + 1.5e-6 * w
  expected = -1e-3 * np.linalg.norm(w) / np.linalg.norm(g) * g
  np.testing.assert_allclose(np.asarray(updates['linear']['w']), expected,
                             rtol=1e-5)


def test_warmup_epochs_divisor_sets_the_warmup():
  assert optim.warmup_and_total_steps(1000, 4096, IMAGENET_TRAIN_IMAGES) == (
      optim.warmup_and_total_steps(1000, 4096, IMAGENET_TRAIN_IMAGES, 100))
  warmup, total = optim.warmup_and_total_steps(100, 10, 1000, 20)
  assert (warmup, total) == (5 * 1000 // 10, 100 * 1000 // 10)
  with pytest.raises(ValueError, match='warmup_epochs_divisor=0'):
    optim.warmup_and_total_steps(100, 10, 1000, 0)
