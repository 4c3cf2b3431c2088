"""Tests of detcon.evaluators.knn against hand computations."""

import math

import jax
import numpy as np
import pytest

from detcon.evaluators import knn


def _reference_scores(bank, labels, queries, num_classes, k, temperature):
  """The weighted k-NN from its definition, one query and neighbour at a time.

  Neighbours are ranked by cosine similarity, ties by the lower bank index.
  """
  scores = np.zeros((len(queries), num_classes))
  for i, query in enumerate(queries):
    cosines = []
    for j, entry in enumerate(bank):
      cosine = sum(a * b for a, b in zip(query, entry, strict=True)) / (
          math.hypot(*query) * math.hypot(*entry))
      cosines.append((-cosine, j))  # Sorted: highest first, then index.
    for negative_cosine, j in sorted(cosines)[:k]:
      if 0 <= labels[j] < num_classes:
        scores[i, labels[j]] += math.exp(-negative_cosine / temperature)
  return scores


def test_scores_worked_by_hand():
  # Query (1, 0): its 2 nearest are (3, 0) (cosine 1, class 0) and (1, 1)
  # (cosine 1/sqrt(2), class 0); (0, 1) (cosine 0, class 1) is third.
  # Query (0, 2): (0, 1) (cosine 1, class 1), then (1, 1) (class 0).
  bank = np.array([[3., 0.], [0., 1.], [1., 1.]])
  labels = np.array([0, 1, 0])
  queries = np.array([[1., 0.], [0., 2.]])
  scores = knn.knn_predict(bank, labels, queries, num_classes=3, k=2,
                           temperature=0.5)
  e = math.exp
  expected = [[e(2.) + e(2. / math.sqrt(2.)), 0., 0.],
              [e(2. / math.sqrt(2.)), e(2.), 0.]]
  # e^2 + e^sqrt(2) = 7.389056 + 4.113250 = 11.502306.
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  np.testing.assert_allclose(scores[0, 0], 11.502306, rtol=1e-6)


def test_matches_the_definition_on_a_random_bank():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(40, 6))
  labels = rng.integers(0, 5, 40)
  queries = rng.normal(size=(13, 6))
  expected = _reference_scores(bank, labels, queries, 5, k=7,
                               temperature=0.1)
  scores = knn.knn_predict(bank, labels, queries, num_classes=5, k=7,
                           temperature=0.1, chunk_size=4)
  np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_chunk_size_does_not_change_the_scores():
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(30, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 30)
  queries = rng.normal(size=(11, 8)).astype(np.float32)
  whole = knn.knn_predict(bank, labels, queries, 4, chunk_size=11)
  for chunk_size in (1, 3, 64):  # 3 leaves a remainder; 64 exceeds M.
    np.testing.assert_allclose(
        knn.knn_predict(bank, labels, queries, 4, chunk_size=chunk_size),
        whole, rtol=1e-5)  # Float32 sums in another order.


def test_ties_at_the_kth_place_take_the_lower_bank_index():
  # Entries 1 and 2 are the same vector with different classes; k=2 keeps
  # entry 0 and the lower index of the tie, entry 1 (class 1).
  bank = np.array([[1., 0.], [1., 1.], [2., 2.]])
  labels = np.array([0, 1, 2])
  scores = knn.knn_predict(bank, labels, np.array([[1., 0.]]), 3, k=2,
                           temperature=1.)
  np.testing.assert_allclose(
      scores, [[math.e, math.exp(1 / math.sqrt(2.)), 0.]], rtol=1e-6)


def test_k_beyond_the_bank_uses_every_entry():
  bank = np.array([[1., 0.], [0., 1.], [-1., 0.]])
  labels = np.array([0, 1, 1])
  scores = knn.knn_predict(bank, labels, np.array([[1., 0.]]), 2, k=20,
                           temperature=1.)
  np.testing.assert_allclose(scores, [[math.e, 1. + math.exp(-1.)]],
                             rtol=1e-6)


def test_labels_outside_the_classes_vote_for_nothing():
  bank = np.array([[1., 0.], [1., 0.1], [0., 1.]])
  labels = np.array([-1, 0, 1])
  scores = knn.knn_predict(bank, labels, np.array([[1., 0.]]), 2, k=2,
                           temperature=1.)
  # Entry 0 (no class) is the nearest and takes a place; entry 1 votes.
  np.testing.assert_allclose(
      scores, [[math.exp(1 / math.sqrt(1.01)), 0.]], rtol=1e-6)


def test_scale_of_the_features_does_not_matter():
  rng = np.random.default_rng(2)
  bank = rng.normal(size=(20, 5))
  labels = rng.integers(0, 3, 20)
  queries = rng.normal(size=(6, 5))
  scales = rng.uniform(0.1, 10., size=(20, 1))
  np.testing.assert_allclose(
      knn.knn_predict(bank * scales, labels, 3. * queries, 3, k=5),
      knn.knn_predict(bank, labels, queries, 3, k=5), rtol=1e-4)


def test_runs_inside_jit():
  bank = np.array([[1., 0.], [0., 1.]], np.float32)
  labels = np.array([0, 1])

  @jax.jit
  def predicted_class(queries):
    return knn.knn_predict(bank, labels, queries, 2, k=1).argmax(-1)

  np.testing.assert_array_equal(
      predicted_class(np.array([[2., 1.], [1., 3.]], np.float32)), [0, 1])


def test_top1_top5():
  # Queries at the bank entries themselves with k=1: each query's only
  # neighbour is its own entry, so entry i scores e^(1/T) and every other
  # class 0. Top 5 ranks the tie at 0 by class index: i, then the lowest.
  bank = np.eye(6)
  query_labels = np.array([0, 1, 2, 0, 5, 5])
  # Top-1 hits: queries 0, 1, 2, 5. Top 5 of query 3: 3, 0, 1, 2, 4 (holds
  # its label 0); of query 4: 4, 0, 1, 2, 3 (misses its label 5).
  result = knn.knn_top1_top5(bank, np.arange(6), np.eye(6), query_labels, 6,
                             k=1)
  assert result == {'top1': 4 / 6, 'top5': 5 / 6, 'num_examples': 6}


def test_top5_with_fewer_classes_is_top_c():
  bank = np.array([[1., 0.], [0., 1.]])
  result = knn.knn_top1_top5(bank, np.array([0, 1]), np.array([[1., 0.]]),
                             np.array([1]), 2)
  assert result == {'top1': 0., 'top5': 1., 'num_examples': 1}


def test_bad_k_and_empty_queries_are_refused():
  bank = np.eye(2)
  with pytest.raises(ValueError, match='k=0'):
    knn.knn_predict(bank, np.arange(2), bank, 2, k=0)
  with pytest.raises(ValueError, match='no evaluation examples'):
    knn.knn_top1_top5(bank, np.arange(2), np.zeros((0, 2)),
                      np.zeros((0,), int), 2)
