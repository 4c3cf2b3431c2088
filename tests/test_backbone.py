"""The backbone module: one network through every entry point."""

import os
import subprocess
import sys

import numpy as np
import pytest

from detcon import backbone, dense_eval, export, linear_eval, main_loop
from tests.common import mock_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN_EPS = 0.1  # Far from the default 1e-5, so that dropping it shows.


@pytest.fixture(scope='module')
def bn_eps_checkpoint(tmp_path_factory):
  """A checkpoint dir pretrained 2 steps with `model.bn_eps` = BN_EPS."""
  ckpt = str(tmp_path_factory.mktemp('bn_eps') / 'ckpt')
  main_loop.run(mock_run_config(**{'model.bn_eps': BN_EPS,
                                   'checkpoint_dir': ckpt}))
  return ckpt


def _images(n=3, size=64, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_bn_eps_is_the_same_through_every_entry_point(bn_eps_checkpoint,
                                                      tmp_path):
  uint8 = _images()
  images = uint8.astype(np.float32) / 255.0
  frozen = backbone.from_checkpoint(bn_eps_checkpoint)
  assert frozen.bn_eps == BN_EPS and frozen.encoder == 'ResNet18'
  want = np.asarray(backbone.feature_map_fn(frozen)(images))
  # The same weights with the default eps compute other features.
  default = backbone.Backbone('ResNet18', 0.25, 1e-5, frozen.params,
                              frozen.state, 'default eps')
  assert np.abs(np.asarray(backbone.feature_map_fn(default)(images))
                - want).max() > 1e-3 * np.abs(want).max()

  npy = export.export_checkpoint(bn_eps_checkpoint, str(tmp_path / 'e.npy'),
                                 'npy')
  exported = backbone.from_npy(npy)
  assert exported.bn_eps == BN_EPS
  np.testing.assert_array_equal(
      np.asarray(backbone.feature_map_fn(exported)(images)), want)
  # The evaluators' own feature functions.
  pooled = want.mean((1, 2))
  for source in (linear_eval._from_checkpoint(bn_eps_checkpoint),
                 linear_eval._from_npy(npy, None)):
    np.testing.assert_allclose(
        np.asarray(backbone.pooled_features_fn(source.backbone)(images)),
        pooled, rtol=0, atol=1e-6 * np.abs(pooled).max())
  # Dense evaluation scales the uint8 images inside its own program: the
  # same features up to float rounding, far below the other eps's 1e-3.
  for source in (dict(checkpoint_dir=bn_eps_checkpoint), dict(npy=npy)):
    dense = dense_eval.make_feature_fn(dense_eval.load_backbone(**source), 4)
    np.testing.assert_allclose(dense(uint8), want, rtol=0,
                               atol=1e-6 * np.abs(want).max())


def test_float32_features_unchanged_by_a_bfloat16_training_network():
  frozen = backbone.from_random('ResNet18', seed=1)
  images = _images(2).astype(np.float32) / 255.0
  before = np.asarray(backbone.feature_map_fn(frozen)(images))
  main_loop.run(mock_run_config(dtype='bfloat16', max_steps=1))
  # Traced anew after the bfloat16 network was built and run.
  backbone._encode_fn.cache_clear()  # pylint: disable=protected-access
  after = np.asarray(backbone.feature_map_fn(frozen)(images))
  assert after.dtype == np.float32
  np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize('fmt', ['npy', 'torchvision'])
def test_export_encoder_mismatch_is_the_error_of_every_entry_point(
    bn_eps_checkpoint, tmp_path, fmt):
  out = tmp_path / f'out.{fmt}'
  message = (f'--encoder=ResNet50 does not match the checkpoint in '
             f'{bn_eps_checkpoint}, which holds a ResNet18')
  with pytest.raises(ValueError, match=message):
    export.export_checkpoint(bn_eps_checkpoint, str(out), fmt, 'ResNet50')
  assert not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match=message):
    dense_eval.load_backbone(checkpoint_dir=bn_eps_checkpoint,
                             encoder='ResNet50')


def test_export_cli_encoder_mismatch_is_one_line(bn_eps_checkpoint, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.export',
       f'--checkpoint_dir={bn_eps_checkpoint}', '--encoder=ResNet50',
       '--format=torchvision', f'--output={tmp_path / "r50.pth"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert ('detcon.export: error: --encoder=ResNet50 does not match the '
          'checkpoint') in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'r50.pth')
