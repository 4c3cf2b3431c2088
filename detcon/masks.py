"""Mask pooling and sampling of DetCon-B (docs/method.md).

The FH mask at crop resolution `[B, H, W]` is split into the encoder's output
grid (`g x g` cells of `H/g x W/g` pixels; 7x7 cells of 32x32 at 224). Each
cell belongs to the id covering most of its pixels (ties: the lower id). The
per-cell histogram is built by a scatter-add into `[B, cells, max_mask_id + 1]`
counts: no full-resolution one-hot, no loop over the batch.

Ids at or above `max_mask_id` (possible once masks are stored wider than
uint8), and negative ids, share one overflow bucket, id `max_mask_id`: such a
cell belongs to no sampled object, so it neither crashes nor aliases another
object.
"""

import jax
import jax.numpy as jnp


def cell_mask_ids(masks: jax.Array, grid_size: int,
                  max_mask_id: int = 256) -> jax.Array:
  """Majority mask id of each cell.

  Args:
    masks: int `[B, H, W]` mask ids, H and W divisible by `grid_size`.
    grid_size: cells per side (the encoder output is `grid_size^2` cells).
    max_mask_id: ids at or above it go to the overflow bucket `max_mask_id`.

  Returns:
    int32 `[B, grid_size * grid_size]`, cells in row-major order.
  """
  b, h, w = masks.shape
  if h % grid_size or w % grid_size:
    raise ValueError(f'mask size {h}x{w} is not divisible by the {grid_size}'
                     f'x{grid_size} feature grid; use an image size that is a '
                     'multiple of 32')
  ch, cw = h // grid_size, w // grid_size
  ids = masks.astype(jnp.int32)
  ids = jnp.where((ids < 0) | (ids > max_mask_id), max_mask_id, ids)
  # [B, g, ch, g, cw] -> [B, g*g, ch*cw]: the pixels of each cell.
  ids = ids.reshape(b, grid_size, ch, grid_size, cw)
  ids = ids.transpose(0, 1, 3, 2, 4).reshape(b, grid_size * grid_size, ch * cw)
  num_cells, num_ids = grid_size * grid_size, max_mask_id + 1
  flat = (jnp.arange(b * num_cells).reshape(b, num_cells, 1) * num_ids + ids)
  counts = jnp.zeros(b * num_cells * num_ids, jnp.int32).at[flat.ravel()].add(1)
  counts = counts.reshape(b, num_cells, num_ids)
  return jnp.argmax(counts, axis=-1).astype(jnp.int32)  # First max: lower id.


def sample_mask_ids(rng: jax.Array, cell_ids: jax.Array, num_samples: int = 16,
                    max_mask_id: int = 256) -> jax.Array:
  """Samples ids uniformly with replacement among the ids owning a cell.

  Args:
    rng: PRNG key.
    cell_ids: int32 `[B, num_cells]` from `cell_mask_ids`.
    num_samples: ids drawn per image.
    max_mask_id: the overflow id, never drawn.

  Returns:
    int32 `[B, num_samples]`. An image whose cells are all overflow (only
    possible with ids >= max_mask_id everywhere) gets id 0, which owns no cell
    and so pools to a zero feature and has no positive in the loss.
  """
  present = jax.nn.one_hot(cell_ids, max_mask_id + 1, dtype=jnp.int32).max(1)
  present = present[:, :max_mask_id] > 0  # [B, max_mask_id]
  logits = jnp.where(present, 0.0, -jnp.inf)
  logits = jnp.where(present.any(-1, keepdims=True), logits, 0.0)
  samples = jax.random.categorical(rng, logits, axis=-1,
                                   shape=(num_samples, cell_ids.shape[0]))
  samples = jnp.where(present.any(-1), samples, 0)
  return samples.T.astype(jnp.int32)


def pooling_weights(cell_ids: jax.Array, sampled_ids: jax.Array) -> jax.Array:
  """Weights that average the cells of each sampled mask.

  Args:
    cell_ids: int32 `[B, num_cells]`.
    sampled_ids: int32 `[B, K]`.

  Returns:
    float32 `[B, K, num_cells]`: 1/n on the n cells of the sampled id, else 0,
    so `einsum('bkc,bcd->bkd', weights, features)` is each mask's mean feature.
  """
  member = (cell_ids[:, None, :] == sampled_ids[:, :, None]).astype(jnp.float32)
  return member / jnp.maximum(member.sum(-1, keepdims=True), 1.0)


def global_pooling_weights(batch_size: int, num_cells: int) -> jax.Array:
  """`[B, 1, num_cells]` weights of the image-level (BYOL) mean pool."""
  return jnp.full((batch_size, 1, num_cells), 1.0 / num_cells, jnp.float32)
