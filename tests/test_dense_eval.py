"""Dense evaluation: metrics, both protocols, the VOC reader and bad input."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from detcon import dense_eval, npy_io, voc
from tests.common import write_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slow_metrics(predictions, labels, num_classes):
  """IoU per class by counting pixels one at a time (docs/method.md)."""
  tp = [0] * num_classes
  fp = [0] * num_classes
  fn = [0] * num_classes
  correct = total = 0
  for p, t in zip(np.ravel(predictions), np.ravel(labels), strict=True):
    if t == 255:
      continue
    total += 1
    if p == t:
      tp[t] += 1
      correct += 1
    else:
      fp[p] += 1
      fn[t] += 1
  iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else None
         for c in range(num_classes)]
  present = [c for c in range(num_classes) if tp[c] + fn[c] > 0]
  return dict(miou=sum(iou[c] for c in present) / len(present),
              pixel_accuracy=correct / total, per_class_iou=iou)


def test_metrics_match_a_pixel_count():
  rng = np.random.default_rng(0)
  # Classes 0..4: class 3 is never in the labels but is predicted; class 4
  # is in neither (IoU None).
  labels = rng.choice([0, 1, 2, 255], size=(3, 9, 7), p=[0.5, 0.2, 0.2, 0.1])
  predictions = rng.choice([0, 1, 2, 3], size=labels.shape)
  confusion = sum(dense_eval.confusion_matrix(p, t, 5)
                  for p, t in zip(predictions, labels, strict=True))
  got = dense_eval.segmentation_metrics(confusion)
  want = slow_metrics(predictions, labels, 5)
  assert got['per_class_iou'][4] is None and want['per_class_iou'][4] is None
  assert got['per_class_iou'][3] == 0.0
  assert got['present_classes'] == [0, 1, 2]
  np.testing.assert_allclose(got['miou'], want['miou'], rtol=1e-12)
  np.testing.assert_allclose(got['pixel_accuracy'], want['pixel_accuracy'],
                             rtol=1e-12)
  for g, w in zip(got['per_class_iou'][:4], want['per_class_iou'][:4],
                  strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-12)


def test_metrics_perfect_and_all_wrong():
  labels = np.array([[0, 1], [2, 255]])
  perfect = dense_eval.segmentation_metrics(
      dense_eval.confusion_matrix(np.array([[0, 1], [2, 0]]), labels, 3))
  assert perfect['miou'] == 1.0 and perfect['pixel_accuracy'] == 1.0
  wrong = dense_eval.segmentation_metrics(
      dense_eval.confusion_matrix(np.array([[1, 2], [0, 0]]), labels, 3))
  assert wrong['miou'] == 0.0 and wrong['pixel_accuracy'] == 0.0


def test_bilinear_matrix_matches_jax_image_resize():
  x = np.random.default_rng(1).random((3, 5, 4)).astype(np.float32)
  want = jax.image.resize(x, (13, 22, 4), 'bilinear')
  np.testing.assert_allclose(dense_eval.upsample(x, (13, 22)), want,
                             atol=1e-5)


def test_patch_label_distributions_count_each_patch():
  rng = np.random.default_rng(2)
  labels = rng.choice([0, 1, 2, 255], size=(2, 8, 8)).astype(np.uint8)
  got = dense_eval.patch_label_distributions(labels, (2, 4), 3)
  for n in range(2):
    for i in range(2):
      for j in range(4):
        patch = labels[n, 4 * i:4 * i + 4, 2 * j:2 * j + 2].ravel()
        valid = [v for v in patch if v != 255]
        for c in range(3):
          want = valid.count(c) / len(valid) if valid else 0.0
          assert got[n, i, j, c] == pytest.approx(want)


def _patch_labels(rng, n, grid, patch, num_classes):
  """Labels constant on blocks of 2x2 feature patches.

  Returns:
    (uint8 `[n, grid * patch, grid * patch]` labels, `[n, grid, grid]` the
    class of each patch). Regions span two patches, as objects do: on
    one-patch regions, bilinear upsampling of even perfect logits misplaces
    the corners where several classes meet (mIoU 0.92 at best), on two-patch
    ones 0.99.
  """
  coarse = rng.integers(0, num_classes, (n, grid // 2, grid // 2))
  coarse = np.kron(coarse, np.ones((2, 2), np.int64))
  return np.kron(coarse, np.ones((patch, patch), np.int64)).astype(
      np.uint8), coarse


def _probe_metrics(features, labels, test_features, test_labels, classes):
  probe = dense_eval.train_linear_probe(
      features, labels, num_classes=classes, steps=60, batch_size=8,
      learning_rate=0.5, seed=0)
  scores = dense_eval.probe_scores(probe, test_features, classes)
  confusion = sum(dense_eval.confusion_matrix(
      dense_eval.upsample(s, t.shape).argmax(-1), t, classes)
                  for s, t in zip(scores, test_labels, strict=True))
  return dense_eval.segmentation_metrics(confusion)


def test_linear_probe_reads_features_that_encode_the_labels():
  rng = np.random.default_rng(3)
  classes, grid, patch = 4, 4, 8

  def make(n):
    labels, coarse = _patch_labels(rng, n, grid, patch, classes)
    features = np.eye(classes)[coarse] + 0.1 * rng.normal(
        size=(n, grid, grid, classes))
    return features.astype(np.float32), labels

  metrics = _probe_metrics(*make(32), *make(8), classes)
  assert metrics['miou'] > 0.95


def test_linear_probe_on_constant_features_predicts_the_majority():
  rng = np.random.default_rng(4)
  classes, grid, patch = 3, 4, 8
  labels = rng.choice(classes, size=(40, grid, grid), p=[0.6, 0.3, 0.1])
  labels = np.kron(labels, np.ones((patch, patch), np.int64)).astype(np.uint8)
  features = np.ones((40, grid, grid, 5), np.float32)
  metrics = _probe_metrics(features[:32], labels[:32], features[32:],
                           labels[32:], classes)
  counts = np.bincount(labels[32:].ravel(), minlength=classes)
  majority = counts.max() / counts.sum()
  assert metrics['pixel_accuracy'] == pytest.approx(majority)
  assert metrics['miou'] == pytest.approx(majority / classes)


def test_nn_vote_equals_a_hand_computation():
  s = 1 / math.sqrt(2)
  bank = np.array([[1, 0], [0, 1], [s, s], [-1, 0]], np.float32)
  labels = np.array([[1, 0], [0, 1], [0.5, 0.5], [0, 1]], np.float32)
  query = np.array([[1, 0], [0, 1]], np.float32)
  got = dense_eval.nn_label_distributions(bank, labels, query, neighbours=2,
                                          temperature=0.5)
  # Query (1, 0): neighbours bank 0 (similarity 1) and bank 2 (0.7071).
  w0, w2 = math.exp(1 / 0.5), math.exp(s / 0.5)
  p0, p2 = w0 / (w0 + w2), w2 / (w0 + w2)
  np.testing.assert_allclose(got[0], [p0 + 0.5 * p2, 0.5 * p2], rtol=1e-5)
  # Query (0, 1): bank 1 (1) and bank 2 (0.7071); both vote mostly class 1.
  np.testing.assert_allclose(got[1], [0.5 * p2, p0 + 0.5 * p2], rtol=1e-5)
  # k larger than the bank uses the whole bank.
  all_bank = dense_eval.nn_label_distributions(bank, labels, query[:1],
                                               neighbours=10, temperature=1.0)
  w = np.exp([1, 0, s, -1])
  np.testing.assert_allclose(all_bank[0], (w / w.sum()) @ labels, rtol=1e-5)


def test_label_png_round_trip_keeps_indices_and_palette(tmp_path):
  labels = np.array([[0, 1, 2], [20, 255, 7]], np.uint8)
  path = str(tmp_path / 'x.png')
  voc.write_label_png(path, labels)
  with Image.open(path) as image:
    assert image.mode == 'P'
    palette = np.array(image.getpalette()[:768]).reshape(256, 3)
  np.testing.assert_array_equal(voc.read_label_png(path), labels)
  # VOC's colours: background black, class 1 dark red, 255 cream.
  assert palette[0].tolist() == [0, 0, 0]
  assert palette[1].tolist() == [128, 0, 0]
  assert palette[255].tolist() == [224, 224, 192]





@pytest.fixture(scope='module')
def tiny_voc(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('voc'))
  return root, write_voc(root)


@pytest.fixture(scope='module')
def random_resnet18():
  return dense_eval.load_backbone(init='random', encoder='ResNet18')


def _run(root, backbone, out, **kwargs):
  settings = dict(dataset_directory=root, backbone=backbone,
                  output=str(out / 'result.json'), num_classes=4,
                  image_size=64, crops_per_image=2, batch_size=4,
                  linear_steps=20, nn_memory_size=500)
  settings.update(kwargs)
  return dense_eval.run(**settings)


def test_run_writes_metrics_predictions_and_picture(tiny_voc,
                                                    random_resnet18,
                                                    tmp_path):
  root, ids = tiny_voc
  result = _run(root, random_resnet18, tmp_path,
                predictions_dir=str(tmp_path / 'pred'),
                picture=str(tmp_path / 'pic.png'))
  with open(tmp_path / 'result.json') as f:
    assert json.load(f) == result
  for p in ('linear', 'nn'):
    r = result[p]
    assert 0 <= r['miou'] <= 1 and 0 <= r['pixel_accuracy'] <= 1
    assert len(r['per_class_iou']) == 4
    assert r['per_class_iou'][3] is None or r['per_class_iou'][3] == 0.0
    for image_id in ids['val']:
      pred_path = tmp_path / 'pred' / p / f'{image_id}.png'
      with Image.open(pred_path) as image:
        assert image.mode == 'P' and image.size == (40, 48)
        np.testing.assert_array_equal(
            np.array(image.getpalette()[:768]).reshape(256, 3), voc.palette())
      assert voc.read_label_png(str(pred_path)).max() < 4
  assert result['num_train_images'] == 6 and result['num_eval_images'] == 4
  assert result['unreadable_images'] == 0
  with Image.open(tmp_path / 'pic.png') as image:
    assert image.format == 'PNG' and image.width > 400


def test_unreadable_images_are_skipped_and_counted(tiny_voc, random_resnet18,
                                                   tmp_path):
  root, ids = tiny_voc
  copy = str(tmp_path / 'voc')
  write_voc(copy)
  path = voc.image_path(copy, ids['val'][0])
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 3])  # Truncated JPEG.
  result = _run(copy, random_resnet18, tmp_path, protocols=['nn'])
  assert result['unreadable_images'] == 1
  assert result['num_eval_images'] == 3 and 'linear' not in result


@pytest.mark.parametrize('damage, message', [
    ('no_image', 'train_1.jpg'),
    ('no_label', 'val_2.png'),
    ('size', 'must be the same size'),
    ('values', 'not below --num_classes=4'),
    ('empty_split', 'lists no image ids'),
])
def test_bad_input_is_a_clear_error_naming_the_file(tmp_path, random_resnet18,
                                                    damage, message):
  root = str(tmp_path / 'voc')
  write_voc(root, train=2, val=3)
  if damage == 'no_image':
    os.remove(voc.image_path(root, 'train_1'))
  elif damage == 'no_label':
    os.remove(voc.label_path(root, 'val_2'))
  elif damage == 'size':
    voc.write_label_png(voc.label_path(root, 'val_1'),
                        np.zeros((10, 10), np.uint8))
  elif damage == 'values':
    labels = voc.read_label_png(voc.label_path(root, 'train_0'))
    labels[5, 5] = 7
    voc.write_label_png(voc.label_path(root, 'train_0'), labels)
  elif damage == 'empty_split':
    with open(os.path.join(root, voc.SPLIT_DIR, 'val.txt'), 'w') as f:
      f.write('\n')
  with pytest.raises(voc.VocError, match=message) as error:
    _run(root, random_resnet18, tmp_path, linear_steps=2)
  if damage in ('size', 'values'):
    assert '.png' in str(error.value)


def test_backbone_sources_are_exclusive_and_encoder_checked(tmp_path):
  with pytest.raises(ValueError, match='exactly one backbone'):
    dense_eval.load_backbone()
  with pytest.raises(ValueError, match='exactly one backbone'):
    dense_eval.load_backbone(npy='x.npy', init='random')
  with pytest.raises(ValueError, match='unknown encoder'):
    dense_eval.load_backbone(init='random', encoder='ResNet7')


def test_npy_backbone_infers_its_encoder_and_refuses_another(
    random_resnet18, tmp_path):
  path = str(tmp_path / 'r18.npy')
  npy_io.save_npy(path, random_resnet18.params, random_resnet18.state)
  backbone = dense_eval.load_backbone(npy=path)
  assert backbone.encoder == 'ResNet18'
  np.testing.assert_array_equal(
      backbone.params['encoder/initial_conv']['w'],
      random_resnet18.params['encoder/initial_conv']['w'])
  with pytest.raises(ValueError, match='does not match|missing'):
    dense_eval.load_backbone(npy=path, encoder='ResNet50')


def test_checkpoint_whose_encoder_differs_from_encoder_flag(quick_demo):
  out, _ = quick_demo
  ckpt = os.path.join(out, 'checkpoints')
  assert dense_eval.load_backbone(checkpoint_dir=ckpt).encoder == 'ResNet18'
  with pytest.raises(ValueError, match='holds a ResNet18'):
    dense_eval.load_backbone(checkpoint_dir=ckpt, encoder='ResNet50')


def test_cli_help_documents_every_flag():
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.dense_eval', '--helpshort'], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  for name in ('dataset_directory', 'num_classes', 'train_split',
               'eval_split', 'checkpoint_dir', 'npy', 'init', 'encoder',
               'width_multiplier', 'protocols', 'image_size',
               'crops_per_image', 'batch_size', 'linear_steps',
               'linear_learning_rate', 'nn_neighbours', 'nn_temperature',
               'nn_memory_size', 'output', 'predictions_dir', 'picture',
               'picture_images', 'seed', '[no]library_logs'):
    assert f'--{name}' in result.stdout, name


def test_cli_needs_an_output_without_a_checkpoint_dir(tiny_voc):
  """(The demo runs the command end to end on a pretraining run.)"""
  root, _ = tiny_voc
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.dense_eval', f'--dataset_directory={root}',
       '--init=random', '--encoder=ResNet18', '--num_classes=4'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and '--output' in result.stderr
