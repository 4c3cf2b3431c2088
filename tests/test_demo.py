"""The built-in demo, end to end (`python -m detcon.demo --quick`)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detcon import checkpoint, demo, export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUICK_RUN = {}  # The one quick demo run of the test session.


def python(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=900)


def quick_demo_run(tmp_path_factory):
  """Runs the quick demo once per session: (output folder, its process).

  Other test modules (test_linear_eval) reuse its checkpoint and records.
  """
  if not _QUICK_RUN:
    out = tmp_path_factory.mktemp('demo') / 'out'
    result = python('-m', 'detcon.demo', '--quick', f'--output_dir={out}')
    assert result.returncode == 0, (result.stdout[-3000:],
                                    result.stderr[-3000:])
    _QUICK_RUN.update(out=str(out), result=result)
  return _QUICK_RUN['out'], _QUICK_RUN['result']


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  return quick_demo_run(tmp_path_factory)


def summary(stdout):
  """The final summary: {description: path}."""
  lines = stdout[stdout.index('Outputs:'):].splitlines()[1:]
  pairs = [line.strip().rsplit(': ', 1) for line in lines
           if line.startswith('  ')]
  return {what: path.strip() for what, path in pairs}


def test_summary_names_every_output_and_it_exists(quick):
  out, result = quick
  listed = summary(result.stdout)
  for rel, what in demo._LAYOUT.values():
    assert listed[what] == os.path.join(out, rel), what
    assert os.path.exists(listed[what]), what
  assert 'Linear evaluation: top-1' in result.stdout
  assert 'demo done in' in result.stdout


def test_pictures_are_valid_pngs(quick):
  _, result = quick
  pngs = [p for p in summary(result.stdout).values() if p.endswith('.png')]
  assert len(pngs) == 3
  for path in pngs:
    with Image.open(path) as image:
      assert image.format == 'PNG'
      image.verify()
    with Image.open(path) as image:
      width, height = image.size
      assert width >= 600 and height >= 300, path
      pixels = np.asarray(image.convert('RGB'))
      assert pixels.std() > 20, f'{path} is nearly blank'


def test_checkpoint_linear_eval_and_exports(quick):
  out, _ = quick
  restored = checkpoint.restore_latest(os.path.join(out, 'checkpoints'))
  assert restored['step'] == demo.QUICK.pretrain_steps
  assert restored['config'].model.encoder == demo.ENCODER
  with open(os.path.join(out, 'checkpoints', 'linear_eval.json')) as f:
    result = json.load(f)
  assert math.isfinite(result['top1']) and 0 <= result['top1'] <= 1
  assert result['top1'] <= result['top5'] <= 1
  assert result['num_examples'] == (demo.QUICK.num_classes
                                    * demo.QUICK.validation_images_per_class)
  assert result['eval_split'] == 'validation'
  assert result['pretrain_step'] == demo.QUICK.pretrain_steps
  params, state = export.load_npy(
      os.path.join(out, 'exports', 'resnet18_detcon_b.npy'))
  want_params, want_state = export.encoder_shapes(demo.ENCODER)
  assert params.keys() == want_params.keys()
  assert state.keys() == want_state.keys()
  torchvision = os.path.join(out, 'exports', 'resnet18_detcon_b.pth')
  assert os.path.getsize(torchvision) > 1_000_000


def test_console_shows_commands_and_their_messages_not_library_logs(quick):
  out, result = quick
  for command in ('generate_fh_masks_for_imagenet.py', 'detcon.main_loop',
                  'detcon.linear_eval', 'detcon.export'):
    assert f' {command}' in result.stdout, command
  assert 'main_loop.py' in result.stdout  # Its step lines.
  assert 'checkpoint_manager.py' not in result.stdout  # Orbax's INFO lines.
  with open(os.path.join(out, 'logs', 'main_loop.log')) as f:
    assert 'checkpoint_manager.py' in f.read()


def test_other_mode_in_same_folder_is_refused(quick):
  out, _ = quick
  result = python('-m', 'detcon.demo', f'--output_dir={out}')  # Not --quick.
  assert result.returncode != 0
  assert 'detcon.demo: error:' in result.stderr
  assert 'other settings' in result.stderr
  assert 'Traceback' not in result.stderr


def test_folder_with_other_files_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(demo.DemoError, match='holds no demo run'):
    demo.prepare_output_dir(str(tmp_path), demo.QUICK)
  assert os.listdir(tmp_path) == ['notes.txt']


def test_help_documents_every_flag():
  result = python('-m', 'detcon.demo', '--help')  # absl exits with 1.
  assert '--output_dir' in result.stdout
  assert '--[no]quick' in result.stdout
