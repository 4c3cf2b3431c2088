r"""Frozen-backbone semantic segmentation: the yardstick of dense features.

  python -m detcon.dense_eval --checkpoint_dir=/ckpt/detcon-r50 \
      --dataset_directory=/data/VOCdevkit/VOC2012

DetCon's gains are on dense transfer (docs/method.md), so this is how runs are
compared (docs/method.md). The encoder is frozen and run in inference mode
(BatchNorm with its moving statistics); its final feature map, stride 32,
is all either protocol sees:

  linear  A linear probe: BatchNorm + 1x1 convolution on the feature map,
          logits upsampled bilinearly to the label size, per-pixel
          cross-entropy that ignores label 255. It is trained with SGD
          (Nesterov momentum 0.9, cosine decay) on random-resized crops and
          flips of the train split, whose features are extracted once
          (`--crops_per_image` crops per image) and reused every step.
  nn      Dense nearest-neighbour retrieval, no training (the "Hummingbird"
          protocol, Balazevic et al., NeurIPS 2023): a memory bank of the
          train crops' patch features with each patch's label distribution;
          each evaluation patch takes the average of its k nearest
          neighbours' distributions (cosine similarity), weighted by a
          softmax of similarity / temperature (k = 30, temperature 0.02 as
          in that work), upsampled bilinearly to the label size.

An evaluation image is resized whole to `--image_size` squared for the
encoder; its per-patch scores are upsampled back to the label's own size,
so predictions and metrics are at the original resolution. Mean IoU is
taken over the classes present in the evaluation split's labels, from one
confusion matrix over the whole split; a class that is predicted but absent
from the labels still counts against the classes it was confused with.

Data: the PASCAL VOC 2012 layout (`detcon.voc`). Backbones: a pretraining
run (`--checkpoint_dir`), a NumPy dict (`--npy`, exported or released), or
random weights (`--init=random`, the baseline every comparison needs).
Writes the metrics as JSON, optionally every prediction as a VOC palette PNG
(`--predictions_dir`), and a picture of a few evaluation images.
"""

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags
from PIL import Image

from detcon import backbone as backbone_lib
from detcon import cli, log_setup, voc

PROTOCOLS = ('linear', 'nn')
CROP_AREA = (0.25, 1.0)  # Fraction of the image area of a training crop.
CROP_ASPECT = (3 / 4, 4 / 3)  # Width / height.
RESULT_FILE = 'dense_eval.json'
PICTURE_FILE = 'dense_eval.png'

FeatureFn = Callable[[np.ndarray], np.ndarray]


# Metrics.


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """Counts (label, prediction) pairs over the pixels not labelled 255.

  Args:
    predictions: int `[...]` predicted classes in 0..num_classes-1.
    labels: int `[...]` true classes, or 255 (ignored), same shape.
    num_classes: C.

  Returns:
    int64 `[C, C]`: row = true class, column = predicted class.
  """
  labels = np.asarray(labels).ravel()
  predictions = np.asarray(predictions).ravel()
  valid = labels != voc.IGNORE
  index = labels[valid].astype(np.int64) * num_classes + predictions[valid]
  return np.bincount(index, minlength=num_classes**2).reshape(
      num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray) -> dict[str, Any]:
  """mIoU, pixel accuracy and per-class IoU from a confusion matrix.

  IoU_c = TP / (TP + FP + FN). The mean is over the classes present in the
  labels (row sum > 0); a class absent from both labels and predictions has
  IoU None; one predicted but absent from the labels has IoU 0 (and is left
  out of the mean).

  Returns:
    {'miou': float, 'pixel_accuracy': float, 'per_class_iou': [C floats or
    None], 'present_classes': [class indices in the labels]}.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  gt = confusion.sum(1)
  union = gt + confusion.sum(0) - tp
  per_class = [float(tp[c] / union[c]) if union[c] else None
               for c in range(len(tp))]
  present = np.flatnonzero(gt > 0)
  if not present.size:
    raise ValueError('the evaluation labels hold no pixel other than 255')
  return {
      'miou': float(np.mean([per_class[c] for c in present])),
      'pixel_accuracy': float(tp.sum() / gt.sum()),
      'per_class_iou': per_class,
      'present_classes': present.tolist(),
  }


# Geometry.


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """`[out_size, in_size]` weights of 1-D bilinear upsampling.

  Half-pixel centres (output pixel i samples input coordinate
  (i + 0.5) * in / out - 0.5), clamped at the edges: the convention of
  `jax.image.resize` and of PyTorch's `align_corners=False`. Applying it
  along both axes (`R_y @ x @ R_x.T`) upsamples a feature map to a label.
  """
  coords = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  coords = np.clip(coords, 0, in_size - 1)
  low = np.floor(coords).astype(int)
  high = np.minimum(low + 1, in_size - 1)
  frac = coords - low
  matrix = np.zeros((out_size, in_size), np.float32)
  matrix[np.arange(out_size), low] += 1 - frac
  matrix[np.arange(out_size), high] += frac
  return matrix


def upsample(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear upsampling of `[h, w, C]` scores to `[H, W, C]` (NumPy)."""
  ry = bilinear_matrix(size[0], scores.shape[0])
  rx = bilinear_matrix(size[1], scores.shape[1])
  return np.einsum('Yy,yxc,Xx->YXc', ry, scores, rx, optimize=True)


def random_crop(rng: np.random.Generator, image: np.ndarray,
                labels: np.ndarray, size: int) -> tuple[np.ndarray,
                                                        np.ndarray]:
  """A random-resized crop and flip of an image and its labels.

  The window covers U(0.25, 1) of the image area with aspect (width /
  height) exp(U(log 3/4, log 4/3)), clipped to the image; it is flipped
  left-right with p = 0.5 and resized to `size` squared: bilinear for the
  image, nearest for the labels.

  Returns:
    (uint8 `[size, size, 3]`, uint8 `[size, size]`).
  """
  h, w = labels.shape
  area = rng.uniform(*CROP_AREA) * h * w
  aspect = np.exp(rng.uniform(*np.log(CROP_ASPECT)))
  cw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
  ch = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
  y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
  image, labels = image[y:y + ch, x:x + cw], labels[y:y + ch, x:x + cw]
  if rng.random() < 0.5:
    image, labels = image[:, ::-1], labels[:, ::-1]
  return resize_image(image, size), resize_labels(labels, size)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 `[H, W, 3]` -> `[size, size, 3]`, bilinear."""
  return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
      (size, size), Image.Resampling.BILINEAR))


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
  """uint8 `[H, W]` -> `[size, size]`, nearest neighbour."""
  return np.asarray(Image.fromarray(np.ascontiguousarray(labels)).resize(
      (size, size), Image.Resampling.NEAREST))


def patch_label_distributions(labels: np.ndarray, grid: tuple[int, int],
                              num_classes: int) -> np.ndarray:
  """The class histogram of each feature-map patch, over its non-255 pixels.

  Args:
    labels: uint8 `[N, S, S]`, S divisible by the grid.
    grid: (h, w) patches per side.
    num_classes: C.

  Returns:
    float32 `[N, h, w, C]`, each patch's fractions of its labelled pixels
    (all zeros for a patch with none).
  """
  n, s, _ = labels.shape
  h, w = grid
  patches = labels.reshape(n, h, s // h, w, s // w).transpose(0, 1, 3, 2, 4)
  patches = patches.reshape(n, h, w, -1)
  counts = np.stack([(patches == c).sum(-1) for c in range(num_classes)], -1)
  total = counts.sum(-1, keepdims=True)
  return (counts / np.maximum(total, 1)).astype(np.float32)


# Backbone.


Backbone = backbone_lib.Backbone


def make_feature_fn(backbone: Backbone, batch_size: int) -> FeatureFn:
  """Jitted batched forward pass: uint8 images -> final feature maps.

  Args:
    backbone: the frozen encoder.
    batch_size: images per call; smaller inputs are padded (one compile).

  Returns:
    A function from uint8 `[n, S, S, 3]` (n <= batch_size) to float32
    `[n, S/32, S/32, C]` on the host.
  """
  features = backbone_lib.feature_map_fn(backbone)

  def fn(images):
    n = len(images)
    padded = np.pad(images, [(0, batch_size - n)] + [(0, 0)] * 3)
    return np.asarray(features(padded.astype(np.float32) / 255.0))[:n]

  return fn


# The linear probe.


def _probe(features, is_training, num_classes):
  x = hk.BatchNorm(True, True, decay_rate=0.99, name='batchnorm')(
      features, is_training)
  return hk.Conv2D(num_classes, 1, name='conv')(x)


def train_linear_probe(features: np.ndarray, labels: np.ndarray, *,
                       num_classes: int, steps: int, batch_size: int,
                       learning_rate: float, seed: int,
                       progress: bool = False) -> tuple[hk.Params, hk.State]:
  """Trains BatchNorm + 1x1 conv on frozen feature maps.

  Args:
    features: `[N, h, w, D]` feature maps of the training crops (any float
      dtype; float16 keeps large caches small).
    labels: uint8 `[N, S, S]` labels of the crops (255 ignored).
    num_classes: C.
    steps: SGD steps; each draws `batch_size` crops without replacement
      within an epoch.
    batch_size: crops per step.
    learning_rate: peak learning rate (cosine decay to 0, Nesterov momentum
      0.9).
    seed: initialisation and crop order.
    progress: show a progress bar.

  Returns:
    The probe's (params, state), for `probe_scores`.
  """
  _, h, w, _ = features.shape
  s = labels.shape[1]
  ry, rx = jnp.asarray(bilinear_matrix(s, h)), jnp.asarray(
      bilinear_matrix(s, w))
  probe = hk.transform_with_state(
      functools.partial(_probe, num_classes=num_classes))
  optimizer = optax.sgd(optax.cosine_decay_schedule(learning_rate, steps),
                        momentum=0.9, nesterov=True)

  def loss_fn(params, state, feats, labs):
    logits, state = probe.apply(params, state, None, feats, True)
    logits = jnp.einsum('Yy,byxc,Xx->bYXc', ry, logits, rx)
    valid = labs != voc.IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labs, 0).astype(jnp.int32))
    return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1), state

  @jax.jit
  def update(params, state, opt_state, feats, labs):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, feats.astype(jnp.float32), labs)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  rng = np.random.default_rng(seed)
  batch_size = min(batch_size, len(features))
  params, state = probe.init(jax.random.key(seed),
                             jnp.asarray(features[:1], jnp.float32), True)
  opt_state = optimizer.init(params)
  order = np.empty(0, int)
  bar = tqdm.tqdm(range(steps), desc='linear probe', unit='step',
             disable=not progress, mininterval=1.0)
  for step in bar:
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(features))])
    index, order = order[:batch_size], order[batch_size:]
    params, state, opt_state, loss = update(
        params, state, opt_state, features[index], labels[index])
    if step % 50 == 0 or step == steps - 1:
      bar.set_postfix(loss=f'{float(loss):.4f}')
  bar.close()
  logging.info('linear probe: %d steps, final loss %.4f', steps, float(loss))
  return params, state


def probe_scores(probe: tuple[hk.Params, hk.State], features: np.ndarray,
                 num_classes: int) -> np.ndarray:
  """Per-patch logits `[n, h, w, C]` of a trained probe (inference mode)."""
  params, state = probe
  model = hk.transform_with_state(
      functools.partial(_probe, num_classes=num_classes))
  logits, _ = model.apply(params, state, None,
                          jnp.asarray(features, jnp.float32), False)
  return np.asarray(logits)


# Nearest-neighbour retrieval.


def normalize(x: np.ndarray) -> np.ndarray:
  """L2-normalises the last axis (float32)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nn_label_distributions(bank_features: np.ndarray, bank_labels: np.ndarray,
                           queries: np.ndarray, *, neighbours: int,
                           temperature: float) -> np.ndarray:
  """Label distributions of queries by a softmax vote of their neighbours.

  Args:
    bank_features: `[M, D]` memory bank, L2-normalised.
    bank_labels: `[M, C]` label distribution of each bank entry.
    queries: `[Q, D]` query features, L2-normalised.
    neighbours: k (at most M).
    temperature: softmax temperature on cosine similarities.

  Returns:
    float32 `[Q, C]`: sum over the k most similar bank entries of
    softmax_k(similarity / temperature) x their label distribution.
  """
  k = min(neighbours, len(bank_features))
  sims, index = _top_k(jnp.asarray(bank_features), jnp.asarray(queries), k)
  weights = jax.nn.softmax(sims / temperature, axis=-1)
  return np.asarray(jnp.einsum('qk,qkc->qc', weights,
                               jnp.asarray(bank_labels)[index]))


@functools.partial(jax.jit, static_argnums=2)
def _top_k(bank, queries, k):
  return jax.lax.top_k(queries @ bank.T, k)


def build_memory_bank(features: np.ndarray, distributions: np.ndarray,
                      max_size: int, seed: int) -> tuple[np.ndarray,
                                                         np.ndarray]:
  """The nn memory bank: patches with at least one labelled pixel.

  Args:
    features: `[N, h, w, D]` feature maps of the training crops.
    distributions: `[N, h, w, C]` from `patch_label_distributions`.
    max_size: keep at most this many patches (a seeded uniform sample).
    seed: the sample.

  Returns:
    (`[M, D]` L2-normalised features, `[M, C]` distributions).
  """
  feats = features.reshape(-1, features.shape[-1])
  dists = distributions.reshape(-1, distributions.shape[-1])
  keep = np.flatnonzero(dists.sum(-1) > 0)
  if len(keep) > max_size:
    keep = np.sort(np.random.default_rng(seed).choice(keep, max_size,
                                                      replace=False))
  return normalize(feats[keep]), dists[keep]


# The whole evaluation.


class TrainSet(NamedTuple):
  features: np.ndarray  # float16 [N, h, w, D], N = images x crops.
  labels: np.ndarray  # uint8 [N, S, S].


def readable_examples(root: str, ids: Sequence[str], num_classes: int,
                      skipped: list[str], desc: str, progress: bool):
  """Yields (id, image, labels) of `voc.load_example`, with a progress bar.

  An image that cannot be decoded is logged, appended to `skipped` and left
  out; any other problem (`voc.VocError`) stops the run.
  """
  for image_id in tqdm.tqdm(ids, desc=desc, unit='img', disable=not progress,
                       mininterval=1.0):
    try:
      yield (image_id, *voc.load_example(root, image_id, num_classes))
    except voc.UnreadableImage as e:
      logging.warning('Skipping %s', e)
      skipped.append(image_id)


def extract_train_crops(root: str, ids: Sequence[str], feature_fn: FeatureFn,
                        *, num_classes: int, image_size: int,
                        crops_per_image: int, batch_size: int, seed: int,
                        progress: bool) -> tuple[TrainSet, list[str]]:
  """Features of random crops of the train images (for both protocols).

  Returns:
    (the crops' features and labels, the ids of unreadable images skipped).
  """
  rng = np.random.default_rng(seed)
  features, labels, pending, skipped = [], [], [], []

  def flush():
    features.append(feature_fn(np.stack([p[0] for p in pending])).astype(
        np.float16))
    labels.extend(p[1] for p in pending)
    pending.clear()

  for _, image, label in readable_examples(root, ids, num_classes, skipped,
                                           'train features', progress):
    for _ in range(crops_per_image):
      pending.append(random_crop(rng, image, label, image_size))
      if len(pending) == batch_size:
        flush()
  if pending:
    flush()
  if not labels:
    raise ValueError('no readable training image')
  return TrainSet(np.concatenate(features), np.stack(labels)), skipped


def evaluate(root: str, ids: Sequence[str], feature_fn: FeatureFn,
             scorers: dict[str, Callable[[np.ndarray], np.ndarray]], *,
             num_classes: int, image_size: int, batch_size: int,
             predictions_dir: str | None = None, keep: int = 0,
             progress: bool = False) -> tuple[dict[str, np.ndarray],
                                              list[str], list[tuple]]:
  """Runs every protocol over the evaluation images.

  Args:
    root, ids: the VOC folder and the evaluation ids.
    feature_fn: from `make_feature_fn`.
    scorers: protocol -> function from feature maps `[n, h, w, D]` to
      per-patch class scores `[n, h, w, C]` (logits or distributions).
    num_classes: C.
    image_size: side the images are resized to for the encoder.
    batch_size: images per forward pass.
    predictions_dir: when set, `<dir>/<protocol>/<id>.png` palette PNGs.
    keep: how many (image, labels, {protocol: prediction}) to return, for
      the picture.
    progress: show a progress bar.

  Returns:
    ({protocol: confusion matrix}, ids of unreadable images skipped, the
    kept examples).
  """
  confusion = {p: np.zeros((num_classes, num_classes), np.int64)
               for p in scorers}
  if predictions_dir:
    for p in scorers:
      os.makedirs(os.path.join(predictions_dir, p), exist_ok=True)
  skipped, kept, pending = [], [], []

  def flush():
    feats = feature_fn(np.stack([resize_image(img, image_size)
                                 for _, img, _ in pending]))
    scores = {p: fn(feats) for p, fn in scorers.items()}
    for i, (image_id, image, labels) in enumerate(pending):
      predictions = {}
      for p in scorers:
        pred = upsample(scores[p][i], labels.shape).argmax(-1).astype(
            np.uint8)
        confusion[p] += confusion_matrix(pred, labels, num_classes)
        if predictions_dir:
          voc.write_label_png(
              os.path.join(predictions_dir, p, f'{image_id}.png'), pred)
        predictions[p] = pred
      if len(kept) < keep:
        kept.append((image, labels, predictions))
    pending.clear()

  for example in readable_examples(root, ids, num_classes, skipped,
                                    'evaluation', progress):
    pending.append(example)
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  return confusion, skipped, kept


def check_files(root: str, ids: Sequence[str], split: str) -> None:
  """Fails early, naming them, when images or labels of a split are missing."""
  missing = [path for i in ids
             for path in (voc.image_path(root, i), voc.label_path(root, i))
             if not os.path.isfile(path)]
  if missing:
    listing = ', '.join(missing[:5]) + (
        f' and {len(missing) - 5} more' if len(missing) > 5 else '')
    raise voc.VocError(
        f'{len(missing)} files listed by the {split} split are missing: '
        f'{listing}. Every id of ImageSets/Segmentation/{split}.txt needs '
        f'{voc.IMAGE_DIR}/<id>.jpg and {voc.CLASS_DIR}/<id>.png')


def colourise(labels: np.ndarray) -> np.ndarray:
  """uint8 `[H, W]` labels -> `[H, W, 3]` VOC palette colours."""
  return voc.palette()[labels]


def draw_picture(path: str, kept: Sequence[tuple], results: dict,
                 title: str) -> None:
  """Image | ground truth | each protocol's prediction, one row per image."""
  from detcon import plots  # pylint: disable=g-import-not-at-top
  rows = []
  for image, labels, predictions in kept:
    row = [(image, 'image'), (colourise(labels), 'ground truth')]
    row += [(colourise(pred), f'{p} prediction')
            for p, pred in predictions.items()]
    rows.append(row)
  scores = ', '.join(f'{p} mIoU {r["miou"]:.3f}' for p, r in results.items())
  plots.image_sheet(path, rows, f'{title}: {scores}', notes=[
      'Colours: the VOC palette (cream = 255, ignored). Predictions are at '
      'the label\'s resolution, from the frozen encoder\'s stride-32 '
      'features.'])


def run(*, dataset_directory: str, backbone: Backbone, output: str | None,
        num_classes: int = 21, train_split: str = 'train',
        eval_split: str = 'val', protocols: Sequence[str] = PROTOCOLS,
        image_size: int = 448, crops_per_image: int = 2,
        batch_size: int = 16, linear_steps: int = 2000,
        linear_learning_rate: float = 0.1, nn_neighbours: int = 30,
        nn_temperature: float = 0.02, nn_memory_size: int = 100_000,
        predictions_dir: str | None = None, picture: str | None = None,
        picture_images: int = 4, seed: int = 0,
        progress: bool = False) -> dict[str, Any]:
  """Dense evaluation of a frozen backbone; see the module docstring.

  Returns (and writes as JSON to `output`, unless None):
    {protocol: {'miou', 'pixel_accuracy', 'per_class_iou',
    'present_classes', 'wall_time_s'}, 'backbone', 'image_size',
    'num_train_images', 'num_eval_images', 'unreadable_images',
    'feature_images_per_s'}.
  """
  unknown = sorted(set(protocols) - set(PROTOCOLS))
  if unknown or not protocols:
    raise ValueError(f'unknown protocols {unknown}; use a comma-separated '
                     f'subset of {",".join(PROTOCOLS)}')
  if image_size % 32:
    raise ValueError(f'--image_size={image_size} must be a multiple of 32 '
                     '(the encoder output stride)')
  train_ids = voc.read_split(dataset_directory, train_split)
  eval_ids = voc.read_split(dataset_directory, eval_split)
  check_files(dataset_directory, train_ids, train_split)
  check_files(dataset_directory, eval_ids, eval_split)
  logging.info('Dense evaluation of %s on %s: %d %s and %d %s images at '
               '%dx%d, protocols %s.', backbone.describe(),
               dataset_directory, len(train_ids), train_split, len(eval_ids),
               eval_split, image_size, image_size, ','.join(protocols))
  feature_fn = make_feature_fn(backbone, batch_size)

  start = time.time()
  train, skipped_train = extract_train_crops(
      dataset_directory, train_ids, feature_fn, num_classes=num_classes,
      image_size=image_size, crops_per_image=crops_per_image,
      batch_size=batch_size, seed=seed, progress=progress)
  extract_s = time.time() - start
  grid = train.features.shape[1:3]
  scorers, setup_s = {}, {}
  if 'linear' in protocols:
    start = time.time()
    probe = train_linear_probe(
        train.features, train.labels, num_classes=num_classes,
        steps=linear_steps, batch_size=batch_size,
        learning_rate=linear_learning_rate, seed=seed, progress=progress)
    scorers['linear'] = functools.partial(probe_scores, probe,
                                          num_classes=num_classes)
    setup_s['linear'] = time.time() - start
  if 'nn' in protocols:
    start = time.time()
    bank = build_memory_bank(
        train.features,
        patch_label_distributions(train.labels, grid, num_classes),
        nn_memory_size, seed)
    logging.info('nn memory bank: %d patches.', len(bank[0]))

    def nn_scores(feats):
      n, h, w, d = feats.shape
      dists = nn_label_distributions(
          *bank, normalize(feats.reshape(-1, d)), neighbours=nn_neighbours,
          temperature=nn_temperature)
      return dists.reshape(n, h, w, -1)

    scorers['nn'] = nn_scores
    setup_s['nn'] = time.time() - start
  del train

  start = time.time()
  confusion, skipped_eval, kept = evaluate(
      dataset_directory, eval_ids, feature_fn, scorers,
      num_classes=num_classes, image_size=image_size, batch_size=batch_size,
      predictions_dir=predictions_dir, keep=picture_images,
      progress=progress)
  eval_s = time.time() - start
  num_train = len(train_ids) - len(skipped_train)
  num_eval = len(eval_ids) - len(skipped_eval)
  if not num_eval:
    raise ValueError('no readable evaluation image')
  result = {}
  for p in scorers:
    result[p] = segmentation_metrics(confusion[p])
    # Each protocol's own work plus its share of the evaluation pass.
    result[p]['wall_time_s'] = round(setup_s[p] + eval_s / len(scorers), 2)
  result.update(
      backbone=backbone.describe(), image_size=image_size,
      num_train_images=num_train, num_eval_images=num_eval,
      unreadable_images=len(skipped_train) + len(skipped_eval),
      feature_images_per_s=round(num_train * crops_per_image / extract_s, 2),
      feature_extraction_s=round(extract_s, 2))
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
      json.dump(result, f, indent=1)
  if picture and kept:
    draw_picture(picture, kept, {p: result[p] for p in scorers},
                 f'Dense evaluation of {backbone.describe()}')
  return result


# Backbones and the command line.


load_backbone = backbone_lib.load


def _define_flags() -> None:
  """The command's flags (defined only when run as a program)."""
  flags.DEFINE_string(
      'dataset_directory', None, 'VOC 2012 layout root: JPEGImages/, '
      'SegmentationClass/, ImageSets/Segmentation/<split>.txt.',
      required=True)
  flags.DEFINE_integer('num_classes', 21, 'Number of classes, background '
                       'included (labels 0..num_classes-1; 255 ignored).',
                       lower_bound=2)
  flags.DEFINE_string('train_split', 'train', 'Split the probe and the '
                      'memory bank learn from.')
  flags.DEFINE_string('eval_split', 'val', 'Split the metrics are on.')
  flags.DEFINE_string('checkpoint_dir', None, 'Backbone: the newest '
                      'checkpoint of this pretraining run.')
  flags.DEFINE_string('npy', None, 'Backbone: a NumPy dict (from '
                      'detcon.export --format=npy, or a released file).')
  flags.DEFINE_enum('init', None, ['random'], 'Backbone: random weights (the '
                    'baseline row).')
  flags.DEFINE_string('encoder', None, 'Encoder of --init (default '
                      'ResNet50); checked against --checkpoint_dir and --npy '
                      '(whose encoder is otherwise read from the shapes).')
  flags.DEFINE_float('width_multiplier', 1, 'Width multiplier of --init '
                     '(e.g. 0.25, 0.5, 1, 2).', lower_bound=0.01)
  flags.DEFINE_list('protocols', list(PROTOCOLS), 'Comma-separated: linear '
                    '(BatchNorm + 1x1 conv probe), nn (nearest-neighbour '
                    'retrieval).')
  flags.DEFINE_integer('image_size', 448, 'Side the images and training '
                       'crops are resized to for the encoder (a multiple of '
                       '32; 448 gives a 14x14 feature map).', lower_bound=32)
  flags.DEFINE_integer('crops_per_image', 2, 'Random-resized crops (with '
                       'flips) per train image whose features train the '
                       'probe and fill the memory bank.', lower_bound=1)
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass and crops '
                       'per probe step.', lower_bound=1)
  flags.DEFINE_integer('linear_steps', 2000, 'SGD steps of the linear '
                       'probe.', lower_bound=1)
  flags.DEFINE_float('linear_learning_rate', 0.1, 'Peak learning rate of the '
                     'probe (cosine decay, Nesterov momentum 0.9).',
                     lower_bound=0.0)
  flags.DEFINE_integer('nn_neighbours', 30, 'k of the nearest-neighbour '
                       'vote.', lower_bound=1)
  flags.DEFINE_float('nn_temperature', 0.02, 'Softmax temperature of the '
                     'vote, on cosine similarities.', lower_bound=1e-6)
  flags.DEFINE_integer('nn_memory_size', 100_000, 'At most this many train '
                       'patches in the memory bank (a seeded sample).',
                       lower_bound=1)
  flags.DEFINE_string('output', None, 'JSON result file. Default: '
                      f'<checkpoint_dir>/{RESULT_FILE}; required with --npy '
                      'or --init.')
  flags.DEFINE_string('predictions_dir', None, 'Write each evaluation '
                      'image\'s prediction as a VOC palette PNG at the '
                      'label\'s size: <dir>/<protocol>/<id>.png.')
  flags.DEFINE_string('picture', None, 'PNG of a few evaluation images: '
                      'image | ground truth | predictions. Default: '
                      f'{PICTURE_FILE} beside --output; "" for none.')
  flags.DEFINE_integer('picture_images', 4, 'Rows of the picture.',
                       lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seeds the crops, the probe, the memory '
                       'bank sample and --init=random.')


def main(argv):
  log_setup.apply()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  f = flags.FLAGS
  try:
    output = f.output
    if not output:
      if not f.checkpoint_dir:
        raise ValueError('pass --output=<file>.json (only a --checkpoint_dir '
                         'run has a default place for the result)')
      output = os.path.join(f.checkpoint_dir, RESULT_FILE)
    picture = f.picture
    if picture is None:
      picture = os.path.join(os.path.dirname(os.path.abspath(output)),
                             PICTURE_FILE)
    backbone = load_backbone(checkpoint_dir=f.checkpoint_dir, npy=f.npy,
                             init=f.init, encoder=f.encoder,
                             width_multiplier=f.width_multiplier,
                             seed=f.seed)
    result = run(
        dataset_directory=f.dataset_directory, backbone=backbone,
        output=output, num_classes=f.num_classes,
        train_split=f.train_split, eval_split=f.eval_split,
        protocols=f.protocols, image_size=f.image_size,
        crops_per_image=f.crops_per_image, batch_size=f.batch_size,
        linear_steps=f.linear_steps,
        linear_learning_rate=f.linear_learning_rate,
        nn_neighbours=f.nn_neighbours, nn_temperature=f.nn_temperature,
        nn_memory_size=f.nn_memory_size, predictions_dir=f.predictions_dir,
        picture=picture or None, picture_images=f.picture_images,
        seed=f.seed, progress=sys.stderr.isatty())
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'detcon.dense_eval: error: {e}')
  for p in PROTOCOLS:
    if p in result:
      r = result[p]
      print(f'{p:6s} mIoU {r["miou"]:.4f}  pixel accuracy '
            f'{r["pixel_accuracy"]:.4f}  ({r["wall_time_s"]:.1f} s)')
  print(f'Features: {result["feature_images_per_s"]:.1f} crops/s. '
        f'Unreadable images skipped: {result["unreadable_images"]}. '
        f'Result: {output}' + (f'; picture: {picture}' if picture else ''),
        flush=True)


if __name__ == '__main__':
  _define_flags()
  flags.adopt_module_key_flags(log_setup)  # --library_logs in --help.
  cli.run(main)
