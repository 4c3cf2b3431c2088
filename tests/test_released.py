"""Released checkpoints: reading, conversion, init_from, --npy.

The files are built here in the released layout (`tests.released_layout`),
not by renaming our own exports.
"""

import functools
import json
import logging
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from detcon import checkpoint, export, npy_io, torch_export, train
from detcon import pretrained as pretrained_lib
from tests import common, released_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50 = 'res_net50/~/'
R18 = 'res_net18/~/'
# Haiku's default names of the original's MLP -> ours (networks.MLP).
HEAD_NAMES = {'linear': 'linear_0', 'batch_norm': 'batchnorm',
              'linear_1': 'linear_1'}


@functools.cache
def _r50():
  return released_layout.released_dict()


def _r18(**kwargs):
  """A ResNet-18 in the released layout, heads fitting `tiny_config`."""
  return released_layout.released_dict(
      (2, 2, 2, 2), bottleneck=False, prefix=R18,
      **{'heads': (64, 32, 64), **kwargs})


@pytest.fixture(scope='module')
def r50_file(tmp_path_factory):
  return released_layout.save(
      tmp_path_factory.mktemp('released') /
      'resnet50_detcon_b_imagenet_1k.npy', _r50())


def _ours(module):
  """Our module name for a released one, from the description."""
  if module.startswith(R50):
    return 'encoder/' + module[len(R50):]
  head, *rest = module.split('/')
  if head in ('projector', 'predictor'):
    return '/'.join([head, HEAD_NAMES[rest[0]], *rest[1:]])
  return module


def test_released_file_imports_its_arrays(r50_file):
  pretrained = pretrained_lib.load_pretrained(r50_file)
  assert (pretrained.encoder, pretrained.width_multiplier) == ('ResNet50', 1)
  got = npy_io.flatten(pretrained.params, pretrained.state)
  want = {f'{_ours(m)}/{k}': v for m, d in _r50().items() for k, v in d.items()}
  assert set(got) == set(want)
  for key, value in want.items():
    if key.startswith(('projector/batchnorm', 'predictor/batchnorm')):
      if not key.endswith('counter'):  # Released [1, 1, H] -> ours [1, H].
        assert got[key].shape == (1, value.shape[-1]), key
      value = value.reshape(got[key].shape)
    np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got[key].dtype == value.dtype, key
  assert pretrained.state['encoder/initial_batchnorm/~/mean_ema'][
      'counter'].dtype == np.int32
  params, state = pretrained_lib.import_npy(r50_file, 'ResNet50', 1)
  assert jax.tree.structure((params, state)) == jax.tree.structure(
      (pretrained.params, pretrained.state))


def test_imported_encoder_equals_torchvision_forward(r50_file):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  pretrained = pretrained_lib.load_pretrained(r50_file)
  images = common.random_images(64)
  got = np.asarray(common.encoder_forward('ResNet50')(
      pretrained.params, pretrained.state, images))
  # Independent of our encoder: torchvision with the weights mapped here.
  model = torchvision.models.resnet50()
  model.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in
       released_layout.torchvision_state_dict(_r50(), R50).items()},
      strict=True)
  want, want_logits = common.torch_features(
      torch_export.patch_tf_same_padding(model).eval(), images)
  scale = np.abs(want).max()
  assert got.shape == want.shape == (2, 2, 2, 2048) and scale > 1e-2
  np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
  classifier = pretrained.params['classifier']
  logits = got.mean((1, 2)) @ classifier['w'] + classifier['b']
  np.testing.assert_allclose(logits, want_logits,
                             atol=1e-4 * np.abs(want_logits).max(), rtol=0)


def test_convert_released_file_to_every_format(r50_file, tmp_path):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  want = released_layout.torchvision_state_dict(_r50(), R50)
  path = export.convert_npy(r50_file, str(tmp_path / 'r50.pth'), 'torchvision')
  state_dict = torch.load(path)
  assert set(state_dict) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(state_dict[key].numpy(), value, key)
  torchvision.models.resnet50().load_state_dict(state_dict, strict=True)

  path = export.convert_npy(r50_file, str(tmp_path / 'r50.pkl'), 'detectron2')
  with open(path, 'rb') as f:
    d2 = pickle.load(f)['model']
  np.testing.assert_array_equal(d2['res5.2.conv3.norm.running_var'],
                                want['layer4.2.bn3.running_var'])

  path = export.convert_npy(r50_file, str(tmp_path / 'r50.npy'), 'npy')
  flat = np.load(path, allow_pickle=True).item()
  np.testing.assert_array_equal(flat['encoder/initial_conv/w'],
                                _r50()[R50 + 'initial_conv']['w'])
  np.testing.assert_array_equal(flat['predictor/linear_1/w'],
                                _r50()['predictor/linear_1']['w'])
  again = pretrained_lib.load_pretrained(path)  # Our flat layout, read back.
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(
      pretrained_lib.load_pretrained(r50_file)), strict=True):
    np.testing.assert_array_equal(a, b)


def _export_cli(*args):
  return subprocess.run([sys.executable, '-m', 'detcon.export', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_export_cli_converts_a_released_file(tmp_path):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  tree = _r18()
  npy = released_layout.save(tmp_path / 'r18.npy', tree)
  output = tmp_path / 'r18.pth'
  result = _export_cli(f'--npy={npy}', '--format=torchvision',
                       f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  state_dict = torch.load(output)
  want = released_layout.torchvision_state_dict(tree, R18)
  for key, value in want.items():
    np.testing.assert_array_equal(state_dict[key].numpy(), value, key)
  torchvision.models.resnet18(num_classes=1000).load_state_dict(
      state_dict, strict=True)
  # Checked against the encoder asked for: a clear error, no traceback.
  result = _export_cli(f'--npy={npy}', '--encoder=ResNet34',
                       f'--output={tmp_path / "x.pth"}')
  assert result.returncode != 0
  assert 'detcon.export: error:' in result.stderr
  assert 'does not fit ResNet34' in result.stderr
  # 8 more blocks of 2 convolutions: w, and 2 + 6 BatchNorm arrays each.
  assert '144 missing' in result.stderr
  assert f'{R18}block_group_0/~/block_2/~/batchnorm_0/offset' in result.stderr
  assert 'Traceback' not in result.stderr


def test_resnet200_layout_is_recognised():
  tree = released_layout.released_dict(
      released_layout.RESNET200, prefix='res_net200/~/', random=False)
  pretrained = pretrained_lib.pretrained_from_dict(tree)
  assert (pretrained.encoder, pretrained.width_multiplier) == ('ResNet200', 1)
  assert ('encoder/block_group_2/~/block_35/~/conv_2' in pretrained.params)
  assert len(pretrained.params) + len(pretrained.state) == len(tree)
  # Asked for ResNet-50: the blocks beyond it are unexpected.
  beyond = [f'{m}/{k}' for m, d in tree.items() for k in d
            if m.startswith('res_net200/~/block_group_')
            and int(m.split('/~/')[2][6:]) >= (3, 4, 6, 3)[int(
                m.split('/~/')[1][12:])]]
  with pytest.raises(ValueError) as error:
    pretrained_lib.pretrained_from_dict(tree, 'ResNet50', what='r200.npy')
  message = str(error.value)
  assert 'r200.npy does not fit ResNet50' in message
  assert f'{len(beyond)} unexpected' in message
  assert 'missing' not in message and 'wrong shape' not in message


def test_truncated_file_lists_missing_unexpected_misshaped(tmp_path):
  tree = released_layout.released_dict(random=False)
  del tree[R50 + 'block_group_2/~/block_5/~/conv_1']
  del tree[R50 + 'block_group_1/~/block_0/~/batchnorm_0/~/var_ema']
  del tree['predictor/linear_1']
  tree[R50 + 'block_group_3/~/block_0/~/conv_1'] = {
      'w': np.zeros((3, 3, 1, 1), np.float32)}
  tree['target/extra'] = {'w': np.zeros((2,), np.float32)}
  path = released_layout.save(tmp_path / 'truncated.npy', tree)
  with pytest.raises(ValueError) as error:
    pretrained_lib.load_pretrained(path)
  message = str(error.value)
  assert f'{path} does not fit ResNet50' in message
  assert '5 missing' in message
  for name in (R50 + 'block_group_2/~/block_5/~/conv_1/w',
               R50 + 'block_group_1/~/block_0/~/batchnorm_0/~/var_ema/hidden',
               'predictor/linear_1/w'):
    assert f'    {name}\n' in message, name
  assert '1 unexpected:\n    target/extra/w' in message
  assert ('1 wrong shape:\n    ' + R50 + 'block_group_3/~/block_0/~/conv_1/w: '
          '(3, 3, 1, 1) (expected (3, 3, 512, 512))') in message


def test_foreign_or_unreadable_file_is_a_clear_error(tmp_path):
  foreign = {'conv1.weight': np.zeros((64, 3, 7, 7), np.float32),
             'layer1.0.bn1.bias': np.zeros((64,), np.float32)}
  path = released_layout.save(tmp_path / 'torchvision.npy', foreign)
  with pytest.raises(ValueError) as error:
    pretrained_lib.load_pretrained(path)
  message = str(error.value)
  assert 'holds no ResNet encoder' in message
  assert '2 unexpected:\n    conv1.weight\n    layer1.0.bn1.bias' in message
  encoder = released_layout.released_dict(heads=None, num_classes=0,
                                          random=False)
  num_arrays = sum(len(d) for d in encoder.values())
  assert (f'{num_arrays} missing:\n    encoder/block_group_0/~/block_0/~/'
          'batchnorm_0/offset\n') in message
  assert f'... and {num_arrays - 20} more' in message
  text = tmp_path / 'notes.npy'
  text.write_text('not an array')
  with pytest.raises(ValueError, match='not a readable .npy file'):
    pretrained_lib.load_pretrained(str(text))
  np.save(tmp_path / 'array.npy', np.zeros(3))
  with pytest.raises(ValueError, match='holds no pickled dict'):
    pretrained_lib.load_pretrained(str(tmp_path / 'array.npy'))
  with pytest.raises(FileNotFoundError, match='no such .npy file'):
    pretrained_lib.load_pretrained(str(tmp_path / 'none.npy'))


# init_from_pretrained, on the trees of the tiny pretraining network.


def _network(config, fill=7.0):
  """`(params, state)` of `train.make_network`, every leaf `fill`."""
  net = train.make_network(config, None)
  size, k = config.image_size, config.detcon.num_samples
  cells = train.grid_size(size) ** 2
  shapes = jax.eval_shape(
      lambda rng, x, w: net.init(rng, x, w, True), jax.random.key(0),
      jax.ShapeDtypeStruct((2, size, size, 3), np.float32),
      jax.ShapeDtypeStruct((2, k, cells), np.float32))
  return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), shapes)


def _full_width_config():
  """`common.tiny_config` at width 1, the released files' width."""
  config = common.tiny_config()
  config.model.width_multiplier = 1
  return config


def test_init_from_pretrained_replaces_encoder_and_heads(caplog):
  pretrained = pretrained_lib.pretrained_from_dict(_r18(seed=3), what='r18.npy')
  config = _full_width_config()  # num_classes 4: the file has 1000.
  params, state = _network(config)
  with caplog.at_level(logging.WARNING):
    new_params, new_state = pretrained_lib.init_from_pretrained(params, state,
                                                        pretrained)
  assert 'num_classes=1000' in caplog.text
  want = npy_io.flatten(pretrained.params, pretrained.state)
  got = npy_io.flatten(new_params, new_state)
  assert set(got) == set(npy_io.flatten(params, state))
  replaced = [k for k in got if k.split('/')[0] in ('encoder', 'projector',
                                                    'predictor')]
  assert len(replaced) == len(want) - 2  # All but the classifier's w, b.
  for key in replaced:
    np.testing.assert_array_equal(got[key], want[key], key)
    assert got[key].dtype == want[key].dtype
  np.testing.assert_array_equal(got['classifier/w'], 7.0)  # Kept.
  np.testing.assert_array_equal(params['encoder/initial_conv']['w'], 7.0)
  # A network with the file's 1000 classes takes its classifier too.
  config.num_classes = 1000
  new_params, _ = pretrained_lib.init_from_pretrained(*_network(config),
                                                      pretrained)
  np.testing.assert_array_equal(new_params['classifier']['b'],
                                want['classifier/b'])


@pytest.mark.parametrize('field,value,message', [
    ('projector_hidden_size', 128, '--config.model.projector_hidden_size=64'),
    ('predictor_hidden_size', 16, '--config.model.predictor_hidden_size=64'),
    ('width_multiplier', 2, '--config.model.width_multiplier=1'),
])
def test_init_from_pretrained_names_the_config_to_fix(field, value, message):
  pretrained = pretrained_lib.pretrained_from_dict(_r18(random=False))
  config = _full_width_config()
  config.model[field] = value
  with pytest.raises(ValueError, match='wrong shape') as error:
    pretrained_lib.init_from_pretrained(*_network(config), pretrained)
  assert message in str(error.value)


# --npy of linear_eval, on the quick demo's records.


def _linear_eval(*args):
  return subprocess.run([sys.executable, '-m', 'detcon.linear_eval', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_linear_eval_reads_a_released_file(quick_demo, tmp_path):
  out, _ = quick_demo
  npy = released_layout.save(tmp_path / 'r18.npy', _r18(num_classes=0))
  result = _linear_eval(f'--npy={npy}', '--encoder=ResNet18',
                        f'--dataset_directory={os.path.join(out, "records")}',
                        '--num_steps=2', '--batch_size=4', '--image_size=32',
                        '--eval_split=train')
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed['npy'] == npy and printed['eval_split'] == 'train'
  assert printed['num_examples'] == 12  # Every train record of the demo.
  assert 0 <= printed['top1'] <= printed['top5'] <= 1
  assert 'ResNet18 (' + npy in result.stderr
  assert not list(tmp_path.glob('*.json'))  # Printed only.


def test_linear_eval_help_and_source_flags():
  result = _linear_eval('--help')
  for flag in ('--npy', '--encoder', '--checkpoint_dir'):
    assert flag in result.stdout, flag
  result = _linear_eval('--npy=a.npy', '--checkpoint_dir=b')
  assert result.returncode != 0
  assert 'exactly one of --checkpoint_dir' in result.stderr


def test_main_loop_init_from_starts_from_the_file(tmp_path):
  """A zero-learning-rate step keeps the imported weights, online and target.

  (BatchNorm statistics move with the step, as in any training step.)
  """
  path = released_layout.save(tmp_path / 'r18.npy', _r18(num_classes=3))
  ckpt = str(tmp_path / 'ckpt')
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.main_loop', *common.TINY,
       '--config.model.width_multiplier=1',  # The file's width.
       '--config.mock_data=true', '--max_steps=1', f'--checkpoint_dir={ckpt}',
       f'--config.init_from={path}', '--config.optimizer.base_learning_rate=0'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Initialised the online and target network from' in result.stderr
  restored = checkpoint.restore_latest(ckpt)
  want = pretrained_lib.load_pretrained(str(path))
  for module, leaves in want.params.items():
    for name, value in leaves.items():
      np.testing.assert_array_equal(restored['params'][module][name], value,
                                    err_msg=f'{module}/{name}')
      if module.split('/')[0] in ('encoder', 'projector'):
        # The step's EMA, tau x w + (1 - tau) x w, is w up to its rounding.
        np.testing.assert_array_max_ulp(
            restored['target_params'][module][name], value, maxulp=1)
