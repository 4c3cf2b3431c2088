"""Slow, loop-based reference implementations written from docs/method.md.

These are deliberately naive: plain NumPy (float64) and Python loops, one
line of code per sentence of the specification where possible, so that they
can be checked by eye. They exist only to test the fast implementations in
`detcon/`; never import them from library code.
"""

import math

import numpy as np

# ---------------------------------------------------------------------------
# Mask pooling and sampling (docs/method.md).
# ---------------------------------------------------------------------------


def cell_mask_ids(masks, grid_size, max_mask_id=256):
  """Majority mask id of each cell of a `grid_size` x `grid_size` grid.

  Args:
    masks: integer array [B, H, W]; H and W divisible by `grid_size`.
    grid_size: number of cells along each side.
    max_mask_id: ids >= this are counted together in one overflow bucket
      whose id value is `max_mask_id`.

  Returns:
    int64 array [B, grid_size * grid_size]; cell c is the row-major index of
    the pixel block, the value is the id covering most of its pixels, ties
    going to the lower id.
  """
  masks = np.asarray(masks)
  batch, height, width = masks.shape
  cell_h = height // grid_size
  cell_w = width // grid_size
  out = np.zeros((batch, grid_size * grid_size), dtype=np.int64)
  for b in range(batch):
    for row in range(grid_size):
      for col in range(grid_size):
        counts = {}
        for y in range(row * cell_h, (row + 1) * cell_h):
          for x in range(col * cell_w, (col + 1) * cell_w):
            mask_id = int(masks[b, y, x])
            if mask_id >= max_mask_id:
              mask_id = max_mask_id
            counts[mask_id] = counts.get(mask_id, 0) + 1
        best_id = None
        for mask_id in sorted(counts):  # Ascending: the lower id wins ties.
          if best_id is None or counts[mask_id] > counts[best_id]:
            best_id = mask_id
        out[b, row * grid_size + col] = best_id
  return out


def sampleable_ids(cell_ids, max_mask_id=256):
  """Per image, the sorted ids < max_mask_id that own at least one cell."""
  cell_ids = np.asarray(cell_ids)
  result = []
  for b in range(cell_ids.shape[0]):
    present = set()
    for c in range(cell_ids.shape[1]):
      if int(cell_ids[b, c]) < max_mask_id:
        present.add(int(cell_ids[b, c]))
    result.append(sorted(present))
  return result


def pooling_weights(cell_ids, sampled_ids):
  """weights[b, k, c] = 1/n if cell c has id sampled_ids[b, k], else 0."""
  cell_ids = np.asarray(cell_ids)
  sampled_ids = np.asarray(sampled_ids)
  batch, num_cells = cell_ids.shape
  num_samples = sampled_ids.shape[1]
  weights = np.zeros((batch, num_samples, num_cells), dtype=np.float64)
  for b in range(batch):
    for k in range(num_samples):
      owned = [c for c in range(num_cells)
               if cell_ids[b, c] == sampled_ids[b, k]]
      for c in owned:
        weights[b, k, c] = 1.0 / len(owned)
  return weights


def pooled_features(cell_ids, sampled_ids, features):
  """Mean of features[b, c] over the cells c owned by sampled_ids[b, k]."""
  cell_ids = np.asarray(cell_ids)
  sampled_ids = np.asarray(sampled_ids)
  features = np.asarray(features, dtype=np.float64)
  batch, num_cells, dim = features.shape
  num_samples = sampled_ids.shape[1]
  out = np.zeros((batch, num_samples, dim), dtype=np.float64)
  for b in range(batch):
    for k in range(num_samples):
      total = np.zeros(dim, dtype=np.float64)
      count = 0
      for c in range(num_cells):
        if cell_ids[b, c] == sampled_ids[b, k]:
          total += features[b, c]
          count += 1
      out[b, k] = total / count
  return out


# ---------------------------------------------------------------------------
# The contrastive detection loss (docs/method.md).
# ---------------------------------------------------------------------------


def _normalise(v):
  v = np.asarray(v, dtype=np.float64)
  return v / np.linalg.norm(v)


def _log_softmax(logits):
  logits = np.asarray(logits, dtype=np.float64)
  top = np.max(logits)
  return logits - (top + math.log(np.sum(np.exp(logits - top))))


def detcon_direction(pred, pred_ids, cross_targets, cross_ids, own_targets,
                     own_ids, temperature=0.1, image_offset=0):
  """One direction of the DetCon loss, summed (not yet averaged) over (b, i).

  Args:
    pred: [B, K, D] online predictions of view a (local images).
    pred_ids: [B, K] their sampled mask ids.
    cross_targets: [U, V, D] target projections of the other view, for all
      images (U >= B when targets are gathered from several devices).
    cross_ids: [U, V] their ids.
    own_targets: [U, V, D] target projections of view a, all images.
    own_ids: [U, V] their ids.
    temperature: softmax temperature tau.
    image_offset: index in the target arrays of the local image 0 (the
      images' "same image" partner is target image `image_offset + b`).

  Returns:
    (sum over (b, i) of weight x cross-entropy, number of (b, i) terms).
  """
  pred = np.asarray(pred, dtype=np.float64)
  cross_targets = np.asarray(cross_targets, dtype=np.float64)
  own_targets = np.asarray(own_targets, dtype=np.float64)
  num_images, num_masks = pred.shape[:2]
  num_target_images, num_target_masks = cross_targets.shape[:2]
  total = 0.0
  for b in range(num_images):
    same_image = image_offset + b
    for i in range(num_masks):
      p = _normalise(pred[b, i])
      my_id = int(pred_ids[b, i])
      logits = []
      is_positive = []
      # Every target of the other view: positive iff same image, same id.
      for u in range(num_target_images):
        for v in range(num_target_masks):
          t = _normalise(cross_targets[u, v])
          logits.append(float(np.dot(p, t)) / temperature)
          is_positive.append(u == same_image and int(cross_ids[u, v]) == my_id)
      # Every target of the own view, except the same object in the same
      # image (removed from the softmax); all are negatives.
      for u in range(num_target_images):
        for v in range(num_target_masks):
          if u == same_image and int(own_ids[u, v]) == my_id:
            continue
          t = _normalise(own_targets[u, v])
          logits.append(float(np.dot(p, t)) / temperature)
          is_positive.append(False)
      num_positives = sum(is_positive)
      if num_positives == 0:
        continue  # Weight 0: the object was not sampled in the other view.
      log_probs = _log_softmax(logits)
      cross_entropy = 0.0
      for log_prob, positive in zip(log_probs, is_positive, strict=True):
        if positive:
          cross_entropy -= log_prob / num_positives
      same_id_count = sum(
          1 for j in range(num_masks) if int(pred_ids[b, j]) == my_id)
      total += cross_entropy / same_id_count
  return total, num_images * num_masks


def byol_nce_detcon(pred1, pred2, target1, target2, pind1, pind2, tind1,
                    tind2, temperature=0.1, image_offset=0):
  """DetCon loss: mean over (b, i) of each direction, summed over both.

  With `image_offset` and targets/ids covering more images than the
  predictions, this is the per-device value when targets are gathered from
  all devices: the local predictions are images image_offset .. + B - 1.
  """
  sum_1, count_1 = detcon_direction(pred1, pind1, target2, tind2, target1,
                                    tind1, temperature, image_offset)
  sum_2, count_2 = detcon_direction(pred2, pind2, target1, tind1, target2,
                                    tind2, temperature, image_offset)
  return sum_1 / count_1 + sum_2 / count_2


def detcon_s(proj1, proj2, ids1, ids2, temperature=0.1, anchor_images=None):
  """DetCon-S (docs/method.md): one pool of online projections, both views.

  Written from the SimCLR-style description rather than from the two-view
  split above: all projections of both views form one pool of candidates.
  An anchor (view a, image b, mask i) is scored against every member of the
  pool except those of its own view with the same image and id (itself and
  its repeats: the same object, not a negative). Its positives are the
  other view's members of image b with its id, the label uniform over them;
  without a positive its weight is 0, else 1 / (masks of (a, b) with its
  id). Per view, the weighted cross-entropies are averaged over the anchors;
  the two views' averages are summed.

  Args:
    proj1, proj2: [N, K, D] projections of views 1 and 2, all images.
    ids1, ids2: [N, K] their mask ids.
    temperature: softmax temperature tau.
    anchor_images: the images whose masks are anchors (default all): one
      device's images when the pool is gathered from several.
  """
  views = ((np.asarray(proj1, np.float64), np.asarray(ids1)),
           (np.asarray(proj2, np.float64), np.asarray(ids2)))
  num_images, num_masks = views[0][1].shape
  if anchor_images is None:
    anchor_images = range(num_images)
  pool = []  # (view, image, id, normalised vector)
  for view, (proj, ids) in enumerate(views):
    for u in range(num_images):
      for v in range(num_masks):
        pool.append((view, u, int(ids[u, v]), _normalise(proj[u, v])))
  total = 0.0
  for anchor_view, (proj, ids) in enumerate(views):
    view_sum, anchors = 0.0, 0
    for b in anchor_images:
      for i in range(num_masks):
        anchors += 1
        anchor = _normalise(proj[b, i])
        my_id = int(ids[b, i])
        logits, positive = [], []
        for view, u, mask_id, vector in pool:
          same_object = u == b and mask_id == my_id
          if same_object and view == anchor_view:
            continue
          logits.append(float(np.dot(anchor, vector)) / temperature)
          positive.append(same_object)
        if not any(positive):
          continue
        log_probs = _log_softmax(logits)
        cross_entropy = -np.mean([lp for lp, pos in zip(log_probs, positive,
                                                        strict=True) if pos])
        repeats = sum(int(ids[b, j]) == my_id for j in range(num_masks))
        view_sum += cross_entropy / repeats
    total += view_sum / anchors
  return total


def nt_xent(z1, z2, temperature=0.1):
  """SimCLR's NT-Xent loss as its paper defines it (Chen et al., 2020).

  The 2N vectors z1[0..N-1], z2[0..N-1]; for each k, with j its other view
  of the same image, l(k) = -log(exp(s_kj / tau) / sum_{m != k}
  exp(s_km / tau)), s the cosine similarity; L = mean of l(k) over all 2N.
  """
  z = [_normalise(v) for v in np.concatenate([z1, z2])]
  n = len(z1)
  total = 0.0
  for k in range(2 * n):
    j = (k + n) % (2 * n)
    logits = [float(np.dot(z[k], z[m])) / temperature
              for m in range(2 * n) if m != k]
    others = [m for m in range(2 * n) if m != k]
    total -= _log_softmax(logits)[others.index(j)]
  return total / (2 * n)


def byol_regression(pred1, pred2, target1, target2):
  """Mean over batch of (2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1))."""
  total = 0.0
  batch = len(pred1)
  for b in range(batch):
    cos_12 = np.dot(_normalise(pred1[b]), _normalise(target2[b]))
    cos_21 = np.dot(_normalise(pred2[b]), _normalise(target1[b]))
    total += (2.0 - 2.0 * cos_12) + (2.0 - 2.0 * cos_21)
  return total / batch


# ---------------------------------------------------------------------------
# Optimisation (docs/method.md).
# ---------------------------------------------------------------------------


def learning_rate(step, batch_size, total_steps, warmup_steps,
                  base_learning_rate=0.2):
  """Linear warm-up to base x batch/256, then cosine decay to 0."""
  peak = base_learning_rate * batch_size / 256.0
  if step < warmup_steps:
    return peak * step / warmup_steps
  progress = (step - warmup_steps) / (total_steps - warmup_steps)
  return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def target_ema(step, total_steps, base_ema=0.996):
  """tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2."""
  return 1.0 - (1.0 - base_ema) * (math.cos(math.pi * step / total_steps)
                                   + 1.0) / 2.0


def is_excluded_from_lars(param_name):
  """Biases and BatchNorm parameters: anything but a conv/linear weight."""
  return param_name != 'w'


def lars_step(params, grads, momentum_buffers, lr, weight_decay=1.5e-6,
              eta=1e-3, momentum=0.9):
  """One LARS step on a {module: {name: array}} dict, as docs/method.md says.

  Returns (updates, new_momentum_buffers); new params = params + updates.
  """
  updates = {}
  new_buffers = {}
  for module in params:
    updates[module] = {}
    new_buffers[module] = {}
    for name in params[module]:
      w = np.asarray(params[module][name], dtype=np.float64)
      g = np.asarray(grads[module][name], dtype=np.float64)
      m = np.asarray(momentum_buffers[module][name], dtype=np.float64)
      if not is_excluded_from_lars(name):
        g = g + weight_decay * w
        w_norm = math.sqrt(float(np.sum(w * w)))
        g_norm = math.sqrt(float(np.sum(g * g)))
        if w_norm == 0.0 or g_norm == 0.0:
          trust_ratio = 1.0
        else:
          trust_ratio = eta * w_norm / g_norm
        g = trust_ratio * g
      m = momentum * m + g
      new_buffers[module][name] = m
      updates[module][name] = -lr * m
  return updates, new_buffers


# ---------------------------------------------------------------------------
# The two views of a pretraining element (docs/method.md, Input pipeline), as
# the input pipeline made them before issue 22: each view decodes its own
# crop window; the masks are int32 throughout.
# ---------------------------------------------------------------------------


def pretrain_views(serialized, *, seed, process_index, k, image_size,
                   fh_mask_to_use=0):
  """The views of stream element `k` of a process, one step at a time.

  Args:
    serialized: the record element `k` reads (bytes).
    seed, process_index: the pipeline's seed and process.
    k: the stream element.
    image_size: S.
    fh_mask_to_use: the mask channel kept.

  Returns:
    dict: `view1`, `view2` float32 `[S, S, 3]` in [0, 1];
    `fh_segmentations1`, `fh_segmentations2` int32 `[S, S, 1]`; `window1`,
    `window2` the crop windows (y, x, h, w).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from detcon import data, records  # pylint: disable=g-import-not-at-top
  example = records.read_example(serialized)
  height, width = example['height'], example['width']
  masks = example['masks'][fh_mask_to_use]  # [H, W] int32.
  split = tf.random.experimental.stateless_split
  element_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, process_index], tf.int64), tf.constant(k, tf.int64))
  out = {}
  for view, view_seed in enumerate(tf.unstack(split(element_seed, 2)), 1):
    crop_seed, flip_seed = tf.unstack(split(view_seed, 2))
    y, x, h, w = data.sample_crop_window(crop_seed, height, width).numpy()
    flip = bool(tf.random.stateless_uniform([], flip_seed) < 0.5)
    out[f'window{view}'] = (y, x, h, w)
    image = tf.io.decode_and_crop_jpeg(example['image'], [y, x, h, w],
                                       channels=3).numpy()
    crop_masks = masks[y:y + h, x:x + w, None]
    if flip:
      image = image[:, ::-1]
      crop_masks = crop_masks[:, ::-1]
    image = tf.image.resize(image, [image_size, image_size], 'bicubic')
    out[f'view{view}'] = np.clip(image.numpy() / 255., 0., 1.)
    out[f'fh_segmentations{view}'] = tf.image.resize(
        crop_masks, [image_size, image_size], 'nearest').numpy()
  return out
