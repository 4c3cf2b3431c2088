"""The repository as a package: the wheel builds, imports and runs outside.

The wheel is built from a copy of the checkout (no build files land in it)
with `pip wheel --no-deps --no-build-isolation` (offline: setuptools from the
environment), then unpacked into a folder that is put on `PYTHONPATH` of
subprocesses running elsewhere, so nothing can come from the checkout.
"""

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from detcon import entry_points, sample_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not part of a source tree: local build outputs, caches, data.
_NOT_SOURCE = shutil.ignore_patterns(
    '.git', '__pycache__', '*.pyc', 'build', 'dist', '*.egg-info',
    '.pytest_cache', '.ruff_cache', '.venv', 'tmp', 'demo_output',
    '*.tfrecord')


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """Path of the wheel built from a copy of the checkout."""
  tmp = tmp_path_factory.mktemp('packaging')
  tree = tmp / 'tree'
  shutil.copytree(REPO, tree, ignore=_NOT_SOURCE)
  out = tmp / 'wheel'
  done = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
       '--no-build-isolation', '--quiet', '-w', str(out), str(tree)],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  (path,) = out.glob('detcon-*.whl')
  return path


@pytest.fixture(scope='module')
def unpacked(wheel, tmp_path_factory):
  """The wheel's files, as they would sit in site-packages."""
  root = tmp_path_factory.mktemp('site')
  with zipfile.ZipFile(wheel) as z:
    z.extractall(root)
  return root


def run_outside(unpacked, tmp_path, *args):
  """`python *args` in an empty folder, importing from the wheel only."""
  env = dict(os.environ, PYTHONPATH=str(unpacked), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_package_and_the_mask_script_only(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  assert {'detcon/__init__.py', 'detcon/main_loop.py',
          'detcon/entry_points.py', 'detcon/configs/detcon_b.py',
          'generate_fh_masks_for_imagenet.py'} <= names
  tops = {n.split('/')[0] for n in names if not n.startswith('detcon-')}
  assert tops == {'detcon', 'generate_fh_masks_for_imagenet.py'}


def test_package_imports_from_the_wheel_outside_the_checkout(unpacked,
                                                             tmp_path):
  done = run_outside(
      unpacked, tmp_path, '-c',
      'import detcon.main_loop, detcon.entry_points, '
      'generate_fh_masks_for_imagenet as g; '
      'print(detcon.main_loop.__file__); print(g.__file__)')
  assert done.returncode == 0, done.stderr
  files = done.stdout.split()
  assert len(files) == 2
  for path in files:
    assert os.path.commonpath([path, str(unpacked)]) == str(unpacked), path


def test_every_command_is_a_declared_entry_point(unpacked):
  (info,) = unpacked.glob('detcon-*.dist-info')
  parser = configparser.ConfigParser()
  parser.read(info / 'entry_points.txt')
  scripts = dict(parser['console_scripts'])
  assert set(scripts) == set(entry_points.COMMANDS)
  for name, target in scripts.items():
    module, function = target.split(':')
    assert module == 'detcon.entry_points'
    assert callable(getattr(entry_points, function)), name
    command_module = entry_points.COMMANDS[name].replace('.', '/') + '.py'
    assert (unpacked / command_module).is_file(), command_module
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  assert 'torch' in project['optional-dependencies']
  assert any(d.startswith('jax>=') for d in project['dependencies'])


def test_mask_entry_point_writes_records_from_the_wheel(unpacked, tmp_path):
  """`detcon-generate-masks` runs the script, worker processes included."""
  images = tmp_path / 'images'
  sample_data.make_imagenet_folder(str(images), num_classes=2,
                                   images_per_class=2, min_side=48,
                                   max_side=64)
  output = tmp_path / 'records'
  done = run_outside(
      unpacked, tmp_path, '-c',
      'from detcon.entry_points import generate_masks; generate_masks()',
      f'--train_directory={images}', f'--output_directory={output}',
      '--train_shards=1', '--num_threads=1', '--fh_scales=100',
      '--fh_min_sizes=50')
  assert done.returncode == 0, done.stdout + done.stderr
  assert (output / 'train-00000-of-00001').stat().st_size > 0


def test_mask_entry_point_keeps_the_scripts_required_flag(unpacked, tmp_path):
  done = run_outside(
      unpacked, tmp_path, '-c',
      'from detcon.entry_points import generate_masks; generate_masks()',
      f'--train_directory={tmp_path}')
  assert done.returncode != 0
  assert 'output_directory' in done.stderr
