"""Haiku networks of DetCon-B (docs/method.md): ResNet v1 encoder, MLP heads.

Parameter names (what checkpoints and exports key on), for ResNet-50:
  encoder/initial_conv/w                        [7, 7, 3, 64]
  encoder/initial_batchnorm/{scale,offset}      [1, 1, 1, 64]
  encoder/block_group_G/~/block_B/~/conv_{0,1,2}/w
  encoder/block_group_G/~/block_B/~/batchnorm_{0,1,2}/{scale,offset}
  encoder/block_group_G/~/block_0/~/shortcut_{conv,batchnorm}/...
  projector/{linear_0,batchnorm,linear_1}, predictor/... (online only)
  classifier/{w,b}                              [2048, num_classes]
BatchNorm statistics live in the Haiku state under the same module names
(`encoder/initial_batchnorm/~/mean_ema` -> {counter, hidden, average}, and
`.../~/var_ema`).
"""

from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

# name -> (blocks per group, bottleneck, channels per group at width 1).
ENCODERS = {
    'ResNet18': ((2, 2, 2, 2), False, (64, 128, 256, 512)),
    'ResNet34': ((3, 4, 6, 3), False, (64, 128, 256, 512)),
    'ResNet50': ((3, 4, 6, 3), True, (256, 512, 1024, 2048)),
    'ResNet101': ((3, 4, 23, 3), True, (256, 512, 1024, 2048)),
    'ResNet152': ((3, 8, 36, 3), True, (256, 512, 1024, 2048)),
    'ResNet200': ((3, 24, 36, 3), True, (256, 512, 1024, 2048)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_encoder_name(name: str) -> None:
  if name not in ENCODERS:
    raise ValueError(f'unknown encoder {name!r}; choose one of '
                     f'{", ".join(ENCODERS)}')


def bn_config(decay: float, eps: float, axis_name: str | None):
  """BatchNorm settings; statistics are averaged over `axis_name` devices."""
  return dict(decay_rate=decay, eps=eps, create_scale=True, create_offset=True,
              cross_replica_axis=axis_name)


def scaled_channels(channels: int, width_multiplier: float) -> int:
  """`channels x width_multiplier`, rounded to the nearest integer.

  Python's `round` (halves to even); at least 1. Widths 0.25, 0.5, 1, 2, ...
  give exact counts for every ResNet here (0.25 x 64 = 16). Bottleneck
  blocks use a quarter of a group's count inside, floored as Haiku does.
  """
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier={width_multiplier}: use a positive '
                     'number (e.g. 0.25, 0.5, 1, 2)')
  return max(1, round(channels * width_multiplier))


class ResNetEncoder(hk.Module):
  """ResNet v1 (stride on the 3x3 conv) returning the last feature map.

  `width_multiplier` scales every channel count, the initial conv's 64
  included (`scaled_channels`); 1 is the standard ResNet.
  """

  def __init__(self, encoder: str, width_multiplier: float,
               bn: Mapping[str, Any], name: str = 'encoder'):
    super().__init__(name=name)
    check_encoder_name(encoder)
    blocks, self._bottleneck, channels = ENCODERS[encoder]
    self._blocks = blocks
    self._channels = tuple(scaled_channels(c, width_multiplier)
                           for c in channels)
    self._stem = scaled_channels(64, width_multiplier)
    self._bn = dict(bn)

  @property
  def num_features(self) -> int:
    return self._channels[-1]

  def __call__(self, images: jax.Array, is_training: bool) -> jax.Array:
    """Maps images `[B, H, W, 3]` in [0, 1] to features `[B, H/32, W/32, C]`."""
    mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
    x = (images - mean) / jnp.asarray(IMAGENET_STD, images.dtype)
    x = hk.Conv2D(self._stem, kernel_shape=7, stride=2, with_bias=False,
                  padding='SAME', name='initial_conv')(x)
    x = hk.BatchNorm(name='initial_batchnorm', **self._bn)(x, is_training)
    x = jax.nn.relu(x)
    x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1),
                    padding='SAME')
    for i, (num_blocks, channels) in enumerate(
        zip(self._blocks, self._channels, strict=True)):
      x = hk.nets.ResNet.BlockGroup(
          channels=channels, num_blocks=num_blocks, stride=1 if i == 0 else 2,
          bn_config=self._bn, resnet_v2=False, bottleneck=self._bottleneck,
          use_projection=i > 0 or self._bottleneck, name=f'block_group_{i}')(
              x, is_training, test_local_stats=False)
    return x


class MLP(hk.Module):
  """Linear(hidden, bias) -> BatchNorm -> ReLU -> Linear(out, no bias)."""

  def __init__(self, hidden: int, out: int, bn: Mapping[str, Any], name: str):
    super().__init__(name=name)
    self._hidden, self._out, self._bn = hidden, out, dict(bn)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Maps `[..., D]` to `[..., out]`; BatchNorm over all leading axes."""
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    x = hk.Linear(self._hidden, name='linear_0')(x)
    x = hk.BatchNorm(name='batchnorm', **self._bn)(x, is_training)
    x = jax.nn.relu(x)
    x = hk.Linear(self._out, with_bias=False, name='linear_1')(x)
    return x.reshape(*lead, self._out)


def init_encoder(encoder: str, width_multiplier: int,
                 rng: jax.Array) -> tuple[hk.Params, hk.State]:
  """Randomly initialised encoder parameters and BatchNorm state."""
  model = hk.transform_with_state(
      lambda images: ResNetEncoder(encoder, width_multiplier, bn_config(
          0.9, 1e-5, None))(images, is_training=True))
  return jax.jit(model.init)(rng, jnp.zeros((1, 64, 64, 3), jnp.float32))
