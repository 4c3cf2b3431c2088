"""Tests of detcon.export: npy round trip, torchvision names and features."""

import functools
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from detcon import export, networks, npy_io, pretrained, torch_export
from tests.common import (
  encoder_forward,
  random_images,
  torch_features,
)


@functools.cache
def _trained(encoder, num_classes=10):
  """Full-network-like params/state, random weights and BatchNorm statistics.

  Returns:
    `(params, state)` of NumPy arrays with the encoder, a projector and a
    classifier, as the pretraining network has them.
  """
  rng = np.random.default_rng(0)
  def sample(module, name, s):
    if name == 'w':  # Conv HWIO: unit-variance outputs.
      return rng.normal(0, np.prod(s.shape[:-1]) ** -0.5, s.shape)
    if name in ('scale', 'hidden') or (name == 'average' and 'var_ema' in
                                       module):
      return rng.uniform(0.5, 1.5, s.shape)
    if name in ('offset', 'average'):
      return rng.normal(0, 0.2, s.shape)
    assert name == 'counter', name
    return np.asarray(123)
  params, state = (
      {m: {k: sample(m, k, s).astype(s.dtype) for k, s in d.items()}
       for m, d in tree.items()}
      for tree in pretrained.encoder_shapes(encoder))
  features = networks.ENCODERS[encoder][2][-1]
  params['projector/linear_0'] = {'w': np.ones((features, 8), np.float32),
                                  'b': np.zeros((8,), np.float32)}
  params['classifier'] = {
      'w': rng.normal(0, 0.1, (features, num_classes)).astype(np.float32),
      'b': rng.normal(0, 0.1, (num_classes,)).astype(np.float32)}
  state['projector/batchnorm/~/mean_ema'] = {
      'average': np.zeros((1, 8), np.float32)}
  return params, state


@pytest.mark.parametrize('encoder', ['ResNet18', 'ResNet50'])
def test_npy_round_trip(tmp_path, encoder):
  params, state = _trained(encoder)
  enc_params, enc_state = npy_io.encoder_params_from(params, state)
  assert set(enc_params) == {m for m in params if m.startswith('encoder/')}
  assert set(enc_state) == {m for m in state if m.startswith('encoder/')}
  path = str(tmp_path / 'encoder.npy')
  npy_io.save_npy(path, enc_params, enc_state)
  flat = np.load(path, allow_pickle=True).item()
  assert flat['encoder/initial_conv/w'].shape == (7, 7, 3, 64)
  assert 'encoder/initial_batchnorm/~/mean_ema/average' in flat
  loaded_params, loaded_state = pretrained.import_npy(path, encoder)
  for want, got in ((enc_params, loaded_params), (enc_state, loaded_state)):
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
      np.testing.assert_array_equal(a, b)
  images = random_images(32)
  forward = encoder_forward(encoder)
  np.testing.assert_array_equal(
      forward(enc_params, enc_state, images),
      forward(loaded_params, loaded_state, images))


def test_import_reports_wrong_names(tmp_path):
  params, state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                               pretrained.encoder_shapes('ResNet18'))
  flat = npy_io.flatten(params, state)
  flat['res_net/conv1/w'] = flat.pop('encoder/initial_conv/w')
  del flat['encoder/block_group_1/~/block_0/~/batchnorm_0/~/var_ema/average']
  flat['encoder/block_group_3/~/block_1/~/conv_1/w'] = np.zeros((3, 3, 1, 1))
  path = str(tmp_path / 'released.npy')
  np.save(path, np.array(flat, dtype=object), allow_pickle=True)
  with pytest.raises(ValueError) as error:
    pretrained.import_npy(path, 'ResNet18')
  message = str(error.value)
  assert '2 missing' in message and '1 unexpected' in message
  assert 'encoder/initial_conv/w' in message
  assert 'batchnorm_0/~/var_ema/average' in message
  assert 'res_net/conv1/w' in message
  assert '1 wrong shape' in message
  assert 'conv_1/w: (3, 3, 1, 1) (expected (3, 3, 512, 512))' in message
  with pytest.raises(ValueError, match='missing'):  # ResNet-18 is not 34.
    pretrained.check_names(params, state, pretrained.encoder_shapes('ResNet34'))
  with pytest.raises(ValueError, match='blocks'):
    torch_export.to_torchvision(params, state, 'ResNet34')


def _zeros(encoder):
  params, state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                               pretrained.encoder_shapes(encoder))
  return params, state


@pytest.mark.parametrize('encoder', list(networks.ENCODERS))
def test_torchvision_names_and_shapes(encoder):
  torch = pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  state_dict = torch_export.to_torchvision(*_zeros(encoder), encoder)
  with torch.device('meta'):
    want = torch_export.make_torchvision_model(encoder).state_dict()
  assert list(state_dict) == list(want)
  for k, v in want.items():
    assert state_dict[k].shape == tuple(v.shape), k
    assert str(state_dict[k].dtype) == str(v.dtype).removeprefix('torch.'), k


@pytest.mark.parametrize('encoder', ['ResNet18', 'ResNet50'])
def test_torchvision_loads_strict(encoder):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  params, state = _zeros(encoder)
  state_dict = torch_export.to_torchvision(params, state, encoder)
  assert state_dict['fc.weight'].shape[0] == 1000
  if encoder == 'ResNet50':
    model = torchvision.models.resnet50()
    model.load_state_dict({k: torch.from_numpy(v)
                           for k, v in state_dict.items()}, strict=True)
  torch_export.make_torchvision_model(encoder, state_dict)


@pytest.mark.parametrize('encoder,size', [('ResNet18', 64), ('ResNet50', 64),
                                          ('ResNet18', 57)])
def test_torchvision_features_match_with_tf_padding(encoder, size):
  pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  params, state = _trained(encoder)
  enc_params, enc_state = npy_io.encoder_params_from(params, state)
  images = random_images(size)
  want = np.asarray(encoder_forward(encoder)(enc_params, enc_state, images))
  want_logits = want.mean((1, 2)) @ params['classifier']['w'] + params[
      'classifier']['b']
  state_dict = torch_export.to_torchvision(params, state, encoder)
  assert state_dict['fc.weight'].shape == (10, want.shape[-1])
  assert int(state_dict['bn1.num_batches_tracked']) == 123
  scale = np.abs(want).max()
  assert scale > 1e-2
  model = torch_export.make_torchvision_model(encoder, state_dict,
                                        tf_same_padding=True)
  got, logits = torch_features(model, images)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
  np.testing.assert_allclose(logits, want_logits,
                             atol=1e-4 * np.abs(want_logits).max(), rtol=0)
  # Unpatched, PyTorch's symmetric padding gives different features.
  plain, _ = torch_features(
      torch_export.make_torchvision_model(encoder, state_dict), images)
  assert np.abs(plain - want).max() > 1e-2 * scale


def test_tf_same_pads():
  assert torch_export._tf_same_pads(224, 7, 2) == (2, 3)
  assert torch_export._tf_same_pads(112, 3, 2) == (0, 1)
  assert torch_export._tf_same_pads(7, 3, 2) == (1, 1)
  assert torch_export._tf_same_pads(56, 1, 2) == (0, 0)
  assert torch_export._tf_same_pads(56, 3, 1) == (1, 1)


def test_detectron2_names(tmp_path):
  state_dict = torch_export.to_torchvision(*_zeros('ResNet50'), 'ResNet50')
  d2 = torch_export.to_detectron2(state_dict)
  for key in ('stem.conv1.weight', 'stem.conv1.norm.weight',
              'stem.conv1.norm.running_var', 'res2.0.conv1.weight',
              'res2.0.conv2.norm.bias', 'res2.0.shortcut.weight',
              'res2.0.shortcut.norm.running_mean', 'res3.3.conv3.weight',
              'res5.2.conv3.norm.bias'):
    assert key in d2, key
  assert not any(k.startswith(('fc', 'stem.fc', 'layer')) or
                 'num_batches_tracked' in k or '.bn' in k for k in d2)
  num_bn = sum(k.endswith('num_batches_tracked') for k in state_dict)
  assert len(d2) == len(state_dict) - num_bn - 2
  np.testing.assert_array_equal(d2['res4.5.conv2.weight'],
                                state_dict['layer3.5.conv2.weight'])
  path = str(tmp_path / 'd2.pkl')
  torch_export.save_detectron2(path, state_dict)
  with open(path, 'rb') as f:
    saved = pickle.load(f)
  assert saved['__author__'] == 'torchvision' and saved['matching_heuristics']
  assert set(saved['model']) == set(d2)


def test_save_torch_without_torch(tmp_path, monkeypatch):
  state_dict = {'conv1.weight': np.ones((2, 3, 1, 1), np.float32),
                'bn1.num_batches_tracked': np.asarray(5, np.int64)}
  monkeypatch.setitem(sys.modules, 'torch', None)
  path = torch_export.save_torch(str(tmp_path / 'model.pth'), state_dict)
  assert path.endswith('model.npz')
  loaded = np.load(path)
  assert set(loaded) == set(state_dict)
  np.testing.assert_array_equal(loaded['conv1.weight'],
                                state_dict['conv1.weight'])


def test_save_torch(tmp_path):
  torch = pytest.importorskip('torch')
  state_dict = {'conv1.weight': np.ones((2, 3, 1, 1), np.float32)}
  path = torch_export.save_torch(str(tmp_path / 'model.pth'), state_dict)
  loaded = torch.load(path)
  assert torch.equal(loaded['conv1.weight'], torch.ones(2, 3, 1, 1))


def test_export_checkpoint(tmp_path, monkeypatch):
  params, state = _trained('ResNet18')
  fake = type(sys)('detcon.checkpoint')
  fake.restore_latest = lambda d: {
      'params': params, 'state': state, 'step': 7,
      'config': {'model': {'encoder': 'ResNet18', 'width_multiplier': 1,
                           'bn_eps': 1e-5}}}
  monkeypatch.setitem(sys.modules, 'detcon.checkpoint', fake)
  import detcon
  monkeypatch.setattr(detcon, 'checkpoint', fake, raising=False)
  out = export.export_checkpoint('unused', str(tmp_path / 'a.npy'), 'npy')
  got_params, _ = pretrained.import_npy(out, 'ResNet18')
  np.testing.assert_array_equal(got_params['encoder/initial_conv']['w'],
                                params['encoder/initial_conv']['w'])
  out = export.export_checkpoint('unused', str(tmp_path / 'a.pkl'),
                                 'detectron2')
  with open(out, 'rb') as f:
    assert 'res5.1.conv2.weight' in pickle.load(f)['model']
  out = export.export_checkpoint('unused', str(tmp_path / 'a.pth'),
                                 'torchvision')
  assert out.endswith(('.pth', '.npz'))


def test_cli_help():
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.export', '--helpshort'],
      capture_output=True, text=True, check=False, timeout=120)
  for flag in ('--checkpoint_dir', '--npy', '--output', '--format',
               '--encoder', '--[no]library_logs'):
    assert flag in result.stdout + result.stderr, flag


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.export',
       f'--checkpoint_dir={tmp_path / "none"}', f'--output={tmp_path / "a"}'],
      capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode != 0
  assert 'detcon.export: error: no checkpoint directory' in result.stderr
  assert 'Traceback' not in result.stderr
