"""Tests of detcon.linear_eval: synthetic features, a small ResNet, the CLI."""

import json
import os
import shutil
import subprocess
import sys

import haiku as hk
import jax.numpy as jnp
import numpy as np
import pytest

from detcon import data, demo, linear_eval, networks
from detcon import pretrained as pretrained_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
  shapes = pretrained_lib.encoder_shapes('ResNet18')
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
                                             1e-5)
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


# The command line, on the checkpoint and records of the quick demo.


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'detcon.linear_eval', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def pretrained(quick_demo):
  """The quick demo's output folder (run once per session)."""
  out, _ = quick_demo
  return out


def _own_checkpoints(out, tmp_path):
  """A copy of the demo's checkpoints, so that this test writes its own."""
  return str(shutil.copytree(os.path.join(out, 'checkpoints'),
                             tmp_path / 'checkpoints'))


def test_cli_prints_and_writes_result(pretrained, tmp_path):
  ckpt = _own_checkpoints(pretrained, tmp_path)
  os.remove(os.path.join(ckpt, linear_eval.RESULT_FILE))
  # No --dataset_directory: the pretraining run's records.
  result = _cli(f'--checkpoint_dir={ckpt}', '--num_steps=3',
                '--batch_size=5', '--learning_rate=0.01', '--image_size=32',
                '--eval_split=train')
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  with open(os.path.join(ckpt, linear_eval.RESULT_FILE)) as f:
    assert json.load(f) == printed
  assert printed['pretrain_step'] == demo.QUICK.pretrain_steps
  assert printed['eval_split'] == 'train'
  assert printed['num_examples'] == 12  # Every train record, once.
  assert printed['num_classes'] == demo.QUICK.num_classes
  assert printed['skipped_records'] == 0
  assert 0 <= printed['top1'] <= printed['top5'] <= 1
  assert 'at 32x32: 3 steps of batch 5' in result.stderr
  assert 'linear eval step 3/3' in result.stderr


def test_cli_without_validation_records_falls_back_to_train(pretrained,
                                                            tmp_path):
  ckpt = _own_checkpoints(pretrained, tmp_path)
  records = tmp_path / 'train_only'
  records.mkdir()
  for path in data.find_shards(os.path.join(pretrained, 'records'), 'train'):
    os.symlink(path, records / os.path.basename(path))
  result = _cli(f'--checkpoint_dir={ckpt}', f'--dataset_directory={records}',
                '--num_steps=2', '--batch_size=4')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'No validation records' in result.stderr
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed['eval_split'] == 'train'
  assert printed['num_examples'] == 12


@pytest.mark.parametrize('make_dir,message', [
    (False, 'no checkpoint directory'),
    (True, 'holds no checkpoint'),
])
def test_cli_without_checkpoint_fails_clearly(tmp_path, make_dir, message):
  ckpt = tmp_path / 'ckpt'
  if make_dir:
    ckpt.mkdir()
  result = _cli(f'--checkpoint_dir={ckpt}', f'--dataset_directory={tmp_path}')
  assert result.returncode != 0
  assert 'detcon.linear_eval: error:' in result.stderr
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_help_documents_every_flag():
  result = _cli('--help')
  for flag in ('checkpoint_dir', 'npy', 'encoder', 'dataset_directory',
               'num_steps', 'batch_size', 'num_classes', 'learning_rate',
               'image_size', 'eval_split', '[no]library_logs'):
    assert f'--{flag}' in result.stdout, flag


def test_labels_beyond_the_pretraining_classes_fail_clearly():
  batches = [{'labels': np.array([0, 2])}, {'labels': np.array([1, 3])}]
  checked = linear_eval._checked(batches, num_classes=3)
  assert next(checked) is batches[0]
  with pytest.raises(ValueError,
                     match=r'label 4 \(1-based\).*num_classes=3'):
    next(checked)


def test_records_without_classes_fail_clearly():
  checked = linear_eval._checked([{'labels': np.array([0, -1])}], 3)
  with pytest.raises(ValueError, match='without a class'):
    next(checked)


def test_num_classes_overrides_and_is_required_without_pretraining_classes(
    pretrained, tmp_path, monkeypatch):
  ckpt = _own_checkpoints(pretrained, tmp_path)
  result = linear_eval.run(ckpt, num_steps=1, batch_size=4,
                           learning_rate=0.01, image_size=32,
                           eval_split='train', num_classes=9)
  assert result['num_classes'] == 9
  # A run pretrained without classes (e.g. on COCO) needs --num_classes.
  real = linear_eval._from_checkpoint
  monkeypatch.setattr(linear_eval, '_from_checkpoint',
                      lambda d: real(d)._replace(num_classes=0))
  with pytest.raises(ValueError, match='pretrained without classes.*'
                     '--num_classes'):
    linear_eval.run(ckpt, num_steps=1, batch_size=4, learning_rate=0.01)
  assert linear_eval.run(ckpt, num_steps=1, batch_size=4, learning_rate=0.01,
                         image_size=32, eval_split='train',
                         num_classes=demo.QUICK.num_classes)['top1'] >= 0


def test_padded_batches_mask_the_padding():
  batch = {'images': np.ones((3, 2, 2, 3), np.float32),
           'labels': np.array([4, 5, 6])}
  (padded,) = linear_eval._padded([batch], 5)
  assert padded['images'].shape == (5, 2, 2, 3)
  np.testing.assert_array_equal(padded['labels'], [4, 5, 6, 0, 0])
  np.testing.assert_array_equal(padded['mask'], [1, 1, 1, 0, 0])
  assert not padded['images'][3:].any()
