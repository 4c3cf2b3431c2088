"""The contrastive detection loss and BYOL's regression loss (docs/method.md).

One contrastive detection loss serves three objectives; only its inputs differ:

* DetCon-B: predictions = the online predictions of both views, candidates =
  the target projections (no gradient);
* DetCon-S: predictions and candidates = the online projections of both views
  (the gradient flows through both; an online vector never meets itself, as
  the own view's same-object candidates are removed);
* SimCLR: DetCon-S with one global mask per image (K = 1, all ids 0), which is
  SimCLR's NT-Xent summed over both views.

Shapes: B images per device, K sampled masks per image, D projection size.
"""

import jax
import jax.numpy as jnp

_REMOVED = -1e9  # Logit of a candidate taken out of the softmax.


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       1e-12))


def _one_direction(pred, cross, own, pind, cross_ind, own_ind, offset,
                   temperature):
  """Mean over local (b, i) of the weighted cross-entropy of one view's masks.

  Args:
    pred: `[B, K, D]` predictions of view a, L2-normalised.
    cross: `[N, K, D]` candidates of the other view, of the N images over all
      devices, L2-normalised.
    own: `[N, K, D]` candidates of view a, likewise.
    pind: int `[B, K]` ids of `pred`; `cross_ind`, `own_ind` likewise, of
      this device's images only (positives never cross images).
    offset: index in `[0, N)` of this device's first image.
    temperature: softmax temperature.
  """
  b, k, _ = pred.shape
  n = cross.shape[0]
  # same_image[b, u]: target image u is image b of this device.
  same_image = jnp.arange(n)[None, :] == (offset + jnp.arange(b))[:, None]
  same_image = same_image[:, None, :, None]  # [B, 1, N, 1]
  # Ids of the candidates for each local image, [B, 1, 1, K] vs [B, K, 1, 1].
  positive = same_image & (pind[:, :, None, None] ==
                           cross_ind[:, None, None, :])
  same_object = same_image & (pind[:, :, None, None] ==
                              own_ind[:, None, None, :])
  logits_cross = jnp.einsum('bid,uvd->biuv', pred, cross) / temperature
  logits_own = jnp.einsum('bid,uvd->biuv', pred, own) / temperature
  logits_own = jnp.where(same_object, _REMOVED, logits_own)
  logits = jnp.concatenate([logits_cross.reshape(b, k, -1),
                            logits_own.reshape(b, k, -1)], axis=-1)
  positive = positive.reshape(b, k, -1).astype(jnp.float32)
  num_positives = positive.sum(-1)
  labels = positive / jnp.maximum(num_positives, 1.0)[..., None]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -jnp.sum(labels * log_probs[..., :n * k], axis=-1)
  multiplicity = jnp.sum(pind[:, :, None] == pind[:, None, :], axis=-1)
  weight = jnp.where(num_positives > 0, 1.0 / multiplicity, 0.0)
  return jnp.mean(weight * cross_entropy)


def byol_nce_detcon(pred1, pred2, target1, target2, pind1, pind2, tind1,
                    tind2, temperature=0.1, axis_name=None):
  """The contrastive detection loss, summed over both directions.

  Each prediction of view a is scored against every candidate of the other
  view (positives: same image, same id) and of its own view (the same image's
  same id removed), as docs/method.md says. The name is the original release's.

  Args:
    pred1, pred2: `[B, K, D]` predictions of views 1 and 2: DetCon-B's online
      predictions, or DetCon-S's online projections.
    target1, target2: `[B, K, D]` candidates of views 1 and 2: DetCon-B's
      target projections (the caller stops their gradient), or DetCon-S's
      online projections, the same arrays as `pred1`, `pred2` (the gradient
      flows through both roles, also through the gathering).
    pind1, pind2: int `[B, K]` mask ids of the predictions.
    tind1, tind2: int `[B, K]` mask ids of the candidates.
    temperature: softmax temperature (0.1).
    axis_name: inside a data-parallel map, the axis whose devices' candidates
      are gathered (once, for both directions) as extra negatives. The value
      is this device's mean over its (b, i); its mean over devices equals the
      one-device loss on the whole batch, and so does its gradient.

  Returns:
    Scalar loss.
  """
  pred1, pred2, target1, target2 = map(_l2_normalize,
                                       (pred1, pred2, target1, target2))
  offset = 0
  if axis_name is not None:
    target1 = jax.lax.all_gather(target1, axis_name, tiled=True)
    target2 = jax.lax.all_gather(target2, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * pred1.shape[0]
  return (_one_direction(pred1, target2, target1, pind1, tind2, tind1, offset,
                         temperature) +
          _one_direction(pred2, target1, target2, pind2, tind1, tind2, offset,
                         temperature))


def byol_regression(pred1, pred2, target1, target2):
  """BYOL's normalised regression loss on `[B, D]` vectors, both directions."""
  def one(p, t):
    return jnp.mean(2.0 - 2.0 * jnp.sum(_l2_normalize(p) * _l2_normalize(t),
                                        -1))
  return one(pred1, target2) + one(pred2, target1)
