"""Images of any bit depth to 8-bit RGB, as the records and `predict` hold.

PIL's own `convert('RGB')` clips 16-bit and 32-bit pixels to 255, so a
16-bit PNG becomes a white square. Here deeper images are scaled to 8 bits
by their range first, as image libraries do (scikit-image's
`img_as_ubyte`): 16-bit integers by the 16-bit range (v / 257), floats in
[0, 1] by 255; 32-bit integers within the 16-bit range as 16-bit ones; any
other integer or float image by its own minimum and maximum.
"""

import numpy as np
from PIL import Image

_DEEP_MODES = ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F')


def to_uint8(values: np.ndarray) -> np.ndarray:
  """Integer or float pixels (any shape) -> uint8, scaled by their range.

  Args:
    values: uint8 (kept as is), uint16/int32 or float pixels.

  Returns:
    uint8 array of the same shape.
  """
  if values.dtype == np.uint8:
    return values
  if values.size == 0:
    return values.astype(np.uint8)
  x = values.astype(np.float64)
  lo, hi = float(np.min(x)), float(np.max(x))
  if values.dtype.kind in 'ui' and lo >= 0 and hi <= 65535:
    scaled = x / 257  # The 16-bit range onto the 8-bit one.
  elif values.dtype.kind == 'f' and lo >= 0 and hi <= 1:
    scaled = x * 255
  else:  # The image's own range.
    scaled = (x - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(x)
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
  """`image` as 8-bit RGB; deeper modes scaled by their range (see above)."""
  if image.mode in _DEEP_MODES:
    image = Image.fromarray(to_uint8(np.asarray(image)), 'L')
  return image.convert('RGB')
