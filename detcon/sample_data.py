"""Small ImageNet-layout folders made from the photos bundled with skimage.

For tests, benchmarks and demos: no download, deterministic given a seed.
`make_imagenet_folder` writes `root/<synset>/<synset>_<k>.JPEG` (RGB JPEGs of
random crops of real photos); `make_bad_files` adds the awkward inputs that
ImageNet holds (PNG or CMYK data in a `.JPEG` file, grayscale, EXIF) and a
few broken ones.
"""

import functools
import io
import os

import numpy as np
from PIL import Image
from skimage import data

# Photos that ship inside scikit-image (no network needed).
_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field',
           'immunohistochemistry', 'retina', 'camera', 'coins', 'clock')


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
  """The bundled photos, each RGB uint8 `[H, W, 3]` (grayscale ones tiled)."""
  loaded = [getattr(data, name)() for name in _PHOTOS]
  loaded.extend(data.stereo_motorcycle()[:2])  # Left and right views.
  return tuple(np.repeat(p[..., None], 3, axis=-1) if p.ndim == 2 else p
               for p in loaded)


def _random_image(rng: np.random.Generator, photo: np.ndarray, min_side: int,
                  max_side: int) -> Image.Image:
  """A random crop (1/3 to all of each side) of `photo`, randomly resized."""
  h, w, _ = photo.shape
  crop_h = int(rng.integers(h // 3, h + 1))
  crop_w = int(rng.integers(w // 3, w + 1))
  top = int(rng.integers(0, h - crop_h + 1))
  left = int(rng.integers(0, w - crop_w + 1))
  crop = photo[top:top + crop_h, left:left + crop_w]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  size = (int(rng.integers(min_side, max_side + 1)),
          int(rng.integers(min_side, max_side + 1)))  # (width, height)
  return Image.fromarray(np.ascontiguousarray(crop)).resize(
      size, Image.Resampling.BILINEAR)


def make_imagenet_folder(root: str, num_classes: int = 3,
                         images_per_class: int = 8, min_side: int = 48,
                         max_side: int = 160, seed: int = 0) -> list[str]:
  """Writes a small ImageNet-style training folder of real photos.

  Class `i` (0-based) draws its crops from the bundled photos whose index is
  `i` modulo `num_classes` (all photos cycle when there are more classes than
  photos), so the labels carry visual information.

  Args:
    root: folder to fill (created if needed) with `root/<synset>/*.JPEG`.
    num_classes: number of class folders, named `n00000001`, `n00000002`, ...
    images_per_class: RGB JPEGs (quality 90) per class, named
      `<synset>_<k>.JPEG` for k = 0, 1, ...
    min_side: smallest image height or width, in pixels.
    max_side: largest image height or width, in pixels.
    seed: the same seed writes byte-identical files.

  Returns:
    The synsets (folder names), sorted.
  """
  rng = np.random.default_rng(seed)
  all_photos = photos()
  synsets = [f'n{i + 1:08d}' for i in range(num_classes)]
  for i, synset in enumerate(synsets):
    pool = all_photos[i % len(all_photos)::num_classes]
    class_dir = os.path.join(root, synset)
    os.makedirs(class_dir, exist_ok=True)
    for k in range(images_per_class):
      photo = pool[int(rng.integers(len(pool)))]
      image = _random_image(rng, photo, min_side, max_side)
      image.save(os.path.join(class_dir, f'{synset}_{k}.JPEG'), 'JPEG',
                 quality=90)
  return synsets


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt, **kwargs)
  return buf.getvalue()


def deep_gray() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A 64x48 grayscale photo as 16-bit and float pixels, and as 8-bit.

  Returns:
    (uint16 = 8-bit x 257, float32 = 8-bit / 255, the uint8 photo): both
    deep versions scale back to the uint8 one exactly.
  """
  gray = np.asarray(Image.fromarray(photos()[1]).convert('L').resize(
      (64, 48)))
  return ((gray.astype(np.uint16) * 257), (gray / 255).astype(np.float32),
          gray)


def make_bad_files(class_dir: str) -> dict[str, str]:
  """Writes awkward and broken inputs into `class_dir` (created if needed).

  The outcomes follow the rules of `generate_fh_masks_for_imagenet.py`:
  'converted' files end up in the records as RGB JPEG (re-encoded, or kept
  byte for byte when they already are an RGB JPEG); 'skipped' ones are left
  out with a reason. An image is too small when its shorter side is under
  8 pixels.

  Args:
    class_dir: folder to write to, e.g. one class folder of
      `make_imagenet_folder`.

  Returns:
    {file name: 'converted' or 'skipped'}.
  """
  os.makedirs(class_dir, exist_ok=True)
  rgb = Image.fromarray(photos()[1]).resize((64, 48))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees to display.
  exif[0x010F] = 'DetCon test camera'  # Make.
  jpeg = _encode(rgb, 'JPEG', quality=90)
  files = {
      'png_data.JPEG': (_encode(rgb, 'PNG'), 'converted'),
      'cmyk.JPEG': (_encode(rgb.convert('CMYK'), 'JPEG'), 'converted'),
      'grayscale.JPEG': (_encode(rgb.convert('L'), 'JPEG'), 'converted'),
      'exif.JPEG': (_encode(rgb, 'JPEG', exif=exif.tobytes()), 'converted'),
      # Deeper than 8 bits: a 16-bit PNG and a float TIFF, named .JPEG.
      '16bit.JPEG': (_encode(Image.fromarray(deep_gray()[0]), 'PNG'),
                     'converted'),
      'float.JPEG': (_encode(Image.fromarray(deep_gray()[1]), 'TIFF'),
                     'converted'),
      'smallest_allowed.JPEG': (_encode(rgb.resize((8, 8)), 'JPEG'),
                                'converted'),
      'truncated.JPEG': (jpeg[:len(jpeg) // 2], 'skipped'),
      'not_an_image.JPEG': (b'<html>404 Not Found</html>\n', 'skipped'),
      'empty.JPEG': (b'', 'skipped'),
      'one_pixel.JPEG': (_encode(rgb.resize((1, 1)), 'JPEG'), 'skipped'),
      'thin.JPEG': (_encode(rgb.resize((64, 7)), 'JPEG'), 'skipped'),
  }
  for name, (content, _) in files.items():
    with open(os.path.join(class_dir, name), 'wb') as f:
      f.write(content)
  return {name: outcome for name, (_, outcome) in files.items()}
