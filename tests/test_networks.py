"""Fractional widths of the ResNet encoder (`networks.width_multiplier`)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detcon import networks

BN = networks.bn_config(0.9, 1e-5, None)


def encoder_fn(encoder, width):
  return hk.transform_with_state(
      lambda images: networks.ResNetEncoder(encoder, width, BN)(images, True))


def param_shapes(encoder, width):
  """{'module/name': shape} of the encoder, without computing anything."""
  params, _ = jax.eval_shape(encoder_fn(encoder, width).init,
                             jax.random.PRNGKey(0),
                             jnp.zeros((1, 64, 64, 3)))
  return {f'{m}/{n}': tuple(v.shape) for m, p in params.items()
          for n, v in p.items()}


def resnet18_shapes(stem, channels):
  """ResNet-18's parameter shapes, written out from its definition.

  A 7x7 stem conv; four groups of two basic blocks (3x3 convs), the first
  block of groups 1-3 with a 1x1 projection shortcut; a BatchNorm (scale and
  offset [1, 1, 1, C]) after every conv.
  """
  shapes = {'encoder/initial_conv/w': (7, 7, 3, stem)}
  bn = lambda name, c: {f'{name}/{k}': (1, 1, 1, c) for k in ('scale',
                                                              'offset')}
  shapes.update(bn('encoder/initial_batchnorm', stem))
  cin = stem
  for g, c in enumerate(channels):
    for b in range(2):
      block = f'encoder/block_group_{g}/~/block_{b}/~'
      shapes[f'{block}/conv_0/w'] = (3, 3, cin, c)
      shapes[f'{block}/conv_1/w'] = (3, 3, c, c)
      shapes.update(bn(f'{block}/batchnorm_0', c))
      shapes.update(bn(f'{block}/batchnorm_1', c))
      if g > 0 and b == 0:
        shapes[f'{block}/shortcut_conv/w'] = (1, 1, cin, c)
        shapes.update(bn(f'{block}/shortcut_batchnorm', c))
      cin = c
  return shapes


def test_width_1_is_the_standard_tree():
  assert param_shapes('ResNet18', 1) == resnet18_shapes(64,
                                                        (64, 128, 256, 512))
  assert param_shapes('ResNet18', 1.0) == param_shapes('ResNet18', 1)


@pytest.mark.parametrize('width, stem, channels', [
    (0.25, 16, (16, 32, 64, 128)), (0.5, 32, (32, 64, 128, 256))])
def test_fractional_width_shapes_and_forward(width, stem, channels):
  assert param_shapes('ResNet18', width) == resnet18_shapes(stem, channels)
  model = encoder_fn('ResNet18', width)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
  params, state = model.init(jax.random.PRNGKey(0), images)
  features, _ = model.apply(params, state, None, images)
  assert features.shape == (2, 2, 2, channels[-1])
  assert np.all(np.isfinite(features)) and np.std(features) > 0


def test_fractional_width_of_a_bottleneck_resnet():
  shapes = param_shapes('ResNet50', 0.25)
  assert shapes['encoder/initial_conv/w'] == (7, 7, 3, 16)
  # Groups of 64..512 outputs, a quarter of them inside each bottleneck.
  assert shapes['encoder/block_group_0/~/block_0/~/conv_0/w'] == (1, 1, 16,
                                                                  16)
  assert shapes['encoder/block_group_3/~/block_2/~/conv_2/w'] == (1, 1, 128,
                                                                  512)


def test_width_must_be_positive():
  with pytest.raises(ValueError, match='width_multiplier=0'):
    networks.scaled_channels(64, 0)
