"""Pretraining studies on generated scenes, scored by dense evaluation.

The machinery behind `bench.detcon_vs_byol` and `bench.mask_sources`: each
study compares "arms" (an objective and a mask source) under equal
pretraining. Every phase runs the project's real commands, printed as they
start, each with its whole output in `<output_dir>/logs/`:

  1. `python -m detcon.scenes`: multi-object scenes in the VOC layout, plus
     the train split as an ImageNet-layout folder;
  2. `generate_fh_masks_for_imagenet.py` on that folder, once per mask
     source the arms need;
  3. `python -m detcon.dense_eval --init=random` per seed: random weights,
     the floor every arm must clear and the curves' step 0;
  4. `python -m detcon.main_loop` for every arm and seed: the same encoder,
     image size, batch, steps, learning rate and seed for all arms, with
     in-training dense evaluations (`config.evals`, both protocols) at
     1/8, 1/4, 1/2 and all of the steps: the learning curve.

Results file. Every scored checkpoint is one entry of its `runs` list,
`{'arm': <slug>, 'seed', 'step', 'linear_miou', 'nn_miou'}` (the last step's
entry also has `pretrain_s`), with the study's settings beside it. It is
written after every finished run and is the study's memory: a rerun with the
same settings skips every run it holds (an interrupted pretraining resumes
from its checkpoint in `--output_dir`), so a study can be finished over
several sittings. The report (`<results>.md`, bar chart `<results>.png`,
curves `<results>_curves_{linear,nn}.png`) is rebuilt from the file alone
after every run and names the runs still missing.

The report gives, per arm, the mean and spread (sample standard deviation)
over seeds of both mIoUs, each seed's gain over random weights, differences
between arms paired by seed with a 95% Student-t interval, and the steps an
arm needs to reach the other's final mean. It also measures what the DetCon
loss sees in the records of each mask source: segments per image, how well
a segment follows one object (its share of pixels on its majority
ground-truth instance), and how many distinct masks own a cell of a
pretraining view.
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from detcon.tools import commands

REPO = commands.REPO
RANDOM = 'random'  # The slug of random weights.
PROTOCOLS = ('linear', 'nn')
# The learning curve: evaluated at steps // d for each d (and step 0, the
# random weights of the same seed).
CURVE_DIVISORS = (8, 4, 2, 1)
LEARNED = 0.05  # mIoU over random weights that counts as learned.


@dataclasses.dataclass(frozen=True)
class Arm:
  """One pretraining recipe of a study."""
  name: str  # As the tables show it; its slug names it in the results.
  masks: str  # 'fh', 'slic', 'ground_truth' (records) or 'grid' (none).
  config: str = 'detcon_b'  # The `detcon.configs` module it starts from.
  flags: tuple[str, ...] = ()  # Extra main_loop flags (--config.* fields).

  @property
  def slug(self) -> str:
    return slug(self.name)


def slug(name: str) -> str:
  """'DetCon-B ground truth' -> 'detcon_b_ground_truth'."""
  return name.lower().replace(' ', '_').replace('-', '_')


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
  width_multiplier: float
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
  """Runs `python *args` (log `<output_dir>/logs/<name>.log`); wall time, s.

  Raises:
    RuntimeError: non-zero exit, with the tail of the log.
  """
  path = log_path(output_dir, name)
  try:
    return commands.run(args, path, env={'TF_CPP_MIN_LOG_LEVEL': '2'},
                        append=True)
  except commands.CommandError as e:
    with open(path) as log:
      tail = log.read()[-3000:]
    raise RuntimeError(f'{name} {e}:\n{tail}') from None


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


def curve_steps(steps: int) -> list[int]:
  """The pretraining steps a run is scored at (without step 0)."""
  return sorted({max(steps // d, 1) for d in CURVE_DIVISORS})


def dense_settings(output_dir: str, scale: Scale, seed: int) -> dict:
  """The dense evaluation's settings, the same for every backbone."""
  return dict(dataset_directory=f'{scenes_dir(output_dir)}/voc',
              num_classes=scale.num_classes, image_size=scale.eval_image_size,
              crops_per_image=scale.eval_crops_per_image,
              linear_steps=scale.eval_linear_steps, seed=seed)


def write_arm_config(output_dir: str, scale: Scale, arm: Arm, seed: int
                     ) -> str:
  """A config file: the arm's base config plus its curve's evaluations."""
  settings = dense_settings(output_dir, scale, seed)
  evals = {p: dict(evaluator=f'dense_{p}', at_steps=tuple(
      curve_steps(scale.steps)), settings=settings) for p in PROTOCOLS}
  path = os.path.join(output_dir, 'configs', f'{arm.slug}-seed{seed}.py')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(f'''"""Written by bench.dense_study: {arm.name}, seed {seed}."""

import ml_collections

from detcon.configs import {arm.config} as base


def get_config():
  c = base.get_config()
  c.evals = ml_collections.ConfigDict({evals!r})
  return c
''')
  return path


def pretrain(output_dir: str, scale: Scale, arm: Arm, seed: int
             ) -> list[dict]:
  """Pretrains one arm with one seed (or resumes it); its results entries."""
  name = f'{arm.slug}-seed{seed}'
  ckpt = os.path.join(output_dir, 'runs', name)
  source = 'fh' if arm.masks == 'grid' else arm.masks
  h = scale.head_size
  seconds = run_command(output_dir, f'pretrain-{name}', [
      '-m', 'detcon.main_loop',
      f'--config={write_arm_config(output_dir, scale, arm, seed)}',
      *arm.flags,
      f'--dataset_directory={records_dir(output_dir, source)}',
      f'--checkpoint_dir={ckpt}', f'--encoder={scale.encoder}',
      f'--image_size={scale.image_size}',
      f'--batch_size={scale.batch_size}', f'--max_steps={scale.steps}',
      '--log_tensors_interval=60', '--save_checkpoint_interval=600',
      f'--config.seed={seed}',
      f'--config.num_classes={scale.num_classes - 1}',
      f'--config.model.width_multiplier={scale.width_multiplier}',
      f'--config.optimizer.base_learning_rate={scale.base_learning_rate}',
      f'--config.base_target_ema={scale.base_target_ema}',
      f'--config.model.projector_hidden_size={h}',
      f'--config.model.predictor_hidden_size={h}',
      f'--config.model.projector_output_size={h // 4}',
      f'--config.masks={arm.masks}'])
  with open(os.path.join(ckpt, 'evals.json')) as f:
    history = json.load(f)['history']
  entries = [dict(arm=arm.slug, seed=seed, step=h['step'],
                  **{f'{p}_miou': h[f'{p}/miou'] for p in PROTOCOLS})
             for h in history]
  entries[-1]['pretrain_s'] = round(seconds, 1)
  return entries


def random_weights(output_dir: str, scale: Scale, seed: int) -> list[dict]:
  """Scores random weights of one seed: the step-0 entry."""
  out = os.path.join(output_dir, 'eval', f'random-seed{seed}.json')
  settings = dense_settings(output_dir, scale, seed)
  run_command(output_dir, f'eval-random-seed{seed}', [
      '-m', 'detcon.dense_eval', '--init=random',
      f'--encoder={scale.encoder}',
      f'--width_multiplier={scale.width_multiplier}',
      *[f'--{k}={v}' for k, v in settings.items()],
      f'--output={out}', '--picture='])
  with open(out) as f:
    result = json.load(f)
  return [dict(arm=RANDOM, seed=seed, step=0,
               **{f'{p}_miou': result[p]['miou'] for p in PROTOCOLS})]


def load_results(path: str, settings: dict) -> dict:
  """The results file of these settings (empty runs when there is none).

  Raises:
    SystemExit: the file holds a study with other settings.
  """
  if not os.path.exists(path):
    return dict(settings=settings, runs=[])
  with open(path) as f:
    results = json.load(f)
  if results.get('settings') != settings:
    raise SystemExit(f'{path} holds a study with other settings; pass '
                     '--results=<another file>, or delete it to start over')
  return results


def save_json(path: str, value: dict) -> None:
  """Writes atomically (a stopped study never leaves half a file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)


def is_finished(results: dict, arm: str, seed: int, step: int) -> bool:
  return any((r['arm'], r['seed'], r['step']) == (arm, seed, step)
             for r in results['runs'])


def run_study(output_dir: str, results_path: str, scale: Scale,
              arms: Sequence[Arm], seeds: Sequence[int],
              comparisons: Sequence[tuple[str, str]], title: str) -> dict:
  """Runs (or resumes) a study and reports it; returns the report dict.

  Args:
    output_dir: scenes, records, checkpoints and logs go here.
    results_path: the results file (JSON); the report goes beside it.
    scale: sizes shared by all arms.
    arms: the recipes compared.
    seeds: one pretraining run per arm and seed (and one random init).
    comparisons: (arm a, arm b) names whose per-seed differences a - b are
      reported.
    title: the study's name.
  """
  settings = json.loads(json.dumps(dict(  # As the results file holds them.
      title=title, scale=dataclasses.asdict(scale),
      arms=[dataclasses.asdict(a) for a in arms])))
  results = load_results(results_path, settings)
  results['names'] = {RANDOM: 'random weights',
                      **{a.slug: a.name for a in arms}}
  results['comparisons'] = [[slug(a), slug(b)] for a, b in comparisons]
  todo = [(seed, arm) for seed in seeds for arm in (None, *arms)
          if not is_finished(results, arm.slug if arm else RANDOM, seed,
                             scale.steps if arm else 0)]
  if todo:
    print(f'== {title}: {len(todo)} runs to do; scenes', flush=True)
    make_scenes(output_dir, scale, seed=0)
    for masks in sorted({a.masks for a in arms}):
      print(f'== records with {masks} masks', flush=True)
      make_records(output_dir, scale, masks)
    if 'mask_statistics' not in results:
      results['mask_statistics'] = mask_statistics(output_dir, scale, arms)
  for seed, arm in todo:
    print(f'== seed {seed}: {arm.name if arm else "random weights"}',
          flush=True)
    entries = (pretrain(output_dir, scale, arm, seed) if arm else
               random_weights(output_dir, scale, seed))
    keep = [r for r in results['runs']
            if (r['arm'], r['seed']) != (entries[0]['arm'], seed)]
    results['runs'] = keep + entries
    save_json(results_path, results)
    write_report(results, seeds, results_path)
  save_json(results_path, results)
  report = write_report(results, seeds, results_path)
  print(format_report(report), flush=True)
  return report


def write_report(results: dict, seeds: Sequence[int], results_path: str
                 ) -> dict:
  """Writes `<results>.md` and its figures; returns the report dict."""
  report = summarize(results, seeds)
  stem = os.path.splitext(results_path)[0]
  with open(stem + '.md', 'w') as f:
    f.write(format_report(report) + '\n')
  draw_report(report, stem)
  return report


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(
      values) > 1 else 0.0


def t_interval(values: Sequence[float], confidence: float = 0.95
               ) -> tuple[float, float]:
  """Student-t interval of the mean; (nan, nan) for fewer than 2 values."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(values) < 2:
    return math.nan, math.nan
  mean, std = mean_spread(values)
  half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * std / math.sqrt(
      len(values))
  return mean - half, mean + half


def summarize(results: dict, seeds: Sequence[int]) -> dict:
  """The study's statistics, from its results file alone.

  Returns:
    {'title', 'names', 'seeds', 'steps' (the last step),
     'final': {arm: {protocol: {mean, std, per_seed: {seed: mIoU}}},
               'pretrain_s'}} (the random weights' arm included),
     'curves': {arm: {protocol: [[step, mean, std, seeds], ...]}} (step 0 is
       the random weights' mean over the same seeds),
     'gains': {arm: {protocol: {mean, min, learned (seeds >= LEARNED),
       seeds}}}: each seed's final minus its random weights,
     'differences': {'a - b': {protocol: {mean, std, low, high (95% t),
       wins, seeds}}} paired by seed,
     'steps_to_reach': {'a - b': {protocol: step or None}}: the first scored
       step where a's mean reaches b's final mean (None: it does not),
     'missing': ['<arm> seed <s>', ...], 'mask_statistics'}.
  """
  steps = results['settings']['scale']['steps']
  names = results['names']
  by = {}  # (arm, step) -> {seed: {protocol: mIoU}}
  for r in results['runs']:
    if r['seed'] in seeds:
      by.setdefault((r['arm'], r['step']), {})[r['seed']] = {
          p: r[f'{p}_miou'] for p in PROTOCOLS}
  pretrain_s = {}
  for r in results['runs']:
    if 'pretrain_s' in r and r['seed'] in seeds:
      pretrain_s.setdefault(r['arm'], []).append(r['pretrain_s'])

  def final_of(arm):
    return by.get((arm, 0 if arm == RANDOM else steps), {})

  final, curves, gains, missing = {}, {}, {}, []
  for arm in names:
    done = final_of(arm)
    missing += [f'{names[arm]} seed {s}' for s in seeds if s not in done]
    if not done:
      continue
    final[arm] = {}
    for p in PROTOCOLS:
      per_seed = {s: v[p] for s, v in sorted(done.items())}
      mean, std = mean_spread(list(per_seed.values()))
      final[arm][p] = dict(mean=mean, std=std, per_seed=per_seed)
    if arm in pretrain_s:
      final[arm]['pretrain_s'] = round(float(np.mean(pretrain_s[arm])), 1)
    if arm == RANDOM:
      continue
    random = final_of(RANDOM)
    paired = [s for s in done if s in random]
    if paired:
      gains[arm] = {}
      for p in PROTOCOLS:
        gain = [done[s][p] - random[s][p] for s in paired]
        gains[arm][p] = dict(mean=float(np.mean(gain)), min=float(min(gain)),
                             learned=sum(g >= LEARNED for g in gain),
                             seeds=len(gain))
    curves[arm] = {p: [] for p in PROTOCOLS}
    for step in [0, *curve_steps(steps)]:
      at = by.get((RANDOM if step == 0 else arm, step), {})
      at = {s: v for s, v in at.items() if s in done}
      for p in PROTOCOLS:
        if at:
          curves[arm][p].append([step, *mean_spread(
              [v[p] for v in at.values()]), len(at)])
  differences, steps_to_reach = {}, {}
  for a, b in results['comparisons']:
    fa, fb = final_of(a), final_of(b)
    paired = sorted(s for s in fa if s in fb)
    if not paired:
      continue
    key = f'{names[a]} - {names[b]}'
    differences[key], steps_to_reach[key] = {}, {}
    for p in PROTOCOLS:
      diff = [fa[s][p] - fb[s][p] for s in paired]
      mean, std = mean_spread(diff)
      low, high = t_interval(diff)
      differences[key][p] = dict(mean=mean, std=std, low=low, high=high,
                                 wins=sum(d > 0 for d in diff),
                                 seeds=len(diff))
      target = final[b][p]['mean']
      steps_to_reach[key][p] = next(
          (step for step, mean_a, *_ in curves[a][p] if mean_a >= target),
          None)
  return dict(title=results['settings']['title'], names=names,
              seeds=list(seeds), steps=steps, final=final, curves=curves,
              gains=gains, differences=differences,
              steps_to_reach=steps_to_reach, missing=missing,
              mask_statistics=results.get('mask_statistics', {}))


def format_report(report: dict) -> str:
  """The report as Markdown tables."""
  names = report['names']
  lines = [f'### {report["title"]}', '',
           f'After {report["steps"]} pretraining steps; mean ± sample '
           f'standard deviation over seeds {report["seeds"]}.', '',
           '| backbone | linear mIoU | nn mIoU | gain over random '
           '(linear / nn, min over seeds) | seeds >= '
           f'{LEARNED} above random | pretraining (s/run) |',
           '|---|---|---|---|---|---|']
  for arm, f in report['final'].items():
    cells = [f'{f[p]["mean"]:.4f} ± {f[p]["std"]:.4f}' for p in PROTOCOLS]
    g = report['gains'].get(arm)
    gain = learned = ''
    if g:
      gain = ' / '.join(f'{g[p]["mean"]:+.4f} ({g[p]["min"]:+.4f})'
                        for p in PROTOCOLS)
      learned = ' / '.join(f'{g[p]["learned"]}/{g[p]["seeds"]}'
                           for p in PROTOCOLS)
    lines.append(f'| {names[arm]} | {cells[0]} | {cells[1]} | {gain} | '
                 f'{learned} | {f.get("pretrain_s", "")} |')
  if report['differences']:
    lines += ['', '| paired by seed | linear mIoU: mean [95% t interval] '
              '(seeds > 0) | nn mIoU | steps to reach the other\'s final '
              '(linear / nn) |', '|---|---|---|---|']
    for key, d in report['differences'].items():
      cells = [f'{d[p]["mean"]:+.4f} {_interval(d[p])} '
               f'({d[p]["wins"]}/{d[p]["seeds"]})' for p in PROTOCOLS]
      reach = ' / '.join(
          'does not' if s is None else str(s)
          for s in (report['steps_to_reach'][key][p] for p in PROTOCOLS))
      lines.append(f'| {key} | {cells[0]} | {cells[1]} | {reach} |')
  if report['curves']:
    steps = sorted({c[0] for arm in report['curves'].values()
                    for c in arm['linear']})
    lines += ['', '| learning curve: linear / nn mIoU at step | ' +
              ' | '.join(map(str, steps)) + ' |',
              '|---|' + '---|' * len(steps)]
    for arm, curve in report['curves'].items():
      at = {c[0]: c for c in curve['linear']}
      at_nn = {c[0]: c for c in curve['nn']}
      lines.append(f'| {names[arm]} | ' + ' | '.join(
          f'{at[s][1]:.3f} / {at_nn[s][1]:.3f}' if s in at else ''
          for s in steps) + ' |')
  stats = report['mask_statistics']
  if stats:
    lines += ['', '| masks | segments per image | pixels on the majority '
              'object | masks owning a cell, per view |', '|---|---|---|---|']
    for masks, s in stats.items():
      lines.append(f'| {masks} | {s["segments_per_image"]:.1f} | '
                   f'{s["purity"]:.3f} | {s["masks_per_view"]:.2f} |')
  lines += ['', 'Missing: ' + (', '.join(report['missing']) or 'none') + '.']
  return '\n'.join(lines)


def _interval(difference: dict) -> str:
  if math.isnan(difference['low']):
    return '[one seed: no interval]'
  return f'[{difference["low"]:+.4f}, {difference["high"]:+.4f}]'


def draw_report(report: dict, stem: str) -> None:
  """`<stem>.png` (final mIoUs) and `<stem>_curves_<protocol>.png`."""
  from detcon import plots  # pylint: disable=g-import-not-at-top
  names, final = report['names'], report['final']
  if not final:
    return
  labels = {'linear': 'linear probe', 'nn': 'nearest neighbours'}
  plots.bar_chart(
      stem + '.png', [labels[p] for p in PROTOCOLS],
      {names[arm]: ([f[p]['mean'] for p in PROTOCOLS],
                    [f[p]['std'] for p in PROTOCOLS])
       for arm, f in final.items()},
      f'{report["title"]}\n(mean ± std over seeds {report["seeds"]})',
      'mIoU on the generated scenes')
  for p in PROTOCOLS:
    curves = {names[arm]: tuple(np.transpose(curve[p])[:3])
              for arm, curve in report['curves'].items()}
    if not curves:
      continue
    plots.line_plot(
        f'{stem}_curves_{p}.png', curves,
        f'{report["title"]}: {labels[p]} during pretraining\n(mean, band: '
        '± std over seeds; step 0: random weights)',
        x_label='pretraining step', y_label=f'{labels[p]} mIoU')


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
      r = records.read_example(raw.numpy())
      if source == 'grid':
        mask = data.grid_masks(r['height'], r['width'], _pipeline_config(
            scale, source).grid_size).numpy()[..., 0]
      else:
        mask = r['masks'][0]
      stem = os.path.splitext(r['filename'])[0]
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
    'width_multiplier': 'Encoder width multiplier (0.25, 0.5: cheap CPU '
                        'ResNets).',
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
# The design chosen by the pilot (README, "Evidence at small scale").
DEFAULT_SCALE = Scale(
    num_train=600, num_val=100, scene_size=320, num_classes=6,
    objects_per_image='3,6', object_size='0.3,0.6', encoder='ResNet18',
    width_multiplier=0.5, image_size=128, batch_size=16, steps=600,
    base_learning_rate=16.0, base_target_ema=0.99, head_size=256,
    fh_scale=1000, fh_min_size=200, eval_image_size=320,
    eval_crops_per_image=1, eval_linear_steps=300)


def define_results_flag(study: str):
  """--results: the study's results file, by default in bench/results/."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return flags.DEFINE_string(
      'results', os.path.join(REPO, 'bench', 'results', f'{study}.json'),
      'The results file (one entry per scored checkpoint; finished runs in it '
      'are skipped on a rerun); the report and figures go beside it.')


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
