"""DetCon and BYOL losses against the slow reference of docs/method.md."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detcon import losses
from tests import reference

RTOL = 1e-5
ATOL = 1e-5


def _random_case(seed, batch, num_masks, dim, num_ids):
  """Random vectors (not normalised) and ids drawn from range(num_ids)."""
  rng = np.random.default_rng(seed)
  vecs = [rng.normal(size=(batch, num_masks, dim)).astype(np.float32) *
          rng.uniform(0.5, 3.0) for _ in range(4)]
  ids = [rng.integers(0, num_ids, size=(batch, num_masks)).astype(np.int32)
         for _ in range(2)]
  # In training the online and target ids of a view coincide.
  return vecs, [ids[0], ids[1], ids[0], ids[1]]


def _fast(vecs, ids, **kwargs):
  args = [jnp.asarray(v) for v in vecs] + [jnp.asarray(i) for i in ids]
  return float(losses.byol_nce_detcon(*args, **kwargs))


def _slow(vecs, ids, **kwargs):
  return reference.byol_nce_detcon(*vecs, *ids, **kwargs)


def test_reference_matches_hand_computed_value():
  # Orthogonal directions make every logit 0 or 1/tau; vectors are scaled so
  # that normalisation matters. See the comment in the expected value.
  e1, e2, e3 = np.eye(3, dtype=np.float32)
  pred1 = np.array([[3 * e1, 2 * e2]])
  pred2 = np.array([[0.5 * e1, 4 * e1]])
  target1 = np.array([[7 * e1, 1.5 * e2]])
  target2 = np.array([[2 * e1, 5 * e3]])
  pind1 = tind1 = np.array([[0, 1]], np.int32)
  pind2 = tind2 = np.array([[0, 0]], np.int32)
  # View 1 -> 2. Mask (0, 0) id 0: cross logits [10, 0] both positive, own
  # t1 id 1 is a negative with logit 0; CE = log(e^10 + 2) - 5, weight 1.
  # Mask (0, 1) id 1 has no positive in view 2: weight 0. Mean over 2 masks.
  # View 2 -> 1. Both masks id 0 (weight 1/2 each): cross logits [10, 0],
  # first positive; own view all id 0, removed; CE = log(1 + e^-10).
  expected = ((math.log(math.exp(10) + 2) - 5) / 2 +
              2 * 0.5 * math.log(1 + math.exp(-10)) / 2)
  vecs = [pred1, pred2, target1, target2]
  ids = [pind1, pind2, tind1, tind2]
  np.testing.assert_allclose(_slow(vecs, ids), expected, rtol=1e-12)
  np.testing.assert_allclose(_fast(vecs, ids), expected, rtol=RTOL)


@pytest.mark.parametrize('seed,batch,num_masks,num_ids', [
    (0, 3, 4, 3),
    (1, 4, 8, 5),
    (2, 4, 6, 12),  # Many ids: most objects absent from the other view.
    (3, 2, 8, 2),   # Few ids: many repeats within an image.
])
def test_detcon_matches_reference(seed, batch, num_masks, num_ids):
  vecs, ids = _random_case(seed, batch, num_masks, 16, num_ids)
  expected = _slow(vecs, ids)
  assert expected > 0
  np.testing.assert_allclose(_fast(vecs, ids), expected, rtol=RTOL, atol=ATOL)


def test_detcon_distinct_online_and_target_ids():
  rng = np.random.default_rng(7)
  vecs, _ = _random_case(7, 3, 6, 8, 4)
  ids = [rng.integers(0, 4, size=(3, 6)).astype(np.int32) for _ in range(4)]
  assert not np.array_equal(ids[0], ids[2])
  np.testing.assert_allclose(_fast(vecs, ids), _slow(vecs, ids), rtol=RTOL,
                             atol=ATOL)


def test_detcon_all_positive_identical_vectors():
  # One image, every mask the same object, all target vectors equal: each of
  # the K predictions has K positives of equal logit and no other candidate
  # (the own view is removed), CE = log K, weight 1/K, averaged over K.
  num_masks = 4
  rng = np.random.default_rng(3)
  vecs = [rng.normal(size=(1, num_masks, 8)).astype(np.float32)
          for _ in range(2)]
  target = np.tile(rng.normal(size=(1, 1, 8)).astype(np.float32),
                   (1, num_masks, 1))
  vecs += [target, 2 * target]
  ids = [np.full((1, num_masks), 5, np.int32)] * 4
  expected = 2 * math.log(num_masks) / num_masks
  np.testing.assert_allclose(_slow(vecs, ids), expected, rtol=1e-12)
  np.testing.assert_allclose(_fast(vecs, ids), expected, rtol=RTOL)


def test_detcon_all_positive_several_images():
  vecs, _ = _random_case(11, 3, 5, 8, 1)
  ids = [np.zeros((3, 5), np.int32)] * 4
  np.testing.assert_allclose(_fast(vecs, ids), _slow(vecs, ids), rtol=RTOL,
                             atol=ATOL)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_detcon_one_image_one_mask_is_zero(seed):
  vecs, ids = _random_case(seed, 1, 1, 32, 1)
  assert _slow(vecs, ids) == 0.0
  np.testing.assert_allclose(_fast(vecs, ids), 0.0, atol=1e-6)
  np.testing.assert_allclose(_fast(vecs, ids, temperature=0.03), 0.0,
                             atol=1e-6)


def test_detcon_no_positive_anywhere_is_zero():
  vecs, _ = _random_case(5, 2, 4, 8, 1)
  view1 = np.array([[0, 1, 0, 1], [2, 2, 3, 3]], np.int32)
  view2 = view1 + 10
  ids = [view1, view2, view1, view2]
  assert _slow(vecs, ids) == 0.0
  np.testing.assert_allclose(_fast(vecs, ids), 0.0, atol=1e-6)


@pytest.mark.parametrize('temperature', [0.05, 0.5])
def test_detcon_temperature(temperature):
  vecs, ids = _random_case(9, 3, 6, 8, 3)
  expected = _slow(vecs, ids, temperature=temperature)
  assert abs(expected - _slow(vecs, ids)) > 1e-2  # Temperature matters.
  np.testing.assert_allclose(_fast(vecs, ids, temperature=temperature),
                             expected, rtol=RTOL, atol=ATOL)


def test_detcon_jit_matches_reference():
  vecs, ids = _random_case(4, 3, 8, 16, 4)
  fast = jax.jit(losses.byol_nce_detcon)(*vecs, *ids)
  np.testing.assert_allclose(float(fast), _slow(vecs, ids), rtol=RTOL,
                             atol=ATOL)


def test_detcon_gradient_matches_finite_differences_of_reference():
  vecs, ids = _random_case(6, 2, 4, 5, 3)
  grads = jax.grad(lambda p1, p2: losses.byol_nce_detcon(
      p1, p2, *vecs[2:], *ids), argnums=(0, 1))(vecs[0], vecs[1])
  grads = [np.asarray(g) for g in grads]
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.abs(grads[0]).max() > 1e-3
  base = [v.astype(np.float64) for v in vecs]
  eps = 1e-6
  for which in (0, 1):
    for index in [(0, 0, 0), (0, 2, 3), (1, 1, 4), (1, 3, 1)]:
      plus = [v.copy() for v in base]
      minus = [v.copy() for v in base]
      plus[which][index] += eps
      minus[which][index] -= eps
      numeric = (_slow(plus, ids) - _slow(minus, ids)) / (2 * eps)
      np.testing.assert_allclose(grads[which][index], numeric, rtol=1e-3,
                                 atol=1e-4)


@pytest.mark.parametrize('num_devices,local_batch', [(2, 2), (3, 1)])
def test_detcon_gathered_across_devices(num_devices, local_batch):
  """vmap with an axis name stands in for pmap: all_gather works the same."""
  batch = num_devices * local_batch
  vecs, ids = _random_case(13, batch, 4, 8, 3)

  def per_device(x):
    return x.reshape((num_devices, local_batch) + x.shape[1:])

  fast = jax.vmap(
      lambda *args: losses.byol_nce_detcon(*args, axis_name='i'),
      axis_name='i')(*[per_device(jnp.asarray(a)) for a in vecs + ids])
  fast = np.asarray(fast)
  assert fast.shape == (num_devices,)
  # Each device: its own predictions against the targets of all devices.
  for device in range(num_devices):
    local = slice(device * local_batch, (device + 1) * local_batch)
    expected = reference.byol_nce_detcon(
        vecs[0][local], vecs[1][local], vecs[2], vecs[3], ids[0][local],
        ids[1][local], ids[2], ids[3], image_offset=device * local_batch)
    np.testing.assert_allclose(fast[device], expected, rtol=RTOL, atol=ATOL)
  # The mean over devices (what pmean gives) is the whole-batch loss.
  whole = _slow(vecs, ids)
  np.testing.assert_allclose(fast.mean(), whole, rtol=RTOL, atol=ATOL)
  # And the gathering matters: without it each device would see fewer
  # negatives and a different value.
  local_only = np.mean([
      _slow([v[d * local_batch:(d + 1) * local_batch] for v in vecs],
            [i[d * local_batch:(d + 1) * local_batch] for i in ids])
      for d in range(num_devices)])
  assert abs(local_only - whole) > 1e-3


def test_byol_regression_matches_reference():
  rng = np.random.default_rng(0)
  vecs = [rng.normal(size=(5, 12)).astype(np.float32) * 3 for _ in range(4)]
  expected = reference.byol_regression(*vecs)
  fast = float(losses.byol_regression(*[jnp.asarray(v) for v in vecs]))
  np.testing.assert_allclose(fast, expected, rtol=RTOL, atol=ATOL)


def test_byol_regression_extremes():
  rng = np.random.default_rng(1)
  p = rng.normal(size=(3, 6)).astype(np.float32)
  # Targets parallel to the predictions of the other view: 0.
  np.testing.assert_allclose(
      float(losses.byol_regression(p, 2 * p, 4 * p, 0.5 * p)), 0.0, atol=1e-6)
  # Antiparallel: (2 + 2) + (2 + 2) = 8.
  np.testing.assert_allclose(
      float(losses.byol_regression(p, p, -p, -3 * p)), 8.0, rtol=1e-6)
  # Only the cross pairs count: p1 with t2 and p2 with t1.
  q = rng.normal(size=(3, 6)).astype(np.float32)
  np.testing.assert_allclose(
      float(losses.byol_regression(p, q, q, p)), 0.0, atol=1e-6)


# DetCon-S and SimCLR: the same function with the online projections of both
# views as predictions and candidates (docs/method.md, Variants).


def _detcon_s(z1, z2, ids1, ids2, **kwargs):
  return losses.byol_nce_detcon(z1, z2, z1, z2, ids1, ids2, ids1, ids2,
                                **kwargs)


@pytest.mark.parametrize('seed,batch,num_masks,num_ids', [
    (0, 3, 4, 3),
    (1, 2, 8, 2),   # Many repeats within an image.
    (2, 4, 5, 12),  # Most objects absent from the other view.
])
def test_detcon_s_matches_reference(seed, batch, num_masks, num_ids):
  vecs, ids = _random_case(seed, batch, num_masks, 8, num_ids)
  expected = reference.detcon_s(vecs[0], vecs[1], ids[0], ids[1])
  assert expected > 0
  fast = float(_detcon_s(vecs[0], vecs[1], ids[0], ids[1]))
  np.testing.assert_allclose(fast, expected, rtol=RTOL, atol=ATOL)
  # Not DetCon-B's value on other candidates: the candidates matter.
  assert abs(_fast(vecs, ids) - expected) > 1e-2


def test_simclr_is_nt_xent():
  """One global mask per image (all ids 0) gives SimCLR's NT-Xent."""
  rng = np.random.default_rng(4)
  z1, z2 = (rng.normal(size=(5, 1, 16)).astype(np.float32) for _ in range(2))
  zeros = np.zeros((5, 1), np.int32)
  fast = float(_detcon_s(z1, z2, zeros, zeros))
  # Summed over both views' anchors, as SimCLR's own code (loss_a + loss_b):
  # twice the paper's mean over the 2N anchors.
  np.testing.assert_allclose(fast, 2 * reference.nt_xent(z1[:, 0], z2[:, 0]),
                             rtol=RTOL)
  np.testing.assert_allclose(
      fast, reference.detcon_s(z1, z2, zeros, zeros), rtol=RTOL)


def test_detcon_s_gradient_through_both_roles_matches_reference():
  vecs, ids = _random_case(8, 2, 3, 4, 2)
  z1, z2 = vecs[0], vecs[1]
  grads = jax.grad(lambda a, b: _detcon_s(a, b, ids[0], ids[1]),
                   argnums=(0, 1))(z1, z2)
  base = [z1.astype(np.float64), z2.astype(np.float64)]
  eps = 1e-6
  for which in (0, 1):
    for index in [(0, 0, 0), (0, 2, 3), (1, 1, 2)]:
      plus = [v.copy() for v in base]
      minus = [v.copy() for v in base]
      plus[which][index] += eps
      minus[which][index] -= eps
      numeric = (reference.detcon_s(*plus, ids[0], ids[1]) -
                 reference.detcon_s(*minus, ids[0], ids[1])) / (2 * eps)
      np.testing.assert_allclose(grads[which][index], numeric, rtol=1e-3,
                                 atol=1e-4)
  # The candidates' share of the gradient is real: cut it and it changes.
  predictions_only = jax.grad(lambda a: losses.byol_nce_detcon(
      a, z2, jax.lax.stop_gradient(a), z2, *ids))(z1)
  assert np.abs(predictions_only - grads[0]).max() > 1e-3


def test_detcon_s_gathered_across_devices_value_and_gradient():
  """Per-device values and the gradient of their mean, with gathering."""
  num_devices, local_batch = 2, 2
  batch = num_devices * local_batch
  vecs, ids = _random_case(14, batch, 4, 8, 3)
  z1, z2 = vecs[0], vecs[1]

  def per_device(x):
    return x.reshape((num_devices, local_batch) + x.shape[1:])

  def gathered(a, b):
    values = jax.vmap(
        lambda *args: _detcon_s(*args, axis_name='i'), axis_name='i')(
            per_device(a), per_device(b), per_device(ids[0]),
            per_device(ids[1]))
    return values.mean(), values

  (mean, values), grads = jax.value_and_grad(
      gathered, argnums=(0, 1), has_aux=True)(z1, z2)
  for device in range(num_devices):
    local = range(device * local_batch, (device + 1) * local_batch)
    expected = reference.detcon_s(z1, z2, ids[0], ids[1],
                                  anchor_images=local)
    np.testing.assert_allclose(values[device], expected, rtol=RTOL,
                               atol=ATOL)
  whole = reference.detcon_s(z1, z2, ids[0], ids[1])
  np.testing.assert_allclose(mean, whole, rtol=RTOL, atol=ATOL)
  whole_grads = jax.grad(lambda a, b: _detcon_s(a, b, ids[0], ids[1]),
                         argnums=(0, 1))(z1, z2)
  for got, want in zip(grads, whole_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
