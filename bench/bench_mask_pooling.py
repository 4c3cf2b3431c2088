r"""Memory and time of DetCon-B's mask pooling (issue 2, item 8).

Compares, on FH-like masks `[B, S, S]` with ids below `max_mask_id`:
  ours:  `masks.cell_mask_ids` (a scatter-add histogram per cell), as called
         by `train._view_pooling`;
  naive: the full-resolution one-hot `jax.nn.one_hot(masks, max_mask_id)`
         `[B, S, S, max_mask_id]` float32, average-pooled to the encoder's
         grid, then argmax (ties: the lower id, like ours).
Each is measured alone ('cell ids') and followed by the same id sampling and
pooling weights ('full': for ours, `train._view_pooling` itself). Peak memory
is XLA's compiled memory analysis (arguments + outputs + temporaries);
wall time is the median over calls. Before timing, the script asserts that
both give the same cell ids, sampled ids and weights on random blocky masks.

  python -m bench.bench_mask_pooling --image_size=224 --batches=32,128
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bench import machine
from detcon import masks, train
from detcon.configs import detcon_b

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Mask side, pixels.')
_BATCHES = flags.DEFINE_list('batches', ['32', '128'], 'Per-device batches.')
_MAX_MASK_ID = flags.DEFINE_integer('max_mask_id', 256,
                                    'Number of ids of the one-hot.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per variant.')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds', 20.0, 'Stop timing a variant after this many seconds '
    '(at least one call).')
_MEMORY_FRACTION = flags.DEFINE_float(
    'memory_fraction', 0.5, 'Skip running (not compiling) a variant whose '
    'peak exceeds this fraction of MemAvailable.')
_MIB = 2**20


def _available_bytes():
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  return 0


def _print_header():
  print(f'machine: {machine.describe()},'
        f'{_available_bytes() / 2**30:.1f} GiB available')
  print(machine.describe_jax())


def _config():
  c = detcon_b.get_config()
  c.image_size = _IMAGE_SIZE.value
  c.detcon.max_mask_id = _MAX_MASK_ID.value
  return c


def naive_cell_ids(fh_masks, grid_size, max_mask_id):
  """Majority id per cell through a full-resolution one-hot.

  Args:
    fh_masks: int `[B, H, W]`, ids in [0, max_mask_id).
    grid_size: cells per side.
    max_mask_id: one-hot depth.

  Returns:
    int32 `[B, grid_size * grid_size]`.
  """
  b, h, w = fh_masks.shape
  ch, cw = h // grid_size, w // grid_size
  one_hot = jax.nn.one_hot(fh_masks, max_mask_id, dtype=jnp.float32)
  pooled = jax.lax.reduce_window(one_hot, 0.0, jax.lax.add, (1, ch, cw, 1),
                                 (1, ch, cw, 1), 'VALID') / (ch * cw)
  return jnp.argmax(pooled, -1).reshape(b, -1).astype(jnp.int32)


def _naive_view_pooling(keys, fh_masks, config):
  """`train._view_pooling` with the naive cell ids."""
  cell_ids = naive_cell_ids(fh_masks[..., 0],
                            train.grid_size(config.image_size),
                            config.detcon.max_mask_id)
  ids = train.sample_ids(keys, cell_ids, config)
  return ids, masks.pooling_weights(cell_ids, ids)


def _variants(config):
  """name -> f(keys, fh_masks `[B, S, S, 1]`)."""
  grid, top = train.grid_size(config.image_size), config.detcon.max_mask_id
  return {
      'ours, cell ids': lambda k, m: masks.cell_mask_ids(m[..., 0], grid, top),
      'naive, cell ids': lambda k, m: naive_cell_ids(m[..., 0], grid, top),
      # The step's own function. pylint: disable-next=protected-access
      'ours, full': lambda k, m: train._view_pooling(k, m, config),
      'naive, full': lambda k, m: _naive_view_pooling(k, m, config),
  }


def _blocky_masks(rng, batch, size, max_mask_id):
  """Random blocky masks `[B, S, S, 1]` int32 in [0, max_mask_id).

  Blocks of several sides, most not aligned with the 32-pixel cells, and
  sometimes only a few distinct ids, so that many cells are mixed and many
  have ties.
  """
  sides = [d for d in (7, 8, 14, 16, 28, 32, 56) if size % d == 0] or [size]
  out = np.empty((batch, size, size, 1), np.int32)
  for i in range(batch):
    side = rng.choice(sides)
    top = rng.choice([2, 3, 6, max_mask_id])
    coarse = rng.integers(0, top, (size // side, size // side))
    out[i, ..., 0] = np.repeat(np.repeat(coarse, side, 0), side, 1)
  return out


def _check_equal(variants, config):
  """Asserts ours and naive agree on cell ids, sampled ids and weights."""
  rng = np.random.default_rng(0)
  grid = train.grid_size(config.image_size)
  side = config.image_size // grid
  cells = mixed = tied = 0
  for trial in range(4):
    host = _blocky_masks(rng, 16, config.image_size, config.detcon.max_mask_id)
    pixels = host.reshape(16, grid, side, grid, side).transpose(0, 1, 3, 2, 4)
    for cell in pixels.reshape(-1, side * side):
      counts = np.bincount(cell)
      cells += 1
      mixed += np.count_nonzero(counts) > 1
      tied += np.count_nonzero(counts == counts.max()) > 1
    fh = jnp.asarray(host)
    keys = jax.random.split(jax.random.PRNGKey(trial), 16)
    ours = jax.jit(variants['ours, cell ids'])(keys, fh)
    naive = jax.jit(variants['naive, cell ids'])(keys, fh)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(naive))
    ours = jax.jit(variants['ours, full'])(keys, fh)
    naive = jax.jit(variants['naive, full'])(keys, fh)
    for a, b in zip(ours, naive, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  print('check: ours and naive give identical cell ids, sampled ids and '
        f'weights on 4 x 16 random blocky masks ({cells} cells: {mixed} of '
        f'several ids, {tied} with a tie for the majority)')


def _measure(fn, batch, config):
  """Returns (peak bytes, temp bytes, median seconds or None)."""
  s = config.image_size
  keys = jax.random.split(jax.random.PRNGKey(0), batch)
  spec = jax.ShapeDtypeStruct((batch, s, s, 1), jnp.int32)
  compiled = jax.jit(fn).lower(keys, spec).compile()
  stats = compiled.memory_analysis()
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes +
          stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  if peak > _MEMORY_FRACTION.value * _available_bytes():
    return peak, stats.temp_size_in_bytes, None
  fh = jnp.asarray(_blocky_masks(np.random.default_rng(1), batch, s,
                                 config.detcon.max_mask_id))
  jax.block_until_ready(compiled(keys, fh))  # Warm-up.
  times, start = [], time.perf_counter()
  while len(times) < _REPEATS.value and (
      not times or time.perf_counter() - start < _MAX_SECONDS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(keys, fh))
    times.append(time.perf_counter() - t0)
  return peak, stats.temp_size_in_bytes, (statistics.median(times),
                                          len(times))


def main(argv):
  del argv
  _print_header()
  config = _config()
  s, top = config.image_size, config.detcon.max_mask_id
  variants = _variants(config)
  _check_equal(variants, config)
  print(f'\nmask pooling at {s}x{s} ({train.grid_size(s)}x'
        f'{train.grid_size(s)} cells), max_mask_id {top}, '
        f'{config.detcon.num_samples} sampled ids; peak = XLA arguments + '
        'outputs + temporaries; time = median per call')
  print(f'{"batch":>5}  {"variant":<16} {"peak MiB":>9} {"temp MiB":>9} '
        f'{"ms/call":>9} {"calls":>5}')
  ratios = []
  for batch in (int(b) for b in _BATCHES.value):
    rows = {}
    for name, fn in variants.items():
      peak, temp, timing = _measure(fn, batch, config)
      rows[name] = (peak, timing)
      ms, calls = (f'{timing[0] * 1e3:.1f}', str(timing[1])) if timing else (
          'skipped', '0')
      print(f'{batch:>5}  {name:<16} {peak / _MIB:>9.1f} {temp / _MIB:>9.1f} '
            f'{ms:>9} {calls:>5}')
    one_hot = batch * s * s * top * 4 / _MIB
    print(f'{"":>5}  (the float32 one-hot alone is {one_hot:.0f} MiB)')
    for kind in ('cell ids', 'full'):
      ours_peak, ours_t = rows[f'ours, {kind}']
      naive_peak, naive_t = rows[f'naive, {kind}']
      speed = (f'{naive_t[0] / ours_t[0]:.1f}x' if ours_t and naive_t
               else 'n/a')
      ratios.append((batch, kind, naive_peak / ours_peak, speed))
  print('\nnaive / ours')
  print(f'{"batch":>5}  {"variant":<9} {"peak memory":>12} {"time":>8}')
  for batch, kind, mem, speed in ratios:
    print(f'{batch:>5}  {kind:<9} {mem:>11.1f}x {speed:>8}')
  print(f'\nload average (1/5/15 min) now {machine.load_average()}')


if __name__ == '__main__':
  app.run(main)
