"""The built-in demo, end to end (`python -m detcon.demo --quick`)."""

import io
import itertools
import json
import math
import os
import re

import numpy as np
import pytest
import tqdm
from PIL import Image

from detcon import checkpoint, demo, npy_io, pretrained
from detcon.tools import commands
from tests.common import python


def summary(stdout):
  """The final summary: {description: path}."""
  lines = stdout[stdout.index('Outputs:'):].splitlines()[1:]
  listed = itertools.takewhile(lambda line: line.startswith('  '), lines)
  pairs = [line.strip().rsplit(': ', 1) for line in listed]
  return {what: path.strip() for what, path in pairs}


def test_summary_names_every_output_and_it_exists(quick_demo):
  out, result = quick_demo
  listed = summary(result.stdout)
  assert not demo.QUICK.dense_random_baseline
  for name, (rel, what) in demo._LAYOUT.items():
    if name == 'dense_random':  # Full mode only.
      assert what not in listed
      continue
    assert listed[what] == os.path.join(out, rel), what
    assert os.path.exists(listed[what]), what
  assert 'Linear evaluation: top-1' in result.stdout
  assert 'demo done in' in result.stdout


def test_pictures_are_valid_pngs(quick_demo):
  _, result = quick_demo
  pngs = [p for p in summary(result.stdout).values() if p.endswith('.png')]
  assert len(pngs) == 4
  for path in pngs:
    with Image.open(path) as image:
      assert image.format == 'PNG'
      image.verify()
    with Image.open(path) as image:
      width, height = image.size
      assert width >= 600 and height >= 300, path
      pixels = np.asarray(image.convert('RGB'))
      assert pixels.std() > 20, f'{path} is nearly blank'


def test_checkpoint_linear_eval_and_exports(quick_demo):
  out, _ = quick_demo
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
  params, state = npy_io.load_npy(
      os.path.join(out, 'exports', 'resnet18_detcon_b.npy'))
  want_params, want_state = pretrained.encoder_shapes(demo.ENCODER)
  assert params.keys() == want_params.keys()
  assert state.keys() == want_state.keys()
  torchvision = os.path.join(out, 'exports', 'resnet18_detcon_b.pth')
  assert os.path.getsize(torchvision) > 1_000_000


def test_dense_evaluation_on_generated_scenes(quick_demo):
  out, result = quick_demo
  with open(os.path.join(out, 'checkpoints', 'dense_eval.json')) as f:
    dense = json.load(f)
  assert dense['num_eval_images'] == demo.QUICK.scene_val_images
  for protocol in ('linear', 'nn'):
    assert 0 <= dense[protocol]['miou'] <= 1
    assert len(dense[protocol]['per_class_iou']) == 6
    assert f'{protocol:6s} mIoU {dense[protocol]["miou"]:.4f}' in result.stdout
  assert (f'linear probe mIoU {dense["linear"]["miou"]:.3f}'
          in result.stdout)
  assert ' detcon.scenes' in result.stdout
  assert ' detcon.dense_eval' in result.stdout


def test_console_shows_commands_and_their_messages_not_library_logs(quick_demo):
  out, result = quick_demo
  for command in ('generate_fh_masks_for_imagenet.py', 'detcon.main_loop',
                  'detcon.linear_eval', 'detcon.export'):
    assert f' {command}' in result.stdout, command
  assert 'main_loop.py' in result.stdout  # Its messages.
  assert 'checkpoint_manager.py' not in result.stdout  # Orbax's INFO lines.
  with open(os.path.join(out, 'logs', 'main_loop.log')) as f:
    assert 'checkpoint_manager.py' in f.read()


def test_console_shows_final_progress_bars_not_step_lines(quick_demo):
  out, result = quick_demo
  steps = demo.QUICK.pretrain_steps
  images = demo.QUICK.num_classes * (demo.QUICK.train_images_per_class
                                     + demo.QUICK.validation_images_per_class)
  assert '\r' not in result.stdout  # Off a terminal: final states only.
  lines = result.stdout.splitlines()
  pretrain = [x for x in lines if f'| {steps}/{steps} [' in x]
  assert len(pretrain) == 1 and pretrain[0].startswith('  | 100%')
  assert re.search(r'loss=\d+\.\d+, [\d.]+ images/s', pretrain[0])
  assert sum(f'| {images}/{images} [' in x for x in lines) == 1  # Masks.
  assert '] step ' not in result.stdout
  with open(os.path.join(out, 'logs', 'main_loop.log')) as f:
    log = f.read()
  assert '\r' not in log
  for step in range(1, steps + 1):
    assert re.search(rf'main_loop\.py:\d+\] step {step}: .*loss=', log)
  assert pretrain[0][len('  | '):] in log.splitlines()


def main_loop_output() -> bytes:
  """What `detcon.main_loop --progress_bar=on` writes over 3 steps.

  A real tqdm bar, cleared before each log line as the main loop does.
  """
  out = io.StringIO()
  prefix = 'I1123 10:00:00.000000 1401 main_loop.py:{}] '
  out.write(prefix.format(201) + 'Pretraining ResNet18 for 3 steps.\n')
  bar = tqdm.tqdm(total=3, file=out, unit='step', mininterval=0, miniters=1)
  for step in range(1, 4):
    bar.clear()
    out.write(prefix.format(343) + f'step {step}: loss={1 / step:.4f}\n')
    bar.set_postfix_str(f'loss={1 / step:.4f}', refresh=False)
    bar.update(1)
  bar.close()
  out.write('{"loss": 0.3333}\n')
  return out.getvalue().encode()


def screen(text):
  """The lines a terminal shows after `text`: '\r' returns to column 0."""
  lines, column = [''], 0
  for char in text:
    if char == '\n':
      lines.append('')
      column = 0
    elif char == '\r':
      column = 0
    else:
      line = lines[-1]
      lines[-1] = line[:column] + char + line[column + 1:]
      column += 1
  return [line.rstrip() for line in lines]


@pytest.mark.parametrize('live', [False, True])
@pytest.mark.parametrize('chunk', [7, 1 << 16])
def test_relay_shows_lines_and_one_bar_logs_every_line(live, chunk):
  output = main_loop_output()
  log, console = io.StringIO(), io.StringIO()
  commands.relay(
      [output[i:i + chunk] for i in range(0, len(output), chunk)], log,
      console, live, demo.shown_on_console)
  final_bar = '100%|##########| 3/3'
  shown = screen(console.getvalue())
  assert len(shown) == 4 and shown[-1] == ''
  assert shown[0].startswith('  | I1123') and 'Pretraining' in shown[0]
  assert shown[1].startswith(f'  | {final_bar}') and 'loss=0.3333' in shown[1]
  assert shown[2] == '  | {"loss": 0.3333}'
  if live and chunk == 7:  # States drawn in place as they came.
    assert '\r  | ' in console.getvalue()
    assert '| 2/3 [' in console.getvalue()
  if not live:
    assert '\r' not in console.getvalue()
  logged = log.getvalue().splitlines()
  assert '\r' not in log.getvalue()
  assert [x for x in logged if '] step ' in x] == [
      f'I1123 10:00:00.000000 1401 main_loop.py:343] step {s}: '
      f'loss={1 / s:.4f}' for s in (1, 2, 3)]
  assert logged[-2].startswith(final_bar) and len(logged) == 6


def test_other_mode_in_same_folder_is_refused(quick_demo):
  out, _ = quick_demo
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
