r"""Cost of the DetCon-B train step on this machine (issue 2, item 8).

(a) Step time of DetCon-B against BYOL: same encoder, heads, batch and
    augmentations; only the pooling (16 sampled masks per view instead of one
    global mean) and the loss differ. Median of `--steps` timed steps after
    compilation and `--warmup` untimed steps. XLA's FLOP estimate of each
    compiled step is printed too, as a load-independent ratio.
(b) Compile time of the DetCon-B step at several per-device batch sizes
    (compile only, on abstract batches): the step has no Python loop over the
    batch, so the program, and its compile time, should not grow with it.

  python -m bench.bench_train_step --encoder=ResNet18 --image_size=64 \
      --batch=8 --steps=4 --compile_batches=8,32,128
"""

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from bench import machine, step_cost
from detcon import train
from detcon.configs import detcon_b

_ENCODER = flags.DEFINE_string('encoder', 'ResNet18', 'Encoder of both parts.')
_WIDTH = flags.DEFINE_float('width_multiplier', 1,
                            'Encoder width multiplier (0.25, 0.5, 1, 2...).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 64,
                                   'View side of part (a), pixels.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Per-device batch of part (a).')
_STEPS = flags.DEFINE_integer('steps', 4, 'Timed steps per objective.')
_WARMUP = flags.DEFINE_integer('warmup', 1,
                               'Untimed steps after compiling.')
_PROJECTOR_HIDDEN = flags.DEFINE_integer(
    'projector_hidden_size', 4096, 'Hidden size of projector and predictor.')
_PROJECTOR_OUTPUT = flags.DEFINE_integer('projector_output_size', 256,
                                         'Projection size.')
_COMPILE_BATCHES = flags.DEFINE_list('compile_batches', ['8', '32', '128'],
                                     'Per-device batches of part (b).')
_COMPILE_IMAGE_SIZE = flags.DEFINE_integer(
    'compile_image_size', 64, 'View side of part (b), pixels.')
_PARTS = flags.DEFINE_list('parts', ['step', 'compile'],
                           'Parts to run: step (a), compile (b).')
_NUM_CLASSES = 1000
_OBJECTIVES = ('byol', 'detcon_b')
_TOTAL_STEPS = 1000


def _print_header():
  print(f'machine: {machine.describe()}')
  print(machine.describe_jax())


def _make_config(objective, image_size, per_device_batch):
  c = detcon_b.get_config()
  c.objective = objective
  c.image_size = image_size
  c.batch_size = per_device_batch * jax.device_count()
  c.num_classes = _NUM_CLASSES
  c.model.encoder = _ENCODER.value
  c.model.width_multiplier = _WIDTH.value
  c.model.projector_hidden_size = _PROJECTOR_HIDDEN.value
  c.model.predictor_hidden_size = _PROJECTOR_HIDDEN.value
  c.model.projector_output_size = _PROJECTOR_OUTPUT.value
  return c


def _setup(config, mesh):
  """Returns (jitted step, replicated state)."""
  optimizer, schedule = train.make_optimizer(config, _TOTAL_STEPS, 10)
  state = train.init_state(config, jax.random.PRNGKey(0), optimizer)
  step = train.make_train_step(config, mesh, optimizer, schedule,
                               _TOTAL_STEPS)
  return step, train.replicate(state, mesh)


def _host_batch(config, per_device):
  """Random views and blocky masks, `[local_devices, per_device, ...]`."""
  rng = np.random.default_rng(0)
  d, s = jax.local_device_count(), config.image_size
  shape = (d, per_device)

  def blocks():
    coarse = rng.integers(0, 6, shape + (8, 8))
    return np.kron(coarse, np.ones((s // 8, s // 8), np.int32))[..., None]

  return dict(
      view1=rng.integers(0, 256, shape + (s, s, 3), np.uint8),
      view2=rng.integers(0, 256, shape + (s, s, 3), np.uint8),
      fh_segmentations1=blocks().astype(np.int32),
      fh_segmentations2=blocks().astype(np.int32),
      labels=rng.integers(0, _NUM_CLASSES, shape, dtype=np.int32))


def _compile(step, state, batch):
  """Returns (compiled, lower s, compile s, compile CPU s, HLO lines).

  The CPU time of this process during `compile()` (XLA compiles mostly on one
  thread) is less sensitive than wall time to other jobs on the machine.
  """
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  t1, c1 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  t2, c2 = time.perf_counter(), time.process_time()
  return (compiled, t1 - t0, t2 - t1, c2 - c1,
          len(lowered.as_text().splitlines()))


def _part_step(mesh):
  """(a): median step time of BYOL and DetCon-B, same backbone and batch."""
  b, s = _BATCH.value, _IMAGE_SIZE.value
  print(f'\n(a) step time, {_ENCODER.value} at {s}x{s}, per-device batch '
        f'{b} x {jax.device_count()} device(s), projector/predictor '
        f'{_PROJECTOR_HIDDEN.value}->{_PROJECTOR_OUTPUT.value}; median of '
        f'{_STEPS.value} steps after {_WARMUP.value} warm-up step(s)')
  runs = {}
  for objective in _OBJECTIVES:
    config = _make_config(objective, s, b)
    step, state = _setup(config, mesh)
    batch = train.shard_batch(_host_batch(config, b), mesh)
    compiled, lower_s, compile_s, *_ = _compile(step, state, batch)
    for _ in range(_WARMUP.value):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    runs[objective] = dict(compiled=compiled, state=state, batch=batch,
                           times=[], compile_s=lower_s + compile_s)
  # Alternate the objectives step by step, so that a change in the load of
  # this shared machine hits both alike.
  for _ in range(_STEPS.value):
    for run in runs.values():
      t0 = time.perf_counter()
      run['state'], metrics = run['compiled'](run['state'], run['batch'])
      jax.block_until_ready((run['state'], metrics))
      run['times'].append(time.perf_counter() - t0)
      if not np.isfinite(float(metrics['repr_loss'])):
        raise RuntimeError(f'non-finite repr_loss {metrics["repr_loss"]}')
  rows = {}
  for objective, run in runs.items():
    times = run['times']
    rows[objective] = (statistics.median(times), min(times), max(times),
                       step_cost.xla_flops(run['compiled']), run['compile_s'])
  del runs
  print(f'{"objective":<10} {"median s":>9} {"min s":>7} {"max s":>7} '
        f'{"img/s":>7} {"GFLOP/step":>11} {"compile s":>10}')
  for objective, (med, lo, hi, flops, comp) in rows.items():
    print(f'{objective:<10} {med:>9.3f} {lo:>7.3f} {hi:>7.3f} '
          f'{b * jax.device_count() / med:>7.1f} {flops / 1e9:>11.1f} '
          f'{comp:>10.1f}')
  byol, det = rows['byol'], rows['detcon_b']
  print(f'DetCon-B / BYOL: step time x{det[0] / byol[0]:.2f}, XLA FLOPs '
        f'x{det[3] / byol[3]:.2f}')
  grid = train.grid_size(s) ** 2
  print(f'note: DetCon-B runs the projector/predictor on 16 pooled masks per '
        f'view instead of 1, and its loss compares all B*16 x B*16 pairs; at '
        f'{s}x{s} the encoder output is only {grid} cells, so these heads '
        'weigh more against the encoder than at 224.')


def _part_compile(mesh):
  """(b): compile time of the DetCon-B step against the per-device batch."""
  s = _COMPILE_IMAGE_SIZE.value
  batches = [int(x) for x in _COMPILE_BATCHES.value]
  print(f'\n(b) compile time of the DetCon-B step, {_ENCODER.value} at '
        f'{s}x{s}, projector/predictor {_PROJECTOR_HIDDEN.value}->'
        f'{_PROJECTOR_OUTPUT.value}; abstract batch, compile only (no run); '
        'each batch size lowered and compiled afresh')
  rows = []
  for b in batches:
    config = _make_config('detcon_b', s, b)
    step, state = _setup(config, mesh)
    _, lower_s, compile_s, compile_cpu, lines = _compile(
        step, state, step_cost.abstract_batch(config, b, mesh))
    rows.append((b, lower_s, compile_s, compile_cpu, lines))
    del state
  _, _, base, base_cpu, _ = rows[0]
  print(f'batch = per-device batch; ratios are to batch {rows[0][0]}')
  print(f'{"batch":>5} {"lower s":>8} {"compile s":>10} {"ratio":>6} '
        f'{"compile CPU s":>14} {"ratio":>6} {"StableHLO lines":>16}')
  for b, lower_s, compile_s, compile_cpu, lines in rows:
    print(f'{b:>5} {lower_s:>8.2f} {compile_s:>10.2f} '
          f'{compile_s / base:>5.2f}x {compile_cpu:>14.2f} '
          f'{compile_cpu / base_cpu:>5.2f}x {lines:>16}')


def main(argv):
  del argv
  _print_header()
  mesh = train.make_mesh()
  start = time.perf_counter()
  if 'step' in _PARTS.value:
    _part_step(mesh)
  if 'compile' in _PARTS.value:
    _part_compile(mesh)
  print(f'\ntotal {time.perf_counter() - start:.0f} s; load average '
        f'(1/5/15 min) now {machine.load_average()}')


if __name__ == '__main__':
  app.run(main)
