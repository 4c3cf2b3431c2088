"""Linear evaluation of a frozen encoder (BYOL's protocol), core functions.

A linear classifier is trained on the globally mean-pooled feature map of the
frozen encoder, run in inference mode (BatchNorm with its moving statistics),
with softmax cross-entropy and SGD with Nesterov momentum 0.9 under a cosine
learning-rate schedule, without weight decay by default (as BYOL). Data
loading and augmentation (random crop and flip for training, centre crop for
evaluation) are the caller's; this module sees batches
  {'images': [B, S, S, 3] float32 in [0, 1], 'labels': [B] int32,
   'mask': optional [B] bool, False for padding examples}.
The classifier is a dict {'w': [C, num_classes], 'b': [num_classes]}.
"""

import functools
import logging
from collections.abc import Callable, Iterable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from detcon import networks

FeaturesFn = Callable[[jax.Array], jax.Array]
Batch = Mapping[str, np.ndarray]


def make_features_fn(encoder_name: str, width_multiplier: int,
                     params: hk.Params, state: hk.State,
                     bn_decay: float = 0.9, bn_eps: float = 1e-5
                     ) -> FeaturesFn:
  """A jitted frozen encoder: images [B, S, S, 3] in [0, 1] -> [B, C].

  Args:
    encoder_name: one of `networks.ENCODERS`.
    width_multiplier: the encoder's width multiplier.
    params: Haiku parameters holding the encoder's (module 'encoder'; other
      modules are ignored).
    state: Haiku state with the encoder's BatchNorm moving statistics.
    bn_decay: BatchNorm decay (unused in inference, part of the module config).
    bn_eps: BatchNorm epsilon.

  Returns:
    A function mapping images to float32 features, the encoder's last feature
    map averaged over space; BatchNorm uses the moving statistics.
  """
  bn = networks.bn_config(bn_decay, bn_eps, None)
  model = hk.without_apply_rng(hk.transform_with_state(
      lambda images: networks.ResNetEncoder(
          encoder_name, width_multiplier, bn)(images, is_training=False)))

  @jax.jit
  def features(params, state, images):
    feature_map, _ = model.apply(params, state, images)
    return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))

  return functools.partial(features, params, state)


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
