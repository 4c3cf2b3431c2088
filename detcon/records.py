"""The TFRecord format: one image, its label and its FH masks (docs/records.md).

Every record is a `tf.train.Example` with the features of the original DetCon
release. The masks (`image/felzenszwalb_segmentations`) come in one of two
encodings, told apart by their own bytes:

* `png` (what we write by default): the `[n_masks, H, W]` label maps stacked
  vertically into one grayscale PNG of shape `[n_masks * H, W]`, 8-bit when
  every id is below 256, else 16-bit. About 1/65 of the raw size.
* `raw` (the original release): the `uint8` bytes of `[n_masks, H, W]` in C
  order. Ids above 255 cannot be stored; `encode_masks` refuses them instead
  of wrapping.
"""

import io

import numpy as np
from PIL import Image

from detcon import mask_methods

MASK_KEY = 'image/felzenszwalb_segmentations'
# Which method made a record's masks (absent in records of the original
# release and of older versions: readers must not require it).
# Its values: the stored methods of `mask_methods.METHODS`.
MASK_SOURCE_KEY = 'image/mask_source'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
MASK_ENCODINGS = ('png', 'raw')


class MaskEncodingError(ValueError):
  """The mask ids do not fit the requested encoding."""


def encode_masks(masks: np.ndarray, encoding: str = 'png') -> bytes:
  """Encodes integer label maps `[n_masks, H, W]` (ids >= 0) to bytes."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f'masks must be [n_masks, H, W], got shape {masks.shape}')
  max_id = int(masks.max()) if masks.size else 0
  if masks.size and int(masks.min()) < 0:
    raise MaskEncodingError('mask ids must be >= 0')
  if encoding == 'raw':
    if max_id > 255:
      raise MaskEncodingError(
          f'mask id {max_id} does not fit the raw uint8 layout; use '
          '--mask_encoding=png, which stores ids up to 65535')
    return masks.astype(np.uint8).tobytes(order='C')
  if encoding != 'png':
    raise ValueError(f'unknown mask encoding {encoding!r}; use one of '
                     f'{MASK_ENCODINGS}')
  if max_id > 65535:
    raise MaskEncodingError(f'mask id {max_id} does not fit 16-bit PNG')
  n, h, w = masks.shape
  dtype = np.uint8 if max_id < 256 else np.uint16
  buf = io.BytesIO()
  Image.fromarray(masks.reshape(n * h, w).astype(dtype)).save(
      buf, format='PNG', compress_level=6)
  return buf.getvalue()


def decode_masks(data: bytes, height: int, width: int) -> np.ndarray:
  """Decodes either encoding to `[n_masks, height, width]` int32 (NumPy)."""
  if data[:8] == PNG_SIGNATURE:
    stacked = np.array(Image.open(io.BytesIO(data))).astype(np.int32)
  else:
    stacked = np.frombuffer(data, np.uint8).astype(np.int32)
  if stacked.size % (height * width):
    raise ValueError(f'{stacked.size} mask values do not tile an image of '
                     f'{height}x{width}: the mask size differs from the image')
  return stacked.reshape(-1, height, width)


def decode_masks_tf(data, height, width, dtype=None):
  """TensorFlow twin of `decode_masks`, for tf.data: `[H, W, n_masks]` ids.

  Args, the failure: as `decode_mask_planes_tf`.

  Returns:
    `dtype` tensor `[height, width, n_masks]`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.transpose(decode_mask_planes_tf(data, height, width, dtype),
                      [1, 2, 0])


def decode_mask_planes_tf(data, height, width, dtype=None):
  """The masks as stored, one plane after the other: `[n_masks, H, W]` ids.

  Taking one plane of these (`[i]`) costs no transpose of them all.

  Args:
    data: scalar tf.string, the `image/felzenszwalb_segmentations` bytes.
    height: scalar int tensor, the image height.
    width: scalar int tensor, the image width.
    dtype: the ids' type: tf.int32 (default) or tf.uint16, which holds every
      id of both encodings and is half the size (for cropping and resizing
      before a cast).

  Returns:
    `dtype` tensor `[n_masks, height, width]`. Fails (InvalidArgumentError)
    when the number of decoded values is not a multiple of `height * width`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dtype = dtype or tf.int32

  def from_png():
    bit_depth = tf.strings.substr(data, 24, 1)  # IHDR bit depth byte.
    return tf.cond(
        tf.equal(bit_depth, b'\x10'),
        lambda: tf.cast(tf.io.decode_png(data, 1, tf.uint16), dtype),
        lambda: tf.cast(tf.io.decode_png(data, 1, tf.uint8), dtype))

  def from_raw():
    return tf.cast(tf.io.decode_raw(data, tf.uint8), dtype)

  is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE)
  flat = tf.reshape(tf.cond(is_png, from_png, from_raw), [-1])
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  tf.debugging.assert_equal(
      tf.size(flat) % (height * width), 0,
      message='mask size differs from the image size')
  return tf.reshape(flat, tf.stack([-1, height, width]))


def make_example(*, image: bytes, height: int, width: int, filename: str,
                 label: int, synset: str, text: str, masks: bytes,
                 mask_source: str | None = None):
  """Builds the `tf.train.Example` of docs/records.md (`image`: RGB JPEG).

  `mask_source` (a stored method of `mask_methods.METHODS`) adds the
  `MASK_SOURCE_KEY` feature; None leaves it out, as in the original format.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  sources = mask_methods.names(stored=True)
  if mask_source is not None and mask_source not in sources:
    raise ValueError(f'unknown mask source {mask_source!r}; use one of '
                     f'{sources}')

  def _bytes(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  def _int(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

  feature = {
      'image/encoded': _bytes(image),
      'image/height': _int(height),
      'image/width': _int(width),
      'image/colorspace': _bytes(b'RGB'),
      'image/channels': _int(3),
      'image/format': _bytes(b'JPEG'),
      'image/filename': _bytes(filename.encode()),
      'image/class/label': _int(label),
      'image/class/synset': _bytes(synset.encode()),
      'image/class/text': _bytes(text.encode()),
      MASK_KEY: _bytes(masks),
  }
  if mask_source is not None:
    feature[MASK_SOURCE_KEY] = _bytes(mask_source.encode())
  return tf.train.Example(features=tf.train.Features(feature=feature))


def read_example(serialized: bytes) -> dict:
  """One serialized record as Python values (for tools; eager, not tf.data).

  Returns:
    dict: `image` (the encoded bytes), `height`, `width`, `label` (as
    stored: 1-based, 0 for no class), `filename`, `synset` ('' when absent),
    `masks` (int32 `[n, height, width]`, None when the record has none) and
    `mask_source` (None when absent, as in the original format).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  f = tf.train.Example.FromString(serialized).features.feature

  def text(key):
    return f[key].bytes_list.value[0].decode() if key in f else ''

  height = f['image/height'].int64_list.value[0]
  width = f['image/width'].int64_list.value[0]
  masks = f[MASK_KEY].bytes_list.value[0] if MASK_KEY in f else b''
  return dict(image=f['image/encoded'].bytes_list.value[0], height=height,
              width=width, label=f['image/class/label'].int64_list.value[0],
              filename=text('image/filename'),
              synset=text('image/class/synset'),
              masks=decode_masks(masks, height, width) if masks else None,
              mask_source=text(MASK_SOURCE_KEY) or None)


def feature_spec():
  """The `tf.io.parse_single_example` spec of the features the reader needs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {
      'image/encoded': tf.io.FixedLenFeature([], tf.string),
      'image/height': tf.io.FixedLenFeature([], tf.int64),
      'image/width': tf.io.FixedLenFeature([], tf.int64),
      'image/class/label': tf.io.FixedLenFeature([], tf.int64),
      MASK_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
  }


def read_synset_texts(path: str) -> dict[str, str]:
  """Reads an ImageNet metadata file of `synset<TAB>text` lines.

  Returns:
    {synset: human readable text} (the `image/class/text` of the records).
  """
  texts = {}
  with open(path) as f:
    for line in f:
      synset, _, text = line.rstrip('\n').partition('\t')
      texts[synset.strip()] = text.strip()
  return texts
