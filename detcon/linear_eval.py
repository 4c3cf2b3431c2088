r"""Linear evaluation of a frozen encoder (BYOL's protocol).

  python -m detcon.linear_eval --checkpoint_dir=/ckpt/detcon \
      --dataset_directory=/data/imagenet-fh --num_steps=5000
  python -m detcon.linear_eval --npy=resnet50_detcon_b_imagenet_1k.npy \
      --dataset_directory=/data/imagenet-fh --num_steps=5000

The command restores the newest pretraining checkpoint (or reads a released
or exported `.npy` file, `pretrained.load_pretrained`), trains a linear
classifier on the train records (random crop and flip) and reports top-1 and
top-5 accuracy on the validation records (centre crop), as one JSON line that
it also writes to `<checkpoint_dir>/linear_eval.json` (with `--npy`, printed
only). It runs in one process.

A linear classifier is trained on the globally mean-pooled feature map of the
frozen encoder, run in inference mode (BatchNorm with its moving statistics),
with softmax cross-entropy and SGD with Nesterov momentum 0.9 under a cosine
learning-rate schedule, without weight decay by default (as BYOL). The core
functions (`make_features_fn`, `train_linear`, `evaluate`) leave data loading
to their caller and see batches
  {'images': [B, S, S, 3] float32 in [0, 1], 'labels': [B] int32,
   'mask': optional [B] bool, False for padding examples}.
The classifier is a dict {'w': [C, num_classes], 'b': [num_classes]}.
"""

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from detcon import backbone, cli, log_setup

FeaturesFn = Callable[[jax.Array], jax.Array]
Batch = Mapping[str, np.ndarray]


def make_features_fn(encoder_name: str, width_multiplier: float,
                     params: hk.Params, state: hk.State,
                     bn_eps: float = 1e-5) -> FeaturesFn:
  """A jitted frozen encoder: images [B, S, S, 3] in [0, 1] -> [B, C].

  Args:
    encoder_name: one of `networks.ENCODERS`.
    width_multiplier: the encoder's width multiplier.
    params: Haiku parameters holding the encoder's (module 'encoder'; other
      modules are ignored).
    state: Haiku state with the encoder's BatchNorm moving statistics.
    bn_eps: BatchNorm epsilon.

  Returns:
    A function mapping images to float32 features, the encoder's last feature
    map averaged over space; BatchNorm uses the moving statistics.
  """
  return backbone.pooled_features_fn(backbone.Backbone(
      encoder_name, width_multiplier, bn_eps, params, state, 'given weights'))


def _logits(classifier: Mapping[str, jax.Array], features: jax.Array
            ) -> jax.Array:
  return features @ classifier['w'] + classifier['b']


def train_linear(features_fn: FeaturesFn, train_batches: Iterable[Batch], *,
                 num_classes: int, num_steps: int, learning_rate: float,
                 seed: int, momentum: float = 0.9, weight_decay: float = 0.0,
                 log_every: int = 100) -> dict[str, jax.Array]:
  """Trains a linear classifier on frozen features.

  Args:
    features_fn: images [B, S, S, 3] -> features [B, C] (e.g.
      `make_features_fn`); never differentiated.
    train_batches: yields at least `num_steps` batches {'images', 'labels'}.
    num_classes: number of classes.
    num_steps: number of SGD steps.
    learning_rate: peak learning rate, decayed to 0 by a cosine schedule.
    seed: seeds the classifier's initialisation.
    momentum: Nesterov momentum.
    weight_decay: L2 penalty `weight_decay / 2 * |w|^2` on the weights.
    log_every: log the training loss every this many steps.

  Returns:
    The classifier {'w': [C, num_classes], 'b': [num_classes]}.
  """
  optimizer = optax.sgd(optax.cosine_decay_schedule(learning_rate, num_steps),
                        momentum=momentum, nesterov=True)

  def loss_fn(classifier, features, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(
        _logits(classifier, features), labels).mean()
    return loss + 0.5 * weight_decay * jnp.sum(jnp.square(classifier['w']))

  @jax.jit
  def update(classifier, opt_state, features, labels):
    loss, grads = jax.value_and_grad(loss_fn)(classifier, features, labels)
    updates, opt_state = optimizer.update(grads, opt_state, classifier)
    return optax.apply_updates(classifier, updates), opt_state, loss

  batches = iter(train_batches)
  classifier = opt_state = None
  for step in range(num_steps):
    try:
      batch = next(batches)
    except StopIteration:
      raise ValueError(f'train_batches ended after {step} of {num_steps} '
                       'steps') from None
    features = features_fn(batch['images'])
    if classifier is None:
      dim = features.shape[-1]
      classifier = {
          'w': jax.random.truncated_normal(
              jax.random.key(seed), -2.0, 2.0, (dim, num_classes)) / dim**0.5,
          'b': jnp.zeros((num_classes,)),
      }
      opt_state = optimizer.init(classifier)
    classifier, opt_state, loss = update(
        classifier, opt_state, features, jnp.asarray(batch['labels']))
    if (step + 1) % log_every == 0 or step + 1 == num_steps:
      logging.info('linear eval step %d/%d: loss %.4f', step + 1, num_steps,
                   float(loss))
  if classifier is None:
    raise ValueError('num_steps must be positive')
  return classifier


@functools.partial(jax.jit, static_argnames='k')
def _count_correct(classifier, features, labels, mask, k):
  """Numbers of top-1 and top-k hits among the unmasked examples."""
  _, top = jax.lax.top_k(_logits(classifier, features), k)
  hits = top == labels[:, None]
  return (jnp.sum(hits[:, 0] & mask),
          jnp.sum(jnp.any(hits, axis=1) & mask))


def evaluate(features_fn: FeaturesFn,
             classifier_params: Mapping[str, jax.Array],
             eval_batches: Iterable[Batch]) -> dict[str, float | int]:
  """Top-1 and top-5 accuracy of the linear classifier.

  Args:
    features_fn: images -> features [B, C], as in training.
    classifier_params: from `train_linear`.
    eval_batches: batches {'images', 'labels'} and optionally 'mask' [B]
      (False: padding, not counted).

  Returns:
    {'top1': fraction, 'top5': fraction (top-k with k = min(5, num_classes)),
     'num_examples': number of counted examples}.
  """
  k = min(5, int(classifier_params['b'].shape[-1]))
  top1 = top5 = count = 0
  for batch in eval_batches:
    labels = np.asarray(batch['labels'])
    mask = np.asarray(batch.get('mask', np.ones(labels.shape, bool)), bool)
    hits1, hits5 = _count_correct(classifier_params,
                                  features_fn(batch['images']), labels, mask,
                                  k=k)
    top1 += int(hits1)
    top5 += int(hits5)
    count += int(mask.sum())
  if not count:
    raise ValueError('no evaluation examples')
  return {'top1': top1 / count, 'top5': top5 / count, 'num_examples': count}


# The command line: `python -m detcon.linear_eval`.

RESULT_FILE = 'linear_eval.json'


_CHECKPOINT_FIX = ('evaluate on the records of the pretraining classes, or '
                   'pretrain with --config.num_classes set to the number of '
                   'classes')


def _checked(batches: Iterable[Batch], num_classes: int,
             fix: str = _CHECKPOINT_FIX) -> Iterator[Batch]:
  """Passes batches through; fails on a label the classifier cannot hold."""
  for batch in batches:
    if int(np.min(batch['labels'])) < 0:
      raise ValueError(
          'the records hold images without a class (label 0, e.g. a flat '
          'folder through the mask script): linear evaluation needs labelled '
          'records, such as the ImageNet layout (one folder per class)')
    top = int(np.max(batch['labels']))
    if top >= num_classes:
      raise ValueError(
          f'the records hold label {top + 1} (1-based) but the classifier has '
          f'num_classes={num_classes}; {fix}')
    yield batch


def _padded(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
  """Pads batches to `batch_size` examples, marking the padding in 'mask'.

  One shape for every batch, so the last, smaller one compiles nothing new.
  """
  for batch in batches:
    n = len(batch['labels'])
    pad = [(0, batch_size - n)]
    yield {'images': np.pad(batch['images'], pad + [(0, 0)] * 3),
           'labels': np.pad(batch['labels'], pad),
           'mask': np.arange(batch_size) < n}


def _eval_shards(dataset_directory: str, eval_split: str) -> tuple[list[str],
                                                                   str]:
  """The shards to evaluate on and their split; 'train' if no validation."""
  from detcon import data  # pylint: disable=g-import-not-at-top
  try:
    return data.find_shards(dataset_directory, eval_split), eval_split
  except FileNotFoundError:
    if eval_split != 'validation':
      raise
  logging.warning('No validation records in %s: evaluating on the train '
                  'records (centre crop) instead, which measures fit, not '
                  'generalisation.', dataset_directory)
  return data.find_shards(dataset_directory, 'train'), 'train'


class _Source(NamedTuple):
  """A frozen encoder to evaluate, and the settings it comes with."""
  backbone: backbone.Backbone
  num_classes: int
  image_size: int  # Default crop side, pixels.
  dataset_directory: str | None  # Default records.
  name: str  # Where the weights come from, for the log.
  result: dict[str, Any]  # What the result records about the source.
  fix: str  # How to fix labels beyond num_classes.


def _from_checkpoint(checkpoint_dir: str) -> _Source:
  """The encoder and settings of the newest checkpoint of a pretraining run."""
  return source_of(backbone.from_checkpoint(checkpoint_dir))


def _from_npy(npy: str, encoder: str | None) -> _Source:
  """The encoder of a released or exported `.npy` file, its BatchNorm eps.

  The classifier gets the file's number of classes when it has a classifier
  (1000 for the released ImageNet files), else 1000.
  """
  return _from_npy_backbone(backbone.from_npy(npy, encoder))


def _from_npy_backbone(frozen: backbone.Backbone) -> _Source:
  """`_from_npy`'s settings for a loaded backbone without a config."""
  npy = frozen.source
  classifier = frozen.params.get('classifier')
  num_classes = 1000 if classifier is None else classifier['b'].shape[-1]
  return _Source(
      frozen, num_classes, 224, None, npy, {'npy': npy},
      f'{npy} sets the number of classes from its classifier, or 1000 '
      'without one; evaluate on records with labels up to that')


def run(checkpoint_dir: str | None, dataset_directory: str | None = None, *,
        num_steps: int, batch_size: int, learning_rate: float,
        image_size: int | None = None, eval_split: str = 'validation',
        seed: int = 0, npy: str | None = None, encoder: str | None = None,
        num_classes: int | None = None) -> dict[str, Any]:
  """Linear evaluation of a pretraining run's newest checkpoint or a `.npy`.

  Args:
    checkpoint_dir: the pretraining run's `--checkpoint_dir`; None with `npy`.
    dataset_directory: folder of `train-*` (and `validation-*`) records;
      None: the pretraining run's `config.dataset_directory` (required with
      `npy`).
    num_steps: SGD steps of the linear classifier.
    batch_size: images per training and evaluation batch.
    learning_rate: peak learning rate (cosine decay to 0).
    image_size: side of the square crops in pixels; None: the pretraining
      crop size (`config.image_size`; 224 with `npy`).
    eval_split: 'validation' (falls back to 'train' with a warning when the
      records have no validation split) or 'train'.
    seed: seeds the classifier and the training crops.
    npy: instead of a checkpoint, a released or exported `.npy` file
      (`backbone.from_npy`; BatchNorm eps as the file records it, else
      1e-5).
    encoder: with `npy`, the encoder to check the file against; None:
      inferred from its shapes.
    num_classes: classes of the linear classifier; None: the pretraining
      run's (`config.num_classes`) or the `.npy` file's classifier's. Needed
      for a run pretrained without classes (`num_classes` 0, e.g. COCO).

  Returns:
    {'top1', 'top5': fractions in [0, 1], 'num_examples': evaluated images,
     'eval_split': the split used, 'num_classes': the classifier's classes,
     'skipped_records': records of damaged
     shards that could not be read (each logged with a warning naming its
     file), train and evaluation, and 'pretrain_step': the checkpoint's step
     or 'npy': the file}. From a checkpoint, the same dict is written as JSON
    to `<checkpoint_dir>/linear_eval.json`.

  Raises:
    FileNotFoundError: no checkpoint, `.npy` file or records.
    ValueError: records whose labels exceed the classifier's classes, a
      `.npy` file that does not fit, or malformed shards (damaged files are
      all listed at the start).
  """
  if npy:
    if not dataset_directory:
      raise ValueError('--npy needs --dataset_directory (the records to '
                       'evaluate on)')
    source = _from_npy(npy, encoder)
  else:
    source = _from_checkpoint(checkpoint_dir)
  result = evaluate_source(
      source, dataset_directory, num_steps=num_steps, batch_size=batch_size,
      learning_rate=learning_rate, image_size=image_size,
      eval_split=eval_split, seed=seed, num_classes=num_classes)
  if not npy:
    with open(os.path.join(checkpoint_dir, RESULT_FILE), 'w') as f:
      f.write(json.dumps(result, sort_keys=True) + '\n')
  return result


def source_of(frozen: backbone.Backbone) -> _Source:
  """The settings a backbone comes with: its pretraining run's, if known.

  A backbone with a pretraining config (from a checkpoint or a live run)
  defaults to that run's classes, crop size and records; any other to those
  of a `.npy` file.
  """
  config = frozen.config
  if config is None:
    return _from_npy_backbone(frozen)
  where = f'step {frozen.step} of {frozen.source}'
  return _Source(frozen, config['num_classes'], config['image_size'],
                 config['dataset_directory'], where,
                 {'pretrain_step': frozen.step}, _CHECKPOINT_FIX)


def evaluate_source(source: _Source, dataset_directory: str | None, *,
                    num_steps: int, batch_size: int, learning_rate: float,
                    image_size: int | None, eval_split: str, seed: int,
                    num_classes: int | None) -> dict[str, Any]:
  """`run` on a loaded source (same arguments and result); writes nothing."""
  from detcon import data  # pylint: disable=g-import-not-at-top
  dataset_directory = dataset_directory or source.dataset_directory
  image_size = image_size or source.image_size
  fix = source.fix
  if num_classes:
    fix = 'set --num_classes to the number of classes of the records'
  else:
    num_classes = source.num_classes
  if num_classes < 1:
    raise ValueError(
        f'{source.name} was pretrained without classes (num_classes 0, e.g. '
        'on COCO); give --num_classes, the number of classes of the records '
        'to evaluate on')
  train_paths = data.find_shards(dataset_directory, 'train')
  eval_paths, eval_split = _eval_shards(dataset_directory, eval_split)
  # Both splits are checked now: damaged shards stop the run before training.
  paths = list(dict.fromkeys(train_paths + eval_paths))
  counts = dict(zip(paths, data.count_records_per_file(paths), strict=True))
  logging.info('Linear evaluation of %s (%s) at %dx%d: %d steps of batch %d '
               'on %s, evaluation on its %s split.', source.backbone.encoder,
               source.name, image_size, image_size, num_steps, batch_size,
               dataset_directory, eval_split)
  features_fn = backbone.pooled_features_fn(source.backbone)
  train_batches = data.make_eval_dataset(
      train_paths, batch_size=batch_size, image_size=image_size,
      mode='random', seed=seed,
      record_counts=[counts[p] for p in train_paths]).as_numpy_iterator()
  classifier = train_linear(
      features_fn, _checked(train_batches, num_classes, fix),
      num_classes=num_classes, num_steps=num_steps,
      learning_rate=learning_rate, seed=seed,
      log_every=max(num_steps // 10, 1))
  eval_batches = data.make_eval_dataset(
      eval_paths, batch_size=batch_size, image_size=image_size,
      mode='center',
      record_counts=[counts[p] for p in eval_paths]).as_numpy_iterator()
  result = evaluate(features_fn, classifier,
                    _padded(_checked(eval_batches, num_classes, fix),
                            batch_size))
  result.update(source.result, eval_split=eval_split, num_classes=num_classes,
                skipped_records=data.skipped_records(paths))
  return result


def _define_flags() -> None:
  """The command's flags (defined only when run as a program)."""
  flags.DEFINE_string(
      'checkpoint_dir', None, 'The --checkpoint_dir of a pretraining run; its '
      'newest checkpoint is evaluated and linear_eval.json is written there. '
      'Give this or --npy.')
  flags.DEFINE_string(
      'npy', None, 'Instead of --checkpoint_dir: a released checkpoint (e.g. '
      'resnet50_detcon_b_imagenet_1k.npy) or a detcon.export --format=npy '
      'file; needs --dataset_directory; the result is printed only.')
  flags.DEFINE_string(
      'encoder', None, 'With --npy: the encoder (ResNet18 ... ResNet200) to '
      'check the file against; default: inferred from its shapes.')
  flags.DEFINE_string(
      'dataset_directory', None, 'Folder of train-%05d-of-%05d (and '
      'validation-...) records from generate_fh_masks_for_imagenet.py. '
      'Default: the dataset_directory of the pretraining run (required with '
      '--npy).')
  flags.DEFINE_integer(
      'num_steps', 10_000, 'SGD steps of the linear classifier. BYOL trains '
      '80 epochs at batch 1024 (100,000 steps on ImageNet).', lower_bound=1)
  flags.DEFINE_integer('batch_size', 256, 'Images per batch.', lower_bound=1)
  flags.DEFINE_integer(
      'num_classes', None, 'Classes of the linear classifier; default: the '
      'pretraining run\'s --config.num_classes (with --npy: the file\'s '
      'classifier\'s, or 1000). Required for a run pretrained without '
      'classes (num_classes 0, e.g. COCO).', lower_bound=1)
  flags.DEFINE_float(
      'learning_rate', 0.2, 'Peak learning rate of SGD (Nesterov momentum '
      '0.9, cosine decay to 0, no weight decay); BYOL picks the best of 0.4, '
      '0.3, 0.2, 0.1, 0.05.', lower_bound=0.0)
  flags.DEFINE_integer(
      'image_size', None, 'Crop side in pixels; default: the pretraining '
      'image_size (224 with --npy).', lower_bound=1)
  flags.DEFINE_enum(
      'eval_split', 'validation', ['validation', 'train'],
      'Split to report accuracy on (centre crop). Without validation records, '
      'validation falls back to train with a warning.')


def main(argv):
  log_setup.apply()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if bool(f.checkpoint_dir) == bool(f.npy):
    raise app.UsageError('give exactly one of --checkpoint_dir (a pretraining '
                         'run) and --npy (a released or exported .npy file)')
  if f.encoder and not f.npy:
    raise app.UsageError('--encoder goes with --npy; a checkpoint names its '
                         'own encoder')
  try:
    result = run(f.checkpoint_dir, f.dataset_directory,
                 num_steps=f.num_steps, batch_size=f.batch_size,
                 learning_rate=f.learning_rate, image_size=f.image_size,
                 eval_split=f.eval_split, npy=f.npy, encoder=f.encoder,
                 num_classes=f.num_classes)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'detcon.linear_eval: error: {e}')
  print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == '__main__':
  _define_flags()
  flags.adopt_module_key_flags(log_setup)  # --library_logs in --help.
  cli.run(main)
