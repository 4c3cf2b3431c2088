"""Tests of detcon.linear_eval on synthetic features and a small ResNet."""

import haiku as hk
import jax.numpy as jnp
import numpy as np
import pytest

from detcon import export, linear_eval, networks

NUM_CLASSES = 10


def _flatten(images):
  """A features_fn: the 'images' themselves, flattened to [B, S * S * 3]."""
  return jnp.reshape(images, (images.shape[0], -1))


def _blobs(rng, num_examples, means, noise):
  labels = rng.integers(0, len(means), num_examples).astype(np.int32)
  x = means[labels] + noise * rng.normal(size=(num_examples, means.shape[1]))
  return x.reshape(num_examples, 4, 4, 3).astype(np.float32), labels


def _batches(images, labels, batch_size, rng=None, mask=False):
  """Batches of a dataset: shuffled forever with `rng`, else one pass."""
  while True:
    order = rng.permutation(len(labels)) if rng else np.arange(len(labels))
    for i in range(0, len(labels), batch_size):
      idx = order[i:i + batch_size]
      batch = {'images': images[idx], 'labels': labels[idx]}
      if mask:  # Pad to a fixed batch size, padding masked out.
        pad = batch_size - len(idx)
        batch = {'images': np.pad(batch['images'],
                                  ((0, pad), (0, 0), (0, 0), (0, 0))),
                 'labels': np.pad(batch['labels'], (0, pad)),
                 'mask': np.arange(batch_size) < len(idx)}
      yield batch
    if rng is None:
      return


def test_separable_features_reach_high_accuracy():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(NUM_CLASSES, 48))
  train = _blobs(rng, 2000, means, noise=1.5)
  test = _blobs(rng, 1000, means, noise=1.5)
  classifier = linear_eval.train_linear(
      _flatten, _batches(*train, 64, rng), num_classes=NUM_CLASSES,
      num_steps=300, learning_rate=0.1, seed=0)
  assert classifier['w'].shape == (48, NUM_CLASSES)
  assert classifier['b'].shape == (NUM_CLASSES,)
  result = linear_eval.evaluate(_flatten, classifier, _batches(*test, 128))
  assert result['num_examples'] == 1000
  assert result['top1'] > 0.9
  assert result['top5'] >= result['top1']


def test_random_labels_stay_at_chance():
  rng = np.random.default_rng(1)
  def random_data(n):
    return (rng.normal(size=(n, 4, 4, 3)).astype(np.float32),
            rng.integers(0, NUM_CLASSES, n).astype(np.int32))
  classifier = linear_eval.train_linear(
      _flatten, _batches(*random_data(500), 50, rng),
      num_classes=NUM_CLASSES, num_steps=200, learning_rate=0.1, seed=0)
  n = 3000
  result = linear_eval.evaluate(_flatten, classifier,
                                _batches(*random_data(n), 256))
  p = 1 / NUM_CLASSES
  assert abs(result['top1'] - p) < 4 * (p * (1 - p) / n) ** 0.5
  p5 = 5 / NUM_CLASSES
  assert abs(result['top5'] - p5) < 4 * (p5 * (1 - p5) / n) ** 0.5


def test_evaluate_counts_exactly_and_caps_top5():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(203, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 203).astype(np.int32)
  classifier = {'w': jnp.asarray(rng.normal(size=(48, 3)), jnp.float32),
                'b': jnp.zeros((3,))}
  predictions = np.argmax(_flatten(images) @ classifier['w'], axis=1)
  want = float(np.mean(predictions == labels))
  for mask in (False, True):
    result = linear_eval.evaluate(
        _flatten, classifier, _batches(images, labels, 64, mask=mask))
    assert result['num_examples'] == 203
    assert result['top1'] == pytest.approx(want)
    assert result['top5'] == 1.0  # Top-k capped at the 3 classes.


def test_train_needs_enough_batches():
  rng = np.random.default_rng(3)
  data = _blobs(rng, 10, rng.normal(size=(2, 48)), noise=0.1)
  with pytest.raises(ValueError, match='ended after 1 of 5'):
    linear_eval.train_linear(_flatten, _batches(*data, 10), num_classes=2,
                             num_steps=5, learning_rate=0.1, seed=0)


def test_features_fn_is_frozen_inference_mode():
  rng = np.random.default_rng(4)
  shapes = export.encoder_shapes('ResNet18')
  def sample(name, shape):
    if name == 'w':  # Conv HWIO.
      return rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape)
    if name == 'counter':
      return np.zeros(shape)
    return rng.uniform(0.5, 1.5, shape)  # Scales, offsets, means, variances.
  params, state = (
      {m: {k: sample(k, s.shape).astype(s.dtype) for k, s in d.items()}
       for m, d in tree.items()} for tree in shapes)
  features_fn = linear_eval.make_features_fn('ResNet18', 1, params, state,
                                             0.9, 1e-5)
  images = rng.uniform(size=(3, 32, 32, 3)).astype(np.float32)
  features = np.asarray(features_fn(images))
  assert features.shape == (3, 512) and features.dtype == np.float32
  model = hk.without_apply_rng(hk.transform_with_state(
      lambda x: networks.ResNetEncoder(
          'ResNet18', 1, networks.bn_config(0.9, 1e-5, None))(x, False)))
  feature_map, _ = model.apply(params, state, images)
  tol = 1e-5 * np.abs(features).max()
  np.testing.assert_allclose(features, np.mean(feature_map, axis=(1, 2)),
                             rtol=0, atol=tol)
  # Inference-mode BatchNorm: an example's features ignore the rest of the
  # batch.
  np.testing.assert_allclose(np.asarray(features_fn(images[:1])),
                             features[:1], rtol=0, atol=tol)
