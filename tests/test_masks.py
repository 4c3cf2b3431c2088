"""Mask cells, sampling and pooling against docs/method.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detcon import masks
from tests import reference


def _cells(mask, grid_size, **kwargs):
  out = masks.cell_mask_ids(jnp.asarray(mask, jnp.int32), grid_size, **kwargs)
  assert out.dtype == jnp.int32
  return np.asarray(out)


def test_cell_ids_majority_and_ties_by_hand():
  mask = np.array([[
      [3, 3, 7, 7],
      [1, 1, 7, 2],
      [0, 5, 9, 9],
      [5, 5, 9, 9],
  ]])
  # Cells row-major: {3, 3, 1, 1} -> tie, lower id 1; {7, 7, 7, 2} -> 7;
  # {0, 5, 5, 5} -> 5; {9, 9, 9, 9} -> 9.
  np.testing.assert_array_equal(_cells(mask, 2), [[1, 7, 5, 9]])
  np.testing.assert_array_equal(reference.cell_mask_ids(mask, 2),
                                [[1, 7, 5, 9]])


def test_cell_ids_row_major_non_square_cells():
  # 4x6 mask, grid 2: cells of 2x3 pixels; the four cells have distinct
  # majority ids so the ordering is visible.
  mask = np.array([[
      [1, 1, 0, 2, 2, 2],
      [1, 0, 0, 2, 0, 0],
      [3, 3, 3, 4, 8, 8],
      [3, 0, 0, 4, 8, 8],
  ]])
  np.testing.assert_array_equal(_cells(mask, 2), [[0, 2, 3, 8]])
  np.testing.assert_array_equal(reference.cell_mask_ids(mask, 2),
                                [[0, 2, 3, 8]])


def test_cell_ids_three_way_tie_and_many_ids():
  # 3x3 cells (grid 1 on a 3x3 mask): ids 4, 2, 6 three times each.
  mask = np.array([[[4, 2, 6], [6, 4, 2], [2, 6, 4]]])
  np.testing.assert_array_equal(_cells(mask, 1), [[2]])


@pytest.mark.parametrize('seed,size,grid,num_ids', [
    (0, 8, 4, 4),
    (1, 16, 4, 6),
    (2, 12, 3, 256),
    (3, 14, 7, 3),
])
def test_cell_ids_match_reference(seed, size, grid, num_ids):
  rng = np.random.default_rng(seed)
  mask = rng.integers(0, num_ids, size=(3, size, size))
  np.testing.assert_array_equal(_cells(mask, grid),
                                reference.cell_mask_ids(mask, grid))


def test_cell_ids_overflow_bucket():
  mask = np.array([[
      [300, 301, 5, 5],
      [5, 7, 300, 1000],
      [300, 5, 999, 999],
      [5, 301, 999, 999],
  ]])
  # Cell 0: {300, 301, 5, 7} -> overflow bucket 2 > 1 each -> 256.
  # Cell 1: {5, 5, 300, 1000} -> tie 2/2, the real (lower) id 5 wins.
  # Cell 2: {300, 5, 5, 301} -> tie, 5. Cell 3: all overflow -> 256.
  np.testing.assert_array_equal(_cells(mask, 2), [[256, 5, 5, 256]])
  np.testing.assert_array_equal(reference.cell_mask_ids(mask, 2),
                                [[256, 5, 5, 256]])


def test_cell_ids_overflow_with_small_max_mask_id():
  rng = np.random.default_rng(4)
  mask = rng.integers(0, 20, size=(4, 8, 8))
  fast = _cells(mask, 4, max_mask_id=10)
  np.testing.assert_array_equal(
      fast, reference.cell_mask_ids(mask, 4, max_mask_id=10))
  assert fast.max() <= 10
  assert np.any(fast == 10)  # The bucket does win some cells here.


def _sample(seed, cell_ids, num_samples, **kwargs):
  out = masks.sample_mask_ids(jax.random.PRNGKey(seed),
                              jnp.asarray(cell_ids, jnp.int32),
                              num_samples=num_samples, **kwargs)
  assert out.dtype == jnp.int32
  assert out.shape == (len(cell_ids), num_samples)
  return np.asarray(out)


def test_sampling_only_present_ids_and_uniform():
  # Image 0: id 3 owns 1 cell, id 77 owns 12, id 255 owns 2, overflow 1.
  # Image 1: ids 0 and 200, 8 cells each. Image 2: only id 42.
  cell_ids = np.array([
      [3] + [77] * 12 + [255] * 2 + [256],
      [0, 200] * 8,
      [42] * 16,
  ])
  present = reference.sampleable_ids(cell_ids)
  assert present == [[3, 77, 255], [0, 200], [42]]
  num_samples = 6000
  samples = _sample(0, cell_ids, num_samples)
  for b, ids in enumerate(present):
    values, counts = np.unique(samples[b], return_counts=True)
    # Only present ids below max_mask_id, and every one of them is drawn.
    np.testing.assert_array_equal(values, ids)
    # Uniform over ids (not weighted by area): within 10% of the mean.
    expected = num_samples / len(ids)
    np.testing.assert_allclose(counts, expected, rtol=0.1)


def test_sampling_respects_max_mask_id_argument():
  cell_ids = np.array([[1, 2, 10, 10, 10, 10, 15, 10]])
  samples = _sample(1, cell_ids, 2000, max_mask_id=10)
  np.testing.assert_array_equal(np.unique(samples), [1, 2])


def test_sampling_differs_between_keys_and_images():
  cell_ids = np.tile(np.arange(16), (2, 1))
  first = _sample(2, cell_ids, 16)
  second = _sample(3, cell_ids, 16)
  assert not np.array_equal(first, second)
  assert not np.array_equal(first[0], first[1])
  assert set(first.ravel()) <= set(range(16))


def test_pooling_weights_match_reference():
  rng = np.random.default_rng(5)
  cell_ids = rng.integers(0, 5, size=(3, 49))
  sampled = np.stack([rng.choice(np.unique(c), size=16) for c in cell_ids])
  fast = masks.pooling_weights(jnp.asarray(cell_ids, jnp.int32),
                               jnp.asarray(sampled, jnp.int32))
  assert fast.dtype == jnp.float32
  assert fast.shape == (3, 16, 49)
  np.testing.assert_allclose(np.asarray(fast),
                             reference.pooling_weights(cell_ids, sampled),
                             rtol=1e-6)


def test_pooled_features_by_hand():
  # Two images, 4 cells, 2-d features.
  cell_ids = np.array([[1, 1, 2, 1], [0, 3, 3, 3]])
  features = np.array([
      [[1., 2.], [3., 4.], [5., 6.], [8., 0.]],
      [[1., 1.], [2., 4.], [6., 8.], [7., 0.]],
  ], np.float32)
  sampled = np.array([[2, 1, 1], [3, 0, 3]])
  expected = np.array([
      [[5., 6.], [4., 2.], [4., 2.]],
      [[5., 4.], [1., 1.], [5., 4.]],
  ])
  np.testing.assert_allclose(
      reference.pooled_features(cell_ids, sampled, features), expected)
  weights = masks.pooling_weights(jnp.asarray(cell_ids, jnp.int32),
                                  jnp.asarray(sampled, jnp.int32))
  pooled = jnp.einsum('bkc,bcd->bkd', weights, features)
  np.testing.assert_allclose(np.asarray(pooled), expected, rtol=1e-6)


def test_end_to_end_cells_sampling_pooling():
  rng = np.random.default_rng(6)
  mask = rng.integers(0, 6, size=(2, 28, 28))
  mask[1, :14] = 400  # Overflow ids over half of image 1.
  cell_ids = _cells(mask, 7)
  np.testing.assert_array_equal(cell_ids, reference.cell_mask_ids(mask, 7))
  sampled = _sample(7, cell_ids, 16)
  present = reference.sampleable_ids(cell_ids)
  for b in range(2):
    assert set(sampled[b]) <= set(present[b])
  features = rng.normal(size=(2, 49, 8)).astype(np.float32)
  weights = masks.pooling_weights(jnp.asarray(cell_ids), jnp.asarray(sampled))
  pooled = jnp.einsum('bkc,bcd->bkd', weights, features)
  np.testing.assert_allclose(
      np.asarray(pooled),
      reference.pooled_features(cell_ids, sampled, features), rtol=1e-5,
      atol=1e-6)
