r"""The built-in demo: the whole DetCon-B job, small, on bundled photos.

  python -m detcon.demo --output_dir=demo_output  # ~5 minutes, 2 CPU cores
  python -m detcon.demo --quick                   # ~3 minutes (the tests')

Every phase runs the real code; the commands are printed so that they can be
rerun by hand on real data:

  1. photos: ImageNet-style folders `images/train/<synset>/*.JPEG` and
     `images/validation/...` of crops of the photos that ship with
     scikit-image (`detcon.sample_data`; no download);
  2. masks: `generate_fh_masks_for_imagenet.py` writes TFRecords with FH
     masks to `records/`;
  3. pictures of the FH segmentations (`segmentations.png`) and of two
     augmented views with the encoder's cell grid and the sampled masks
     (`views.png`), from the real input pipeline and mask sampling;
  4. pretraining: `python -m detcon.main_loop`, ResNet-18 with small heads
     and a learning rate raised for the tiny batch (see `Settings`),
     checkpoints and TensorBoard events in `checkpoints/`;
  5. linear evaluation: `python -m detcon.linear_eval`, result in
     `checkpoints/linear_eval.json`;
  6. dense evaluation, what DetCon is for: `python -m detcon.scenes` writes
     multi-object scenes in the PASCAL VOC layout (`scenes/`), and
     `python -m detcon.dense_eval` scores the frozen encoder on them (linear
     probe and nearest-neighbour mIoU, `checkpoints/dense_eval.json`, the
     picture `checkpoints/dense_eval.png`), beside random weights (full mode);
  7. export: `python -m detcon.export` to NumPy and torchvision (`exports/`);
  8. the loss curves from the TensorBoard events (`loss_curve.png`).

It ends with a list of where everything is. The console shows each command's
own messages and its progress bar (redrawn in place on a terminal, else its
final state only); their full output, library logs and the main loop's
metrics of every step included, is in `logs/`.
Rerunning the same command resumes: the mask script keeps its complete shards
and pretraining continues from its checkpoint. A folder that holds anything
else, or a demo run in the other mode (--quick or not), is refused.
"""

import colorsys
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import time
import types
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from PIL import Image
from skimage import segmentation

from detcon import augment, cli, plots, records, sample_data, train
from detcon.configs import detcon_b
from detcon.tools import commands

_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', 'demo_output',
    'Folder for everything the demo writes (created; must be new, empty or '
    'a demo run of the same mode, which is then resumed).')
_QUICK = flags.DEFINE_bool(
    'quick', False, 'The reduced run of the test suite: a tiny folder, 3 '
    'pretraining steps at 64x64, a few linear-evaluation steps (~3 minutes '
    'on 2 CPU cores instead of ~5).')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER = 'ResNet18'
SETTINGS_FILE = 'demo_settings.json'
SEED = 0
TILE = 192  # Side of one picture tile, pixels.
# Console lines in absl/glog format: level, date, time, thread, source file,
# message.
_LOG_LINE = re.compile(
    r'^([IWEF])\d{4} [\d:.]+\s+\d+ ([^:\]]+):\d+\] (.*)')
# The sources whose log lines are shown; other libraries' go to logs/ only.
_SHOWN_SOURCES = ('generate_fh_masks_for_imagenet.py', 'main_loop.py',
                  'linear_eval.py', 'dense_eval.py', 'export.py')
# The main loop's metrics of each step go to logs/ only; on the console, its
# progress bar shows the latest loss.
_STEP_LINE = re.compile(r'step \d+: ')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The sizes of one demo run."""
  num_classes: int
  train_images_per_class: int
  validation_images_per_class: int
  min_side: int  # Photo side range, pixels.
  max_side: int
  fh_scale: int  # Felzenszwalb scale and minimum segment size (pixels).
  fh_min_size: int
  image_size: int  # Pretraining crop side, pixels.
  batch_size: int
  pretrain_steps: int
  # Peak learning rate = this x batch_size / 256. The config's 0.2 gives
  # batch 8 a rate of 0.006, under which LARS barely moves the weights in a
  # few hundred steps; 32 gives 1.0 (batch 4096 trains at 3.2).
  base_learning_rate: float
  head_size: int  # Projector and predictor hidden size.
  linear_eval_steps: int
  linear_eval_batch_size: int
  pictured_images: int  # Rows of the pictures.
  # Dense evaluation on generated scenes (detcon.scenes, detcon.dense_eval).
  scene_train_images: int
  scene_val_images: int
  # Scene side = dense evaluation image side, pixels. Full mode: 320, where
  # the stride-32 features are 10x10 cells and resolve the objects; at 128
  # an object is about one cell and random weights score as well as trained
  # ones (docs/studies.md).
  scene_size: int
  dense_linear_steps: int
  dense_random_baseline: bool  # Also evaluate random weights.


QUICK = Settings(
    num_classes=3, train_images_per_class=4, validation_images_per_class=2,
    min_side=64, max_side=128, fh_scale=100, fh_min_size=50, image_size=64,
    batch_size=4, pretrain_steps=3, base_learning_rate=32.0, head_size=64,
    linear_eval_steps=4, linear_eval_batch_size=8, pictured_images=3,
    scene_train_images=8, scene_val_images=4, scene_size=64,
    dense_linear_steps=10, dense_random_baseline=False)
FULL = Settings(
    num_classes=4, train_images_per_class=16, validation_images_per_class=6,
    min_side=96, max_side=192, fh_scale=200, fh_min_size=150, image_size=96,
    batch_size=8, pretrain_steps=150, base_learning_rate=32.0, head_size=256,
    linear_eval_steps=100, linear_eval_batch_size=16, pictured_images=4,
    scene_train_images=160, scene_val_images=40, scene_size=320,
    dense_linear_steps=300, dense_random_baseline=True)


class DemoError(Exception):
  """A phase failed; the message says which and where its log is."""


# Commands with `--library_logs` (detcon/log_setup.py).
LIBRARY_LOG_COMMANDS = ('detcon.main_loop', 'detcon.linear_eval',
                        'detcon.dense_eval', 'detcon.export', 'detcon.predict')

# Name -> (path under the output folder, what it is, for the summary).
_LAYOUT = {
    'train_images': ('images/train', 'photos, ImageNet layout (train)'),
    'validation_images': ('images/validation',
                          'photos, ImageNet layout (validation)'),
    'records': ('records', 'TFRecords with FH masks'),
    'segmentations': ('segmentations.png', 'picture: FH segmentations'),
    'views': ('views.png', 'picture: views, cell grid, sampled masks'),
    'checkpoints': ('checkpoints', 'pretraining checkpoints'),
    'tensorboard': ('checkpoints/tensorboard', 'TensorBoard events'),
    'linear_eval': ('checkpoints/linear_eval.json', 'linear evaluation'),
    'scenes': ('scenes/voc', 'generated scenes, VOC layout'),
    'dense_eval': ('checkpoints/dense_eval.json', 'dense evaluation'),
    'dense_picture': ('checkpoints/dense_eval.png',
                      'picture: dense predictions'),
    'dense_random': ('dense_eval_random.json',
                     'dense evaluation, random weights'),
    'export_npy': (f'exports/{ENCODER.lower()}_detcon_b.npy',
                   'backbone, NumPy dict'),
    'export_torchvision': (f'exports/{ENCODER.lower()}_detcon_b.pth',
                           'backbone, torchvision state_dict'),
    'loss_curve': ('loss_curve.png', 'picture: loss curves'),
    'logs': ('logs', 'full output of each command'),
}
# Attributes: each name of _LAYOUT (its absolute path) and `root`.
Paths = types.SimpleNamespace


def prepare_output_dir(output_dir: str, settings: Settings) -> Paths:
  """Checks and creates the output folder; records the run's settings.

  Returns:
    The absolute paths of the outputs.

  Raises:
    DemoError: the folder holds something other than a demo run of these
      settings.
  """
  root = os.path.abspath(output_dir)
  paths = Paths(root=root, **{name: os.path.join(root, rel)
                              for name, (rel, _) in _LAYOUT.items()})
  marker = os.path.join(root, SETTINGS_FILE)
  wanted = dataclasses.asdict(settings)
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) != wanted:
        raise DemoError(
            f'{paths.root} holds a demo run with other settings (the other '
            'mode, --quick or not); choose another --output_dir or delete it')
  elif os.path.isdir(paths.root) and os.listdir(paths.root):
    raise DemoError(f'{paths.root} is not empty and holds no demo run; choose '
                    'a new or empty --output_dir')
  os.makedirs(paths.logs, exist_ok=True)
  with open(marker, 'w') as f:
    json.dump(wanted, f, indent=2)
  return paths


def shown_on_console(line: str) -> bool:
  """Whether a command's output line goes to the console (all go to logs)."""
  match = _LOG_LINE.match(line)
  if not match:
    return True
  level, source, message = match.groups()
  source = os.path.basename(source)
  if source == 'main_loop.py' and _STEP_LINE.match(message):
    return False
  return level in 'EF' or source in _SHOWN_SOURCES


def run_command(name: str, args: Sequence[str], paths: Paths) -> None:
  """Runs `python *args` in the repository root, streaming its messages.

  Args:
    name: what runs, for messages; its whole output (stdout and stderr) goes
      to `<logs>/<name>.log`, progress bars but for their final state aside
      (see `tools.commands.relay`).
    args: the arguments after the Python interpreter.
    paths: the demo's paths.

  Raises:
    DemoError: the command exited with a non-zero code.
  """
  if args[0] == '-m' and args[1] in LIBRARY_LOG_COMMANDS:
    # The log files keep the libraries' detail; the console hides it.
    args = [*args, '--library_logs']
  try:
    commands.run(args, os.path.join(paths.logs, f'{name}.log'),
                 shown=shown_on_console, env={'TF_CPP_MIN_LOG_LEVEL': '1'})
  except commands.CommandError as e:
    raise DemoError(f'{name} {e}') from None


def make_folders(paths: Paths, settings: Settings) -> None:
  """Writes the train and validation photo folders (deterministic)."""
  for folder, per_class, seed in (
      (paths.train_images, settings.train_images_per_class, SEED),
      (paths.validation_images, settings.validation_images_per_class,
       SEED + 1)):
    sample_data.make_imagenet_folder(
        folder, num_classes=settings.num_classes, images_per_class=per_class,
        min_side=settings.min_side, max_side=settings.max_side, seed=seed)
  print(f'Wrote {settings.num_classes} classes x '
        f'{settings.train_images_per_class} train and '
        f'{settings.validation_images_per_class} validation photos to '
        f'{os.path.dirname(paths.train_images)}', flush=True)


def generate_masks(paths: Paths, settings: Settings) -> None:
  """Runs the mask script on the folders: TFRecords in `paths.records`."""
  run_command('generate_fh_masks_for_imagenet', [
      os.path.join(REPO, 'generate_fh_masks_for_imagenet.py'),
      f'--train_directory={paths.train_images}',
      f'--validation_directory={paths.validation_images}',
      f'--output_directory={paths.records}', '--train_shards=2',
      '--validation_shards=1', '--num_threads=2',
      f'--fh_scales={settings.fh_scale}',
      f'--fh_min_sizes={settings.fh_min_size}'], paths)


def pretrain(paths: Paths, settings: Settings) -> None:
  """Pretrains ResNet-18 with small heads by the real main loop."""
  hidden = settings.head_size
  run_command('main_loop', [
      '-m', 'detcon.main_loop', f'--dataset_directory={paths.records}',
      f'--checkpoint_dir={paths.checkpoints}', f'--encoder={ENCODER}',
      f'--image_size={settings.image_size}',
      f'--batch_size={settings.batch_size}',
      f'--max_steps={settings.pretrain_steps}', '--log_tensors_interval=0',
      '--progress_bar=on',
      f'--config.num_classes={settings.num_classes}',
      f'--config.optimizer.base_learning_rate={settings.base_learning_rate}',
      f'--config.model.projector_hidden_size={hidden}',
      f'--config.model.predictor_hidden_size={hidden}',
      f'--config.model.projector_output_size={hidden // 4}'], paths)


def linear_evaluation(paths: Paths, settings: Settings) -> dict:
  """Runs the linear evaluation CLI; returns its result dict."""
  run_command('linear_eval', [
      '-m', 'detcon.linear_eval', f'--checkpoint_dir={paths.checkpoints}',
      f'--dataset_directory={paths.records}',
      f'--num_steps={settings.linear_eval_steps}',
      f'--batch_size={settings.linear_eval_batch_size}',
      '--learning_rate=0.01'], paths)
  with open(paths.linear_eval) as f:
    return json.load(f)


def dense_evaluation(paths: Paths, settings: Settings) -> dict[str, dict]:
  """Scenes, then dense evaluation of the checkpoint (and random weights).

  Returns:
    {'pretrained': result, 'random': result (when in the settings)}.
  """
  run_command('scenes', [
      '-m', 'detcon.scenes', f'--output_dir={os.path.dirname(paths.scenes)}',
      f'--num_train={settings.scene_train_images}',
      f'--num_val={settings.scene_val_images}',
      f'--image_size={settings.scene_size}', f'--seed={SEED}'], paths)
  common = [f'--dataset_directory={paths.scenes}', '--num_classes=6',
            f'--image_size={settings.scene_size}',
            f'--linear_steps={settings.dense_linear_steps}', '--batch_size=8']
  run_command('dense_eval', ['-m', 'detcon.dense_eval',
                             f'--checkpoint_dir={paths.checkpoints}',
                             *common], paths)
  runs = {'pretrained': paths.dense_eval}
  if settings.dense_random_baseline:
    run_command('dense_eval_random', [
        '-m', 'detcon.dense_eval', '--init=random', f'--encoder={ENCODER}',
        f'--output={paths.dense_random}', '--picture=', *common], paths)
    runs['random'] = paths.dense_random
  results = {}
  for name, path in runs.items():
    with open(path) as f:
      results[name] = json.load(f)
  return results


def export_backbone(paths: Paths) -> dict[str, str]:
  """Exports the backbone to NumPy and torchvision; returns {key: path}."""
  written = {}
  for key, fmt in (('export_npy', 'npy'),
                   ('export_torchvision', 'torchvision')):
    path = getattr(paths, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run_command(f'export_{fmt}', [
        '-m', 'detcon.export', f'--checkpoint_dir={paths.checkpoints}',
        f'--output={path}', f'--format={fmt}'], paths)
    # Without torch, the torchvision export writes NumPy arrays to `.npz`.
    npz = os.path.splitext(path)[0] + '.npz'
    written[key] = path if os.path.exists(path) else npz
  return written


# Pictures.


def id_colours(ids: np.ndarray) -> np.ndarray:
  """A bright colour per integer id: uint8 `[..., 3]` for ids `[...]`."""
  unique, inverse = np.unique(ids, return_inverse=True)
  hues = (unique * 0.618034) % 1.0  # Golden ratio: neighbours differ.
  rgb = np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues])
  return (rgb[inverse.reshape(np.shape(ids))] * 255).astype(np.uint8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
  """float `[H, W, 3]` in [0, 1] -> uint8."""
  return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _read_records(paths: Sequence[str], count: int) -> list[dict]:
  """The first record of each class, up to `count` of them.

  Returns:
    dicts of `image` (uint8 `[H, W, 3]`), `masks` (int32 `[n, H, W]`),
    `filename` and `synset`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for serialized in tf.data.TFRecordDataset(list(paths)):
    if len(out) == count:
      break
    r = records.read_example(serialized.numpy())
    if r['synset'] in out:
      continue
    image = Image.open(io.BytesIO(r['image']))
    out[r['synset']] = dict(image=np.asarray(image.convert('RGB')),
                            masks=r['masks'], filename=r['filename'],
                            synset=r['synset'])
  return list(out.values())


def draw_segmentations(paths: Paths, settings: Settings) -> None:
  """Writes photos of each class with their FH segments (train records)."""
  # Imported here, as below: TensorFlow loads only once there are records to
  # read (not for --help or a refused folder).
  from detcon import data  # pylint: disable=g-import-not-at-top
  rows = []
  for r in _read_records(data.find_shards(paths.records, 'train'),
                         settings.pictured_images):
    labels = r['masks'][0]
    overlay = (0.45 * r['image'] + 0.55 * id_colours(labels)).astype(np.uint8)
    edges = segmentation.mark_boundaries(r['image'], labels, (1, 1, 0))
    count = len(np.unique(labels))
    rows.append([(r['image'], f'{r["filename"]} ({r["synset"]})'),
                 (_to_uint8(edges), f'{count} FH segments'),
                 (overlay, 'one colour per segment')])
  plots.image_sheet(
      paths.segmentations, rows, 'Felzenszwalb-Huttenlocher segmentations '
      f'(scale={settings.fh_scale}, min_size={settings.fh_min_size}) stored '
      'in the records', [
          'DetCon uses these unsupervised segments as its objects: features '
          'are pooled per segment,',
          'and the same segment in the two views of an image is a positive '
          'pair.',
      ])


def _upscale(image: np.ndarray) -> np.ndarray:
  """uint8 `[S, S, 3]` -> `[TILE, TILE, 3]`, nearest neighbour."""
  return np.array(Image.fromarray(image).resize((TILE, TILE),
                                                Image.Resampling.NEAREST))


def _cell(c: int, grid: int) -> tuple[slice, slice]:
  """The rows and columns of cell `c` (row-major) of a `TILE`-px tile."""
  y, x = divmod(c, grid)
  step = TILE / grid
  return (slice(round(y * step), round((y + 1) * step)),
          slice(round(x * step), round((x + 1) * step)))


def _cells_tile(image: np.ndarray, cell_ids: np.ndarray, sampled: set[int],
                grid: int) -> tuple[np.ndarray, list[plots.Label]]:
  """The view with each cell tinted by its mask id if sampled, else dimmed.

  Args:
    image: uint8 `[S, S, 3]`.
    cell_ids: `[grid * grid]` majority id of each cell, row-major.
    sampled: the ids sampled for this view.
    grid: cells per side.

  Returns:
    The tile, uint8 `[TILE, TILE, 3]`, each sampled cell outlined in its id's
    colour, and an `id <n>` label for each of those cells.
  """
  base = _upscale(image).astype(np.float64)
  out = base * 0.3
  labels = []
  for c, cell_id in enumerate(cell_ids):
    if int(cell_id) not in sampled:
      continue
    ys, xs = _cell(c, grid)
    colour = id_colours(cell_id)
    out[ys, xs] = 0.5 * base[ys, xs] + 0.5 * colour
    cell = out[ys, xs]  # A view: the outline, 3 px wide, is drawn into out.
    cell[:3] = cell[-3:] = cell[:, :3] = cell[:, -3:] = colour
    labels.append((xs.start + 5, ys.start + 4, f'id {cell_id}'))
  return out.astype(np.uint8), labels


def _with_grid(image: np.ndarray, grid: int) -> np.ndarray:
  """`image` (uint8 `[S, S, 3]`) at `TILE` px with the cell grid in white."""
  tile = _upscale(image)
  for k in range(1, grid):
    p = round(k * TILE / grid)
    tile[p - 1:p + 1] = tile[:, p - 1:p + 1] = 255
  return tile


def draw_views(paths: Paths, settings: Settings) -> None:
  """Writes two views per image as the train step sees them.

  The views come from `data.make_pretrain_dataset` (crop, flip, resize of
  image and masks), their augmentation from `augment.augment_view`, the cell
  ids and sampled ids from `train.sample_view_masks`, with the default
  config's settings.
  """
  from detcon import data  # pylint: disable=g-import-not-at-top
  config = detcon_b.get_config()
  n, size = settings.pictured_images, settings.image_size
  config.image_size = size
  grid = train.grid_size(size)
  dataset = data.make_pretrain_dataset(
      data.find_shards(paths.records, 'train'), per_device_batch=n,
      local_devices=1, image_size=size,
      fh_mask_to_use=config.detcon.fh_mask_to_use, seed=SEED)
  batch = next(dataset.as_numpy_iterator())
  keys = jax.random.split(jax.random.PRNGKey(SEED), (2, 2, n))
  views = []
  for v in range(2):
    crops = batch[f'view{v + 1}'][0]
    fh = batch[f'fh_segmentations{v + 1}'][0]
    augmented = augment.augment_view(keys[v, 0], crops,
                                     config.augment.to_dict(), v)
    cell_ids, sampled = train.sample_view_masks(keys[v, 1], fh, config)
    views.append([np.asarray(x) for x in (crops, augmented, fh[..., 0],
                                          cell_ids, sampled)])
  rows = []
  for i in range(n):
    row = []
    for v, (crops, augmented, fh, cell_ids, sampled) in enumerate(views):
      crop = crops[i]  # The pipeline's uint8 view.
      mask = (0.4 * crop + 0.6 * id_colours(fh[i])).astype(np.uint8)
      cells, labels = _cells_tile(crop, cell_ids[i],
                                  set(sampled[i].tolist()), grid)
      row += [
          (crop, f'view {v + 1}: crop + flip'),
          (_with_grid(_to_uint8(augmented[i]), grid),
           f'view {v + 1}: augmented, {grid}x{grid} cells'),
          (_with_grid(mask, grid), f'view {v + 1}: its FH mask'),
          (cells, f'view {v + 1}: cells of sampled masks', labels),
      ]
    rows.append(row)
  plots.image_sheet(
      paths.views, rows, f'Two views per image at {size}x{size}, as one '
      'training step sees them', [
              f'Each cell of the encoder\'s {grid}x{grid} output grid '
              '(32x32 pixels) belongs to the FH segment covering most of it. '
              f'{config.detcon.num_samples} ids are drawn per view (with '
              'replacement) among the segments owning a cell;',
              'a sampled mask\'s feature is the mean of its cells\' features. '
              'Dimmed cells belong to segments not drawn (rare with few '
              'cells). The same id in both views is the same object: a '
              'positive pair.',
          ])


def read_scalars(log_dir: str) -> dict[str, tuple[list[int], list[float]]]:
  """Reads the scalars of TensorBoard event files: {tag: (steps, values)}.

  Later files (a resumed run) override earlier values of the same step.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  values = {}
  for name in sorted(os.listdir(log_dir)):
    if not name.startswith('events.out.tfevents.'):
      continue
    for raw in tf.data.TFRecordDataset(os.path.join(log_dir, name)):
      event = event_pb2.Event.FromString(raw.numpy())
      for v in event.summary.value:
        values.setdefault(v.tag, {})[event.step] = v.simple_value
  return {tag: (sorted(by_step), [by_step[s] for s in sorted(by_step)])
          for tag, by_step in values.items()}


def draw_loss_curve(paths: Paths) -> None:
  """Plots loss, repr_loss and classif_loss of the pretraining run."""
  scalars = read_scalars(paths.tensorboard)
  tags = ('loss', 'repr_loss', 'classif_loss')
  missing = [t for t in tags if t not in scalars]
  if missing:
    raise DemoError(f'no {missing} in the TensorBoard events of '
                    f'{paths.tensorboard}')
  plots.line_plot(
      paths.loss_curve, {t: scalars[t] for t in tags},
      'DetCon-B pretraining: loss = repr_loss (DetCon) + classif_loss '
      '(online classifier)', y_label='loss',
      smoothing=0.9 if len(scalars['loss'][0]) > 30 else 0.0)


@contextlib.contextmanager
def _phase(number: int, title: str):
  """Announces phase `number` of 8 and, when it ends, its duration."""
  print(f'\n=== [{number}/8] {title} ===', flush=True)
  start = time.time()
  yield
  print(f'({time.time() - start:.0f} s)', flush=True)


def run(output_dir: str, settings: Settings) -> None:
  """Runs every phase and prints where the outputs are."""
  start = time.time()
  paths = prepare_output_dir(output_dir, settings)
  outputs = {name: getattr(paths, name) for name in _LAYOUT}
  with _phase(1, 'Photos in ImageNet layout'):
    make_folders(paths, settings)
  with _phase(2, 'FH masks and TFRecords'):
    generate_masks(paths, settings)
  with _phase(3, 'Pictures of the segmentations and of the training views'):
    draw_segmentations(paths, settings)
    draw_views(paths, settings)
    print(f'Wrote {paths.segmentations} and {paths.views}')
  with _phase(4, f'Pretraining {ENCODER} for {settings.pretrain_steps} '
              'steps'):
    pretrain(paths, settings)
  with _phase(5, 'Linear evaluation of the frozen encoder'):
    result = linear_evaluation(paths, settings)
  with _phase(6, 'Dense evaluation on generated multi-object scenes'):
    dense = dense_evaluation(paths, settings)
    if not settings.dense_random_baseline:
      outputs.pop('dense_random')
  with _phase(7, 'Export of the backbone'):
    outputs.update(export_backbone(paths))
  with _phase(8, 'Loss curves from the TensorBoard events'):
    draw_loss_curve(paths)
    print(f'Wrote {paths.loss_curve}')

  minutes = (time.time() - start) / 60
  print(f'\nDetCon-B demo done in {minutes:.1f} minutes. Outputs:')
  for name, what in ((n, w) for n, (_, w) in _LAYOUT.items()
                     if n in outputs):
    print(f'  {what + ":":44s} {outputs[name]}')
  print(f'Linear evaluation: top-1 {result["top1"]:.3f}, top-5 '
        f'{result["top5"]:.3f} on {result["num_examples"]} '
        f'{result["eval_split"]} images after {result["pretrain_step"]} '
        'pretraining steps (tiny data: a check that the pipeline works, '
        'not a benchmark).')
  print(f'Dense evaluation on {dense["pretrained"]["num_eval_images"]} '
        f'generated scenes at {settings.scene_size}x{settings.scene_size}:')
  rows = {f'{name} weights': [r[p]['miou'] for p in ('linear', 'nn')]
          for name, r in dense.items()}
  if 'random' in dense:
    rows['pretrained - random'] = [
        a - b for a, b in zip(*rows.values(), strict=True)]
  for name, (linear, nn) in rows.items():
    sign = '+' if name.endswith('random') else ''
    print(f'  {name:20s} linear probe mIoU {linear:{sign}.3f}   '
          f'nearest neighbours mIoU {nn:{sign}.3f}')
  print(f'See the curves live: tensorboard --logdir {paths.tensorboard}',
        flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # This process prints its own news.
  try:
    run(_OUTPUT_DIR.value, QUICK if _QUICK.value else FULL)
  except DemoError as e:
    sys.exit(f'detcon.demo: error: {e}')


if __name__ == '__main__':
  cli.run(main)
