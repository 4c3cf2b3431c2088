"""The PASCAL VOC 2012 segmentation layout: read it, check it, write labels.

  <root>/JPEGImages/<id>.jpg
  <root>/SegmentationClass/<id>.png    palette PNG, pixel = class 0..C-1,
                                       255 = boundary / ignore
  <root>/SegmentationObject/<id>.png   instances, same convention (optional)
  <root>/ImageSets/Segmentation/<split>.txt   one id a line

Label PNGs are read as their palette indices (not their colours), as VOC's
own tools do; 8-bit grayscale PNGs with the same values are accepted too.
Every problem with the input raises `VocError` naming the file and the fix,
except an image that exists but cannot be decoded, which raises
`UnreadableImage` so that callers can skip it and count it.
"""

import functools
import os

import numpy as np
from PIL import Image

IGNORE = 255  # Boundary / "don't care" pixels.
IMAGE_DIR = 'JPEGImages'
CLASS_DIR = 'SegmentationClass'
OBJECT_DIR = 'SegmentationObject'
SPLIT_DIR = os.path.join('ImageSets', 'Segmentation')
CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
    'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
    'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')


class VocError(ValueError):
  """The dataset folder does not hold what the VOC layout needs."""


class UnreadableImage(VocError):
  """An image file exists but cannot be decoded (corrupt or truncated)."""


@functools.cache
def palette() -> np.ndarray:
  """VOC's colour map: uint8 `[256, 3]`, entry i the colour of label i.

  The bits of i are spread over the high bits of red, green and blue (bit 0
  to red, 1 to green, 2 to blue, then the next three one bit lower...), so
  0 is black, 1 dark red, 2 dark green, and 255 (ignore) is cream.
  """
  colours = np.zeros((256, 3), np.uint8)
  for i in range(256):
    c = i
    for j in range(8):
      for channel in range(3):
        colours[i, channel] |= ((c >> channel) & 1) << (7 - j)
      c >>= 3
  return colours


def write_label_png(path: str, labels: np.ndarray) -> None:
  """Writes `labels` (integers 0..255, `[H, W]`) as a VOC palette PNG."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(
      initial=0) > 255:
    raise ValueError(f'labels must be [H, W] values in 0..255, got shape '
                     f'{labels.shape}, range {labels.min()}..{labels.max()}')
  image = Image.fromarray(labels.astype(np.uint8), mode='P')
  image.putpalette(palette().ravel().tolist())
  image.save(path, format='PNG')


def read_label_png(path: str) -> np.ndarray:
  """Reads a palette (or 8-bit grayscale) label PNG: uint8 `[H, W]`."""
  if not os.path.isfile(path):
    raise VocError(f'label file {path} does not exist')
  try:
    with Image.open(path) as image:
      if image.mode not in ('P', 'L'):
        raise VocError(
            f'{path} is a {image.mode} image; a label PNG must be a palette '
            '(P) or 8-bit grayscale (L) image whose pixel values are the '
            'class indices')
      return np.array(image)
  except (OSError, SyntaxError) as e:
    raise VocError(f'{path} is not a readable PNG ({e})') from e


def read_image(path: str) -> np.ndarray:
  """Reads an RGB image: uint8 `[H, W, 3]` (grayscale and CMYK converted)."""
  if not os.path.isfile(path):
    raise VocError(f'image file {path} does not exist')
  try:
    with Image.open(path) as image:
      return np.array(image.convert('RGB'))
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise UnreadableImage(f'{path} cannot be decoded ({e})') from e


def read_split(root: str, split: str) -> list[str]:
  """The ids of `<root>/ImageSets/Segmentation/<split>.txt`, in file order."""
  if not os.path.isdir(root):
    raise VocError(f'dataset directory {root} does not exist; pass the VOC '
                   'root that holds JPEGImages/, SegmentationClass/ and '
                   'ImageSets/Segmentation/')
  path = os.path.join(root, SPLIT_DIR, f'{split}.txt')
  if not os.path.isfile(path):
    present = sorted(n[:-4] for n in os.listdir(os.path.join(root, SPLIT_DIR))
                     if n.endswith('.txt')) if os.path.isdir(
                         os.path.join(root, SPLIT_DIR)) else []
    raise VocError(f'split file {path} does not exist (splits there: '
                   f'{present or "none"}); pass an existing split name')
  with open(path) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  if not ids:
    raise VocError(f'split file {path} lists no image ids; it needs one id a '
                   'line')
  return ids


def image_path(root: str, image_id: str) -> str:
  return os.path.join(root, IMAGE_DIR, f'{image_id}.jpg')


def label_path(root: str, image_id: str) -> str:
  return os.path.join(root, CLASS_DIR, f'{image_id}.png')


def load_example(root: str, image_id: str,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """An image and its class labels, checked.

  Returns:
    (uint8 `[H, W, 3]` RGB image, uint8 `[H, W]` labels in 0..num_classes-1
    or 255).

  Raises:
    VocError: a missing image or label, sizes that differ, or label values
      that are neither a class below `num_classes` nor 255.
    UnreadableImage: the image exists but cannot be decoded.
  """
  labels = read_label_png(label_path(root, image_id))
  image = read_image(image_path(root, image_id))
  if image.shape[:2] != labels.shape:
    raise VocError(
        f'{image_path(root, image_id)} is {image.shape[1]}x{image.shape[0]} '
        f'but its label {label_path(root, image_id)} is {labels.shape[1]}x'
        f'{labels.shape[0]} (width x height); they must be the same size')
  bad = np.unique(labels[(labels >= num_classes) & (labels != IGNORE)])
  if bad.size:
    raise VocError(
        f'{label_path(root, image_id)} holds label values '
        f'{bad.tolist()[:10]}, not below --num_classes={num_classes} and not '
        f'{IGNORE} (ignore); set --num_classes to the number of classes of '
        'the dataset')
  return image, labels
