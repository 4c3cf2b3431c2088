"""On-device image augmentations of the two views (docs/method.md), with dm-pix.

Each image draws its own randomness. Images are float `[B, H, W, 3]` in
[0, 1] (the input pipeline's uint8 views are scaled to them first), clipped
back to [0, 1] after every step. The flip is not here: it
happened on the host, jointly with the masks.
"""

from collections.abc import Mapping
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp


def _color_jitter(rng, image, cfg):
  """Brightness, contrast, saturation and hue, in a random order."""
  b, c, s, h = cfg['brightness'], cfg['contrast'], cfg['saturation'], cfg['hue']
  jitters = (
      lambda k, x: pix.random_brightness(k, x, b),
      lambda k, x: pix.random_contrast(k, x, 1 - c, 1 + c),
      lambda k, x: pix.random_saturation(k, x, 1 - s, 1 + s),
      lambda k, x: pix.random_hue(k, x, h),
  )
  order_rng, *keys = jax.random.split(rng, 5)
  order = jax.random.permutation(order_rng, len(jitters))
  for i, key in enumerate(keys):
    image = jax.lax.switch(order[i], jitters, key, image)
    image = jnp.clip(image, 0.0, 1.0)
  return image


def _augment_image(rng, image, cfg, view):
  """Augments one `[H, W, 3]` image as view `view` (0 or 1)."""
  keys = jax.random.split(rng, 8)

  def maybe(key, prob, fn, x):
    return jnp.where(jax.random.uniform(key) < prob, fn(x), x)

  image = maybe(keys[0], cfg['color_jitter_prob'][view],
                lambda x: _color_jitter(keys[1], x, cfg), image)
  image = maybe(keys[2], cfg['grayscale_prob'][view],
                lambda x: pix.rgb_to_grayscale(x, keep_dims=True)
                * jnp.ones_like(x), image)
  image = jnp.clip(image, 0.0, 1.0)
  sigma = jax.random.uniform(keys[3], minval=cfg['blur_sigma'][0],
                             maxval=cfg['blur_sigma'][1])
  kernel_size = max(image.shape[0] // 10, 1)
  image = maybe(keys[4], cfg['blur_prob'][view],
                lambda x: pix.gaussian_blur(x, sigma, kernel_size), image)
  image = jnp.clip(image, 0.0, 1.0)
  image = maybe(keys[5], cfg['solarize_prob'][view],
                lambda x: pix.solarize(x, cfg['solarize_threshold']), image)
  return jnp.clip(image, 0.0, 1.0)


def augment_view(keys: jax.Array, images: jax.Array, cfg: Mapping[str, Any],
                 view: int) -> jax.Array:
  """Augments a batch `[B, H, W, 3]` as view 0 or 1 (probabilities per view).

  Args:
    keys: `[B]` PRNG keys, one per image.
    images: `[B, H, W, 3]`: uint8 (the input pipeline's views, 0-255, taken
      to float32 x / 255 here) or float in [0, 1].
    cfg: the config's `augment` fields (probabilities are pairs per view).
    view: 0 for the first view, 1 for the second.

  Returns:
    float `[B, H, W, 3]` in [0, 1]: float32 for uint8 `images`, else their
    dtype.
  """
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.
  return jax.vmap(lambda k, x: _augment_image(k, x, cfg, view))(keys, images)
