"""Pretraining studies on generated scenes, scored by dense evaluation.

The machinery behind `bench.detcon_vs_byol` and `bench.mask_sources`: each
study compares "arms" (an objective and a mask source) under equal
pretraining. Every phase runs the project's real commands, printed as they
start, each with its whole output in `<output_dir>/logs/`:

  1. `python -m detcon.scenes`: multi-object scenes in the VOC layout, plus
     the train split as an ImageNet-layout folder;
  2. `generate_fh_masks_for_imagenet.py` on that folder, once per mask
     source the arms need;
  3. `python -m detcon.main_loop` for every arm and seed: the same encoder,
     image size, batch, steps, learning rate and seed for all arms;
  4. `python -m detcon.dense_eval` of every run, and of random weights with
     the same seed (the floor every arm must clear).

A rerun with the same settings resumes: finished phases are skipped. The
report gives, per arm, the mean and spread (sample standard deviation) over
seeds of the linear-probe and nearest-neighbour mIoU, and differences
between arms paired by seed. It also measures what the DetCon loss sees in
the records of each mask source: segments per image, how well a segment
follows one object (its share of pixels on its majority ground-truth
instance), and how many distinct masks own a cell of a pretraining view.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM = 'random init'


@dataclasses.dataclass(frozen=True)
class Arm:
  """One pretraining recipe of a study."""
  name: str
  masks: str  # 'fh', 'slic', 'ground_truth' (records) or 'grid' (none).
  flags: tuple[str, ...] = ()  # Extra main_loop flags (may set --config).


@dataclasses.dataclass(frozen=True)
class Scale:
  """The sizes shared by every arm of a study."""
  num_train: int
  num_val: int
  scene_size: int  # Generated image side, pixels.
  num_classes: int  # Scene classes, background included.
  objects_per_image: str  # 'low,high', as detcon.scenes takes it.
  object_size: str  # 'low,high' fraction of the side, as detcon.scenes.
  encoder: str
  image_size: int  # Pretraining crop side.
  batch_size: int
  steps: int
  base_learning_rate: float  # x batch / 256.
  base_target_ema: float
  head_size: int
  fh_scale: int
  fh_min_size: int
  eval_image_size: int
  eval_crops_per_image: int
  eval_linear_steps: int


def log_path(output_dir: str, name: str) -> str:
  return os.path.join(output_dir, 'logs', f'{name}.log')


def run_command(output_dir: str, name: str, args: Sequence[str]) -> float:
  """Runs `python *args` in the repository; returns its wall time (s).

  Raises:
    RuntimeError: non-zero exit, with the tail of the log.
  """
  command = [sys.executable, *args]
  print(f'$ {shlex.join(command)}', flush=True)
  path = log_path(output_dir, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  start = time.time()
  with open(path, 'w') as log:
    code = subprocess.call(command, cwd=REPO, stdout=log,
                           stderr=subprocess.STDOUT,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  if code:
    with open(path) as log:
      tail = log.read()[-3000:]
    raise RuntimeError(f'{name} failed (exit {code}); log {path}:\n{tail}')
  return time.time() - start


def scenes_dir(output_dir: str) -> str:
  return os.path.join(output_dir, 'scenes')


def records_dir(output_dir: str, masks: str) -> str:
  return os.path.join(output_dir, f'records-{masks}')


def make_scenes(output_dir: str, scale: Scale, seed: int) -> None:
  if os.path.exists(os.path.join(scenes_dir(output_dir), 'voc', 'ImageSets',
                                 'Segmentation', 'val.txt')):
    return
  run_command(output_dir, 'scenes', [
      '-m', 'detcon.scenes', f'--output_dir={scenes_dir(output_dir)}',
      f'--num_train={scale.num_train}', f'--num_val={scale.num_val}',
      f'--image_size={scale.scene_size}',
      f'--num_classes={scale.num_classes}',
      f'--objects_per_image={scale.objects_per_image}',
      f'--object_size={scale.object_size}', f'--seed={seed}'])


def make_records(output_dir: str, scale: Scale, masks: str) -> None:
  """The train records of one mask source (none needed for 'grid')."""
  source = 'fh' if masks == 'grid' else masks
  out = records_dir(output_dir, source)
  if os.path.exists(os.path.join(out, 'train-00003-of-00004')):
    return
  args = [os.path.join(REPO, 'generate_fh_masks_for_imagenet.py'),
          f'--train_directory={scenes_dir(output_dir)}/imagenet/train',
          f'--output_directory={out}', '--train_shards=4',
          f'--segmentation={source}']
  if source == 'fh':
    args += [f'--fh_scales={scale.fh_scale}',
             f'--fh_min_sizes={scale.fh_min_size}']
  elif source == 'ground_truth':
    args.append('--ground_truth_directory='
                f'{scenes_dir(output_dir)}/voc/SegmentationObject')
  run_command(output_dir, f'masks-{source}', args)


def run_name(arm: Arm, seed: int) -> str:
  return f'{arm.name.lower().replace(" ", "_")}-seed{seed}'


def pretrain(output_dir: str, scale: Scale, arm: Arm, seed: int) -> str:
  """Pretrains one arm with one seed; returns its checkpoint folder."""
  name = run_name(arm, seed)
  ckpt = os.path.join(output_dir, 'runs', name)
  done = os.path.join(ckpt, 'done')
  if not os.path.exists(done):
    source = 'fh' if arm.masks == 'grid' else arm.masks
    h = scale.head_size
    seconds = run_command(output_dir, f'pretrain-{name}', [
        # The arm's flags first: a --config=<file> must precede overrides.
        '-m', 'detcon.main_loop', *arm.flags,
        f'--dataset_directory={records_dir(output_dir, source)}',
        f'--checkpoint_dir={ckpt}', f'--encoder={scale.encoder}',
        f'--image_size={scale.image_size}',
        f'--batch_size={scale.batch_size}', f'--max_steps={scale.steps}',
        '--log_tensors_interval=30', '--save_checkpoint_interval=100000',
        f'--config.seed={seed}',
        f'--config.num_classes={scale.num_classes - 1}',
        f'--config.optimizer.base_learning_rate={scale.base_learning_rate}',
        f'--config.base_target_ema={scale.base_target_ema}',
        f'--config.model.projector_hidden_size={h}',
        f'--config.model.predictor_hidden_size={h}',
        f'--config.model.projector_output_size={h // 4}',
        f'--config.masks={arm.masks}'])
    with open(done, 'w') as f:
      f.write(f'{seconds:.1f}\n')
  return ckpt


def dense_evaluation(output_dir: str, scale: Scale, name: str,
                     backbone: Sequence[str], seed: int) -> dict:
  """Runs dense_eval on the scenes; returns its result dict."""
  out = os.path.join(output_dir, 'eval', f'{name}.json')
  if not os.path.exists(out):
    run_command(output_dir, f'eval-{name}', [
        '-m', 'detcon.dense_eval',
        f'--dataset_directory={scenes_dir(output_dir)}/voc',
        f'--num_classes={scale.num_classes}', *backbone,
        f'--image_size={scale.eval_image_size}',
        f'--crops_per_image={scale.eval_crops_per_image}',
        f'--linear_steps={scale.eval_linear_steps}', f'--seed={seed}',
        f'--output={out}', '--picture='])
  with open(out) as f:
    return json.load(f)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(
      values) > 1 else 0.0


def run_study(output_dir: str, scale: Scale, arms: Sequence[Arm],
              seeds: Sequence[int], comparisons: Sequence[tuple[str, str]],
              title: str) -> dict:
  """Runs (or resumes) a study and reports it; returns the report dict.

  Args:
    output_dir: everything goes here.
    scale: sizes shared by all arms.
    arms: the recipes compared.
    seeds: one pretraining run per arm and seed (and one random init).
    comparisons: (arm a, arm b) pairs whose per-seed differences a - b are
      reported.
    title: the study's name.
  """
  start = time.time()
  os.makedirs(output_dir, exist_ok=True)
  settings = dict(scale=dataclasses.asdict(scale),
                  arms=[dataclasses.asdict(a) for a in arms])
  marker = os.path.join(output_dir, 'study.json')
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) != settings:
        raise SystemExit(f'{output_dir} holds a study with other settings; '
                         'choose another --output_dir')
  with open(marker, 'w') as f:
    json.dump(settings, f, indent=1)

  print(f'== {title}: scenes', flush=True)
  make_scenes(output_dir, scale, seed=0)
  for masks in sorted({a.masks for a in arms}):
    print(f'== records with {masks} masks', flush=True)
    make_records(output_dir, scale, masks)
  results = {a.name: [] for a in [Arm(RANDOM, 'fh'), *arms]}
  times = {a.name: [] for a in arms}
  for seed in seeds:
    for arm in arms:
      print(f'== seed {seed}: pretraining {arm.name}', flush=True)
      ckpt = pretrain(output_dir, scale, arm, seed)
      with open(os.path.join(ckpt, 'done')) as f:
        times[arm.name].append(float(f.read()))
      results[arm.name].append(dense_evaluation(
          output_dir, scale, run_name(arm, seed), [f'--checkpoint_dir={ckpt}'],
          seed))
    results[RANDOM].append(dense_evaluation(
        output_dir, scale, f'random-seed{seed}',
        ['--init=random', f'--encoder={scale.encoder}'], seed))
  report = summarize(results, comparisons, times)
  report.update(title=title, seeds=list(seeds), settings=settings,
                mask_statistics=mask_statistics(output_dir, scale, arms),
                wall_time_min=round((time.time() - start) / 60, 1))
  with open(os.path.join(output_dir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1)
  text = format_report(report)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)
  draw_report(report, os.path.join(output_dir, 'report.png'))
  return report


def summarize(results: dict[str, list[dict]],
              comparisons: Sequence[tuple[str, str]],
              times: dict[str, list[float]]) -> dict:
  """Means, spreads and paired differences of the dense metrics."""
  arms = {}
  for name, runs in results.items():
    arms[name] = {}
    for p in ('linear', 'nn'):
      per_seed = [r[p]['miou'] for r in runs]
      mean, std = mean_spread(per_seed)
      arms[name][p] = dict(mean=mean, std=std, per_seed=per_seed)
    if times.get(name):
      arms[name]['pretrain_s'] = round(float(np.mean(times[name])), 1)
  differences = {}
  for a, b in comparisons:
    differences[f'{a} - {b}'] = {}
    for p in ('linear', 'nn'):
      diff = np.subtract(arms[a][p]['per_seed'], arms[b][p]['per_seed'])
      mean, std = mean_spread(diff)
      differences[f'{a} - {b}'][p] = dict(
          mean=mean, std=std, per_seed=diff.tolist(),
          wins=int((diff > 0).sum()), seeds=len(diff))
  return dict(arms=arms, differences=differences)


def format_report(report: dict) -> str:
  """The report as Markdown tables."""
  lines = [f'### {report["title"]}', '',
           '| backbone | linear mIoU | nn mIoU | pretraining (s/run) |',
           '|---|---|---|---|']
  for name, arm in report['arms'].items():
    cells = [f'{arm[p]["mean"]:.4f} ± {arm[p]["std"]:.4f}'
             for p in ('linear', 'nn')]
    lines.append(f'| {name} | {cells[0]} | {cells[1]} | '
                 f'{arm.get("pretrain_s", "")} |')
  for name, diff in report['differences'].items():
    cells = [f'{diff[p]["mean"]:+.4f} ± {diff[p]["std"]:.4f} '
             f'({diff[p]["wins"]}/{diff[p]["seeds"]} seeds > 0)'
             for p in ('linear', 'nn')]
    lines.append(f'| **{name}** | {cells[0]} | {cells[1]} | |')
  stats = report['mask_statistics']
  if stats:
    lines += ['', '| masks | segments per image | pixels on the majority '
              'object | masks owning a cell, per view |', '|---|---|---|---|']
    for masks, s in stats.items():
      lines.append(f'| {masks} | {s["segments_per_image"]:.1f} | '
                   f'{s["purity"]:.3f} | {s["masks_per_view"]:.2f} |')
  lines += ['', f'Seeds {report["seeds"]}; mean ± sample standard deviation '
            f'over seeds; differences paired by seed. Total wall time '
            f'{report["wall_time_min"]} min.']
  return '\n'.join(lines)


def draw_report(report: dict, path: str) -> None:
  from detcon import plots  # pylint: disable=g-import-not-at-top
  plots.bar_chart(
      path, ['linear probe', 'nearest neighbours'],
      {name: ([arm[p]['mean'] for p in ('linear', 'nn')],
              [arm[p]['std'] for p in ('linear', 'nn')])
       for name, arm in report['arms'].items()},
      f'{report["title"]}\n(mean ± std over {len(report["seeds"])} seeds)',
      'mIoU on the generated scenes')


def mask_statistics(output_dir: str, scale: Scale, arms: Sequence[Arm],
                    num_images: int = 200) -> dict:
  """What the DetCon loss sees, per mask source, on the first train records.

  Returns:
    {masks: {'segments_per_image', 'purity' (mean over segments of the
    share of its pixels on its majority ground-truth instance, 255 pixels
    left out), 'masks_per_view' (distinct masks owning a cell of a
    pretraining view, from the real input pipeline)}}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from detcon import data, masks, records, train, voc  # pylint: disable=g-import-not-at-top
  data.hide_gpus_from_tf()
  out = {}
  for source in sorted({a.masks for a in arms}):
    paths = data.find_shards(records_dir(
        output_dir, 'fh' if source == 'grid' else source), 'train')
    segments, purity = [], []
    for raw in tf.data.TFRecordDataset(paths).take(num_images):
      f = tf.train.Example.FromString(raw.numpy()).features.feature
      h = f['image/height'].int64_list.value[0]
      w = f['image/width'].int64_list.value[0]
      if source == 'grid':
        mask = grid_mask(h, w, _pipeline_config(scale, source).grid_size)
      else:
        mask = records.decode_masks(f[records.MASK_KEY].bytes_list.value[0],
                                    h, w)[0]
      stem = os.path.splitext(
          f['image/filename'].bytes_list.value[0].decode())[0]
      objects = voc.read_label_png(os.path.join(
          scenes_dir(output_dir), 'voc', 'SegmentationObject', f'{stem}.png'))
      ids = np.unique(mask)
      segments.append(len(ids))
      for i in ids:
        inside = objects[(mask == i) & (objects != voc.IGNORE)]
        if inside.size:
          purity.append(np.bincount(inside).max() / inside.size)
    config = _pipeline_config(scale, source)
    ds = data.make_pretrain_dataset(
        paths, per_device_batch=16, local_devices=1,
        image_size=scale.image_size, fh_mask_to_use=0, seed=0,
        masks=config.masks, grid_size=config.grid_size)
    counts = []
    for batch in ds.take(max(num_images // 16, 1)).as_numpy_iterator():
      cells = masks.cell_mask_ids(batch['fh_segmentations1'][0, ..., 0],
                                  train.grid_size(scale.image_size))
      counts += [len(np.unique(c)) for c in np.asarray(cells)]
    out[source] = dict(segments_per_image=float(np.mean(segments)),
                       purity=float(np.mean(purity)),
                       masks_per_view=float(np.mean(counts)))
  return out


def grid_mask(height: int, width: int, n: int) -> np.ndarray:
  """The n x n grid heuristic's ids `[height, width]`, row-major."""
  rows = np.arange(height) * n // height
  cols = np.arange(width) * n // width
  return rows[:, None] * n + cols[None, :]


def _pipeline_config(scale: Scale, masks_name: str):
  from detcon.configs import detcon_b  # pylint: disable=g-import-not-at-top
  config = detcon_b.get_config()
  config.masks, config.image_size = masks_name, scale.image_size
  return config


# Flags shared by the studies' entry points.

_SCALE_HELP = {
    'num_train': 'Generated train scenes (pretraining and probe).',
    'num_val': 'Generated val scenes (the metrics).',
    'scene_size': 'Generated image side, pixels.',
    'num_classes': 'Scene classes, background included.',
    'objects_per_image': 'low,high: objects per generated scene.',
    'object_size': 'low,high: object extent as a fraction of the side.',
    'encoder': 'Encoder of every arm.',
    'image_size': 'Pretraining crop side (a multiple of 32).',
    'batch_size': 'Pretraining batch.',
    'steps': 'Pretraining steps of every run.',
    'base_learning_rate': 'Peak learning rate = this x batch / 256 (LARS).',
    'base_target_ema': 'Starting target EMA (BYOL-style arms).',
    'head_size': 'Projector/predictor hidden size (output: a quarter).',
    'fh_scale': 'FH scale of the masks.',
    'fh_min_size': 'FH minimum segment size, pixels.',
    'eval_image_size': 'Dense evaluation image side (a multiple of 32).',
    'eval_crops_per_image': 'Dense evaluation train crops per image.',
    'eval_linear_steps': 'Linear probe steps.',
}
DEFAULT_SCALE = Scale(
    num_train=1000, num_val=200, scene_size=160, num_classes=6,
    objects_per_image='3,6', object_size='0.3,0.6', encoder='ResNet18',
    image_size=128, batch_size=16, steps=120, base_learning_rate=16.0,
    base_target_ema=0.99, head_size=256, fh_scale=1000, fh_min_size=200,
    eval_image_size=160, eval_crops_per_image=1, eval_linear_steps=300)


def define_scale_flags() -> dict:
  """One absl flag per `Scale` field, defaulting to `DEFAULT_SCALE`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  out = {}
  for field in dataclasses.fields(Scale):
    default = getattr(DEFAULT_SCALE, field.name)
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}[type(default)]
    out[field.name] = define(field.name, default, _SCALE_HELP[field.name])
  return out


def scale_from_flags(scale_flags: dict) -> Scale:
  return Scale(**{name: flag.value for name, flag in scale_flags.items()})
