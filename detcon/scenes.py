r"""Synthetic multi-object scenes with segmentation labels, no download.

  python -m detcon.scenes --output_dir=scenes --num_train=2000 --num_val=500

Each image is a random crop of one of the photos that ship with scikit-image
(`detcon.sample_data.photos`, flipped at random, resized to the image) with
2-5 textured objects painted over it. The object classes differ in shape and
texture only; the two colours of an object are drawn per instance from one
distribution shared by every class, so colour says nothing about the class:

  class  name        shape                   texture
  0      background  the photo crop          the photo's own
  1      disc        disc                    concentric rings
  2      square      square                  checkerboard
  3      triangle    equilateral triangle    parallel stripes
  4      cross       plus sign               grid of dots
  5      ring        annulus                 zigzag (chevron) stripes
  6      star        five-pointed star       spokes from the centre
  7      crescent    crescent moon           random blotches
  8      ellipse     ellipse, axes 2:1       mesh of lines

`num_classes` C counts the background, as VOC's 21 does: classes 1..C-1 of
the table are used (C = 2..9, default 6). An object's extent (its
circumscribed circle's diameter) is a random fraction of the image side
(`object_size`, default 0.15-0.45); its rotation, texture phase and texture
scale (periods per radius, in a class-specific range) are random too.

Objects are painted in order, later ones on top (a new object is placed near
an earlier one more often than not, so most images have occlusions); where
objects overlap, the label is the top one. A placement that would leave an
earlier object less than `MIN_VISIBLE` of its drawn area is redrawn
(`PLACEMENT_TRIES` times at most, then the object is left out), so no object
is ever hidden entirely.

Output, in the PASCAL VOC 2012 layout (`detcon.voc` reads it):

  <out>/voc/JPEGImages/<id>.jpg               RGB JPEG, quality 90
  <out>/voc/SegmentationClass/<id>.png        palette PNG: class 0..C-1
  <out>/voc/SegmentationObject/<id>.png       palette PNG: 0 background,
                                              instances 1..n in painting order
  <out>/voc/ImageSets/Segmentation/{train,val}.txt
  <out>/imagenet/train/n0000000k_<name>/<id>.JPEG   the train JPEGs again
  <out>/scenes.json                           the arguments of the run

Ids are `train_000000`, ... and `val_000000`, .... In both PNGs a band of
`border` pixels of 255 (ignore) lies along every boundary between two
instances or an instance and the background (`boundary_band`), as in VOC.
The ImageNet-layout folder is the input of `generate_fh_masks_for_imagenet.py`:
byte-identical copies of the train JPEGs, each in the folder of the object
class covering most of its pixels. All C-1 class folders are made, empty ones
included, so that the script's labels (1-based positions of the sorted
folders) are the class indices.

Determinism: image `<split>_<k>` depends only on (`seed`, split, k) and the
drawing arguments, so the same arguments write byte-identical files and
`num_train` / `num_val` only add or remove images at the end. A folder that
is not empty is refused unless its `scenes.json` holds the same arguments;
such a rerun writes every file again, identically (it completes an
interrupted run).

API: `write_dataset` (what the command runs; returns a summary),
`CLASS_NAMES`, and the parts it is made of: `render_scene` (one scene, from
`image_rng(seed, split, k)`), `boundary_band`, `class_folders`,
`encode_jpeg`.

Speed, measured at 160 px on one core of the 2-core development machine:
about 55 images/s written (drawing alone about 190/s; the rest is JPEG and
PNG encoding and writing).
"""

import dataclasses
import functools
import io
import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags
from PIL import Image

from detcon import cli, sample_data, voc

CLASS_NAMES = ('background', 'disc', 'square', 'triangle', 'cross', 'ring',
               'star', 'crescent', 'ellipse')
SPLITS = ('train', 'val')
SETTINGS_FILE = 'scenes.json'
VOC_DIR = 'voc'
IMAGENET_DIR = os.path.join('imagenet', 'train')
JPEG_QUALITY = 90
MIN_VISIBLE = 0.4  # Smallest visible fraction of an object's drawn area.
PLACEMENT_TRIES = 20
MAX_OBJECTS = 20
# Colours of an object: both uniform in RGB, luma apart by at least this.
MIN_LUMA_CONTRAST = 60.0
DEFAULTS = dict(image_size=160, num_classes=6, objects_per_image=(2, 5),
                object_size=(0.15, 0.45), border=2, seed=0)

# Shapes and textures, in an object's own frame: `u`, `v` are float arrays of
# pixel-centre coordinates, rotated with the object and in units of its
# radius (the circumscribed circle is u^2 + v^2 <= 1).


def _polygon(u: np.ndarray, v: np.ndarray,
             radii: Sequence[float]) -> np.ndarray:
  """Inside a polygon whose vertex i lies at angle 2 pi i / n, radius radii[i].

  The polygon must be star-shaped around the origin (convex polygons and
  stars are); a point is inside when it lies on the origin's side of the
  edge that bounds its angular sector.
  """
  n = len(radii)
  angles = 2 * np.pi * np.arange(n) / n
  vx, vy = np.asarray(radii) * np.cos(angles), np.asarray(radii) * np.sin(
      angles)
  sector = (np.floor(np.arctan2(v, u) % (2 * np.pi) / (2 * np.pi / n))
            .astype(int) % n)
  px, py = vx[sector], vy[sector]
  qx, qy = vx[(sector + 1) % n], vy[(sector + 1) % n]
  return (qx - px) * (v - py) - (qy - py) * (u - px) >= 0


def _disc(u, v):
  return u * u + v * v <= 1.0


def _square(u, v):
  return _polygon(u, v, (1.0,) * 4)


def _triangle(u, v):
  return _polygon(u, v, (1.0,) * 3)


def _cross(u, v):
  arm, half_width = np.maximum(abs(u), abs(v)), np.minimum(abs(u), abs(v))
  return (arm <= 0.94) & (half_width <= 0.32)


def _ring(u, v):
  rho2 = u * u + v * v
  return (rho2 <= 1.0) & (rho2 >= 0.5**2)


def _star(u, v):
  return _polygon(u, v, (1.0, 0.5) * 5)


def _crescent(u, v):
  return (u * u + v * v <= 1.0) & ((u - 0.5)**2 + v * v > 0.8**2)


def _ellipse(u, v):
  return u * u + (v / 0.5)**2 <= 1.0


def _turned(u, v, angle):
  """(u, v) rotated by `angle` radians."""
  c, s = np.cos(angle), np.sin(angle)
  return c * u + s * v, -s * u + c * v


# Textures: (rng, u, v, cycles) -> bool like `u`, True where the object takes
# its second colour; `cycles` is the pattern's periods per radius, the phases
# and pattern directions are drawn from `rng`.


def _rings(rng, u, v, cycles):
  return (np.sqrt(u * u + v * v) * cycles + rng.random()) % 1 < 0.5


def _checkerboard(rng, u, v, cycles):
  a, b = _turned(u, v, rng.uniform(0, np.pi))
  ph = rng.random(2)
  return (np.floor(a * cycles + ph[0]) + np.floor(b * cycles + ph[1])) % 2 < 1


def _stripes(rng, u, v, cycles):
  a, _ = _turned(u, v, rng.uniform(0, np.pi))
  return (a * cycles + rng.random()) % 1 < 0.5


def _dots(rng, u, v, cycles):
  a, b = _turned(u, v, rng.uniform(0, np.pi))
  ph = rng.random(2)
  da, db = (a * cycles + ph[0]) % 1 - 0.5, (b * cycles + ph[1]) % 1 - 0.5
  return da * da + db * db < 0.33**2


def _zigzag(rng, u, v, cycles):
  a, b = _turned(u, v, rng.uniform(0, np.pi))
  tooth = np.abs((a * cycles / 2) % 1 - 0.5) * 2  # Triangle wave in [0, 1].
  return (b * cycles + tooth + rng.random()) % 1 < 0.5


def _spokes(rng, u, v, cycles):
  """Sectors; `cycles` periods per radius along the rim (2 pi x as many)."""
  turns = np.arctan2(v, u) / (2 * np.pi)
  return (turns * np.round(2 * np.pi * cycles) + rng.random()) % 1 < 0.5


def _waves(rng, u, v, frequencies):
  """A sum of plane waves of random direction and phase, float like `u`.

  Args:
    rng: draws each wave's direction and phase.
    u: x coordinates, any shape.
    v: y coordinates, same shape.
    frequencies: periods per unit of (u, v), one per wave.
  """
  field = np.zeros_like(u)
  for frequency in frequencies:
    a, _ = _turned(u, v, rng.uniform(0, np.pi))
    field += np.cos(2 * np.pi * frequency * a + rng.uniform(0, 2 * np.pi))
  return field


def _blotches(rng, u, v, cycles):
  return _waves(rng, u, v, cycles * rng.uniform(0.6, 1.4, 6)) > 0


def _mesh(rng, u, v, cycles):
  a, b = _turned(u, v, rng.uniform(0, np.pi))
  ph = rng.random(2)
  return ((np.abs((a * cycles + ph[0]) % 1 - 0.5) > 0.38)
          | (np.abs((b * cycles + ph[1]) % 1 - 0.5) > 0.38))


@dataclasses.dataclass(frozen=True)
class _Kind:
  shape: Callable[[np.ndarray, np.ndarray], np.ndarray]
  texture: Callable[..., np.ndarray]
  cycles: tuple[float, float]  # Texture periods per radius, range.


_KINDS = (None, _Kind(_disc, _rings, (1.6, 2.6)),
          _Kind(_square, _checkerboard, (1.8, 2.8)),
          _Kind(_triangle, _stripes, (2.0, 3.0)),
          _Kind(_cross, _dots, (2.2, 3.0)),
          _Kind(_ring, _zigzag, (2.2, 3.2)),
          _Kind(_star, _spokes, (1.1, 1.6)),
          _Kind(_crescent, _blotches, (1.6, 2.4)),
          _Kind(_ellipse, _mesh, (2.0, 2.8)))


@dataclasses.dataclass(frozen=True)
class Placed:
  """One painted object."""
  class_id: int  # 1..C-1.
  centre: tuple[float, float]  # (x, y), pixels from the top-left corner.
  radius: float  # Of the circumscribed circle, pixels.
  angle: float  # Rotation, radians.
  drawn_area: int  # Pixels of its whole shape, before later objects.


@dataclasses.dataclass(frozen=True)
class Scene:
  image: np.ndarray  # uint8 [S, S, 3] RGB.
  instances: np.ndarray  # uint8 [S, S]: 0 background, k = objects[k - 1].
  objects: tuple[Placed, ...]  # In painting order.

  def classes(self) -> np.ndarray:
    """uint8 [S, S]: the class index of every pixel (no boundary band)."""
    lut = np.array([0] + [o.class_id for o in self.objects], np.uint8)
    return lut[self.instances]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The random stream of image `index` of `split` (independent of others)."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


@functools.cache
def _photo_images() -> tuple[Image.Image, ...]:
  return tuple(Image.fromarray(p) for p in sample_data.photos())


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
  """A random square crop (1/4 to all of the shorter side) of a random photo,
  flipped left-right half of the time, resized to uint8 `[size, size, 3]`."""
  photos = _photo_images()
  photo = photos[rng.integers(len(photos))]
  side = int(rng.integers(min(photo.size) // 4, min(photo.size) + 1))
  left = int(rng.integers(0, photo.width - side + 1))
  top = int(rng.integers(0, photo.height - side + 1))
  crop = photo.resize((size, size), Image.Resampling.BILINEAR,
                      box=(left, top, left + side, top + side),
                      reducing_gap=2.0)
  if rng.random() < 0.5:
    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.array(crop)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """One photo crop, or half of the time two, split along a random curve.

  The curve is the zero line of three plane waves of 0.5-1.5 periods per
  image side. Returns uint8 `[size, size, 3]`.
  """
  background = _photo_crop(rng, size)
  if rng.random() < 0.5:
    u, v = np.mgrid[0:size, 0:size] / size
    second = _waves(rng, u, v, rng.uniform(0.5, 1.5, 3)) > 0
    background[second] = _photo_crop(rng, size)[second]
  return background


def _colours(rng: np.random.Generator) -> np.ndarray:
  """Two RGB colours, float `[2, 3]`, luma at least MIN_LUMA_CONTRAST apart."""
  luma = np.array([0.299, 0.587, 0.114])
  while True:
    pair = rng.uniform(0, 255, (2, 3))
    if abs((pair[0] - pair[1]) @ luma) >= MIN_LUMA_CONTRAST:
      return pair


def _centre(rng: np.random.Generator, radius: float, size: int,
            placed: Sequence[Placed]) -> tuple[float, float]:
  """Where a new object goes: overlapping an earlier one 70% of the time,
  else anywhere; always wholly inside the image."""
  if placed and rng.random() < 0.7:
    other = placed[rng.integers(len(placed))]
    distance = rng.uniform(0.4, 0.9) * (radius + other.radius)
    direction = rng.uniform(0, 2 * np.pi)
    x = other.centre[0] + distance * np.cos(direction)
    y = other.centre[1] + distance * np.sin(direction)
  else:
    x, y = rng.uniform(radius, size - radius, 2)
  return (float(np.clip(x, radius, size - radius)),
          float(np.clip(y, radius, size - radius)))


def render_scene(
    rng: np.random.Generator, *, image_size: int = DEFAULTS['image_size'],
    num_classes: int = DEFAULTS['num_classes'],
    objects_per_image: Sequence[int] = DEFAULTS['objects_per_image'],
    object_size: Sequence[float] = DEFAULTS['object_size']) -> Scene:
  """Draws one scene (arguments as `write_dataset`'s, unchecked)."""
  image = _background(rng, image_size).astype(np.float32)
  instances = np.zeros((image_size, image_size), np.uint8)
  placed = []
  for _ in range(rng.integers(objects_per_image[0],
                              objects_per_image[1] + 1)):
    class_id = int(rng.integers(1, num_classes))
    kind = _KINDS[class_id]
    for _ in range(PLACEMENT_TRIES):
      radius = rng.uniform(*object_size) * image_size / 2
      angle = rng.uniform(0, 2 * np.pi)
      cx, cy = _centre(rng, radius, image_size, placed)
      x0, y0 = int(cx - radius), int(cy - radius)
      x1 = min(int(np.ceil(cx + radius)), image_size)
      y1 = min(int(np.ceil(cy + radius)), image_size)
      y, x = np.mgrid[y0:y1, x0:x1] + 0.5
      u, v = _turned((x - cx) / radius, (y - cy) / radius, angle)
      shape = kind.shape(u, v)
      box = instances[y0:y1, x0:x1]
      covered = np.bincount(box[shape], minlength=len(placed) + 1)[1:]
      visible = np.bincount(instances.ravel(), minlength=len(placed) + 1)[1:]
      drawn = np.array([p.drawn_area for p in placed], int)
      if np.all(visible - covered >= MIN_VISIBLE * drawn):
        break
    else:
      continue  # No room left for this object.
    second = kind.texture(rng, u, v, rng.uniform(*kind.cycles))
    colours = _colours(rng)
    image[y0:y1, x0:x1][shape] = colours[second[shape].astype(int)]
    box[shape] = len(placed) + 1
    placed.append(Placed(class_id, (cx, cy), radius, angle,
                         int(shape.sum())))
  return Scene(np.round(image).astype(np.uint8), instances, tuple(placed))


def boundary_band(instances: np.ndarray, border: int) -> np.ndarray:
  """Where the ignore band lies: bool `[H, W]` for instances `[H, W]`.

  A pixel is in the band when the square window of `border + 1` pixels
  around it (centred; for an even window one pixel more above and left)
  holds two different instances. Across a boundary the band is `border`
  pixels wide: `border // 2` on the top / left side, the rest on the other.
  Image edges are not boundaries; `border` = 0 gives no band.
  """
  if border == 0:
    return np.zeros(instances.shape, bool)
  before = (border + 1) // 2
  padded = np.pad(instances, ((before, border - before),) * 2, mode='edge')
  windows = np.lib.stride_tricks.sliding_window_view(
      padded, (border + 1, border + 1))
  return windows.max(axis=(2, 3)) != windows.min(axis=(2, 3))


# Writing the dataset.


def _pair(value: Sequence, name: str, kind: type) -> tuple:
  """`value` as a (low, high) pair of `kind`, or ValueError naming `name`."""
  try:
    low, high = (kind(x) for x in value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be two {kind.__name__}s (low, high), got '
                     f'{value!r}') from None
  if low > high:
    raise ValueError(f'{name} must be (low, high) with low <= high, got '
                     f'{value!r}')
  return low, high


def _checked_settings(num_train: int, num_val: int, image_size: int,
                      num_classes: int, objects_per_image: Sequence[int],
                      object_size: Sequence[float], border: int,
                      seed: int) -> dict:
  """The arguments of a run as a JSON-able dict, or ValueError saying why."""
  checks = [('num_train', num_train, 1, None), ('num_val', num_val, 1, None),
            ('image_size', image_size, 32, 4096),
            ('num_classes', num_classes, 2, len(CLASS_NAMES)),
            ('border', border, 0, 16), ('seed', seed, 0, None)]
  for name, value, low, high in checks:
    if not isinstance(value, int) or value < low or (high and value > high):
      raise ValueError(f'{name} must be an integer >= {low}'
                       + (f' and <= {high}' if high else '')
                       + f', got {value!r}')
  objects_per_image = _pair(objects_per_image, 'objects_per_image', int)
  if not 1 <= objects_per_image[0] <= objects_per_image[1] <= MAX_OBJECTS:
    raise ValueError(f'objects_per_image must lie in 1..{MAX_OBJECTS}, got '
                     f'{objects_per_image}')
  object_size = _pair(object_size, 'object_size', float)
  if not 0 < object_size[0] <= object_size[1] <= 1:
    raise ValueError('object_size is a fraction of the image side: '
                     f'0 < low <= high <= 1, got {object_size}')
  if object_size[0] * image_size < 8:
    raise ValueError(
        f'the smallest objects would span {object_size[0] * image_size:.1f} '
        f'pixels (object_size {object_size[0]} x image_size {image_size}); '
        'raise either so that they span at least 8')
  return dict(num_train=num_train, num_val=num_val, image_size=image_size,
              num_classes=num_classes,
              objects_per_image=list(objects_per_image),
              object_size=list(object_size), border=border, seed=seed)


def _prepare_output(output_dir: str, settings: dict) -> None:
  """Creates the folders and `scenes.json`, or refuses the folder."""
  marker = os.path.join(output_dir, SETTINGS_FILE)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f'--output_dir={output_dir} is a file; give a folder')
  if os.path.isfile(marker):
    with open(marker) as f:
      previous = json.load(f)
    if previous != settings:
      changed = ', '.join(f'{k}: {previous.get(k)} -> {v}'
                          for k, v in settings.items()
                          if previous.get(k) != v)
      raise ValueError(
          f'{output_dir} holds scenes written with other arguments ('
          f'{changed}); choose another --output_dir or delete it')
  elif os.path.isdir(output_dir) and os.listdir(output_dir):
    raise ValueError(f'{output_dir} is not empty and holds no scenes '
                     f'({SETTINGS_FILE} is missing); choose a new or empty '
                     '--output_dir')
  voc_root = os.path.join(output_dir, VOC_DIR)
  for sub in (voc.IMAGE_DIR, voc.CLASS_DIR, voc.OBJECT_DIR, voc.SPLIT_DIR):
    os.makedirs(os.path.join(voc_root, sub), exist_ok=True)
  for folder in class_folders(settings['num_classes']):
    os.makedirs(os.path.join(output_dir, IMAGENET_DIR, folder), exist_ok=True)
  with open(marker, 'w') as f:
    json.dump(settings, f, indent=2)


def class_folders(num_classes: int) -> list[str]:
  """ImageNet-layout folder names of classes 1..C-1, sorting in class order:
  `n00000001_disc`, `n00000002_square`, ..."""
  return [f'n{k:08d}_{CLASS_NAMES[k]}' for k in range(1, num_classes)]


def encode_jpeg(image: np.ndarray) -> bytes:
  """uint8 `[H, W, 3]` RGB -> JPEG bytes (quality JPEG_QUALITY)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


def _write(path: str, content: bytes) -> None:
  with open(path, 'wb') as f:
    f.write(content)


def _fractions(counts: np.ndarray, names: Sequence[str]) -> dict[str, float]:
  """{class name or 'ignore': fraction of pixels} from a 256-bin histogram."""
  total = counts.sum()
  out = {name: float(counts[k] / total) for k, name in enumerate(names)}
  out['ignore'] = float(counts[voc.IGNORE] / total)
  return out


def write_dataset(output_dir: str, *, num_train: int, num_val: int,
                  image_size: int = DEFAULTS['image_size'],
                  num_classes: int = DEFAULTS['num_classes'],
                  objects_per_image: Sequence[int] = DEFAULTS[
                      'objects_per_image'],
                  object_size: Sequence[float] = DEFAULTS['object_size'],
                  border: int = DEFAULTS['border'],
                  seed: int = DEFAULTS['seed']) -> dict:
  """Writes a scenes dataset (VOC and ImageNet layouts, module docstring).

  Args:
    output_dir: new, empty, or an earlier output of the same arguments
      (written again, identically).
    num_train: images of the train split (>= 1).
    num_val: images of the val split (>= 1).
    image_size: side of the square images, pixels (32..4096).
    num_classes: C, background included (2..9): classes 0..C-1 of
      `CLASS_NAMES`.
    objects_per_image: (low, high): each image draws a number of objects
      uniformly in low..high (1..20); fewer are drawn when no placement keeps
      every object `MIN_VISIBLE` visible.
    object_size: (low, high) fractions of the image side: the range of an
      object's extent (diameter of its circumscribed circle); low x
      image_size must be at least 8 pixels.
    border: width of the band of 255 (ignore) along boundaries, pixels
      (0..16; `boundary_band`).
    seed: the same seed and arguments give byte-identical files.

  Returns:
    A JSON-able summary: `output_dir`, `voc_dir`, `imagenet_dir` (absolute
    paths), `class_names` (C), and per split (`train`, `val`): `images`,
    `objects_per_image` {min, mean, max}, `occluded_images` (fraction of
    images where an object is partly hidden), `class_pixel_fractions`
    {class name or 'ignore': fraction of the split's pixels, as written};
    `imagenet_images` {class folder: train images}.

  Raises:
    ValueError: a bad argument, or an output folder that is not empty and
      not an output of the same arguments.
  """
  settings = _checked_settings(num_train, num_val, image_size, num_classes,
                               objects_per_image, object_size, border, seed)
  output_dir = os.path.abspath(output_dir)
  _prepare_output(output_dir, settings)
  voc_root = os.path.join(output_dir, VOC_DIR)
  imagenet_root = os.path.join(output_dir, IMAGENET_DIR)
  folders = class_folders(num_classes)
  names = CLASS_NAMES[:num_classes]
  summary = dict(output_dir=output_dir, voc_dir=voc_root,
                 imagenet_dir=imagenet_root, class_names=list(names),
                 imagenet_images=dict.fromkeys(folders, 0))
  for split, count in zip(SPLITS, (num_train, num_val), strict=True):
    num_objects, occluded = [], 0
    pixels = np.zeros(256, np.int64)
    ids = [f'{split}_{index:06d}' for index in range(count)]
    for index, image_id in enumerate(ids):
      scene = render_scene(
          image_rng(seed, split, index), image_size=image_size,
          num_classes=num_classes, objects_per_image=settings[
              'objects_per_image'], object_size=settings['object_size'])
      classes = scene.classes()
      visible = np.bincount(scene.instances.ravel(),
                            minlength=len(scene.objects) + 1)[1:]
      num_objects.append(len(scene.objects))
      occluded += any(visible[k] < o.drawn_area
                      for k, o in enumerate(scene.objects))
      band = boundary_band(scene.instances, border)
      jpeg = encode_jpeg(scene.image)
      _write(voc.image_path(voc_root, image_id), jpeg)
      labels = np.where(band, voc.IGNORE, classes)
      pixels += np.bincount(labels.ravel(), minlength=256)
      voc.write_label_png(voc.label_path(voc_root, image_id), labels)
      voc.write_label_png(
          os.path.join(voc_root, voc.OBJECT_DIR, f'{image_id}.png'),
          np.where(band, voc.IGNORE, scene.instances))
      if split == 'train':
        largest = folders[int(np.argmax(np.bincount(
            classes.ravel(), minlength=num_classes)[1:]))]
        _write(os.path.join(imagenet_root, largest, f'{image_id}.JPEG'), jpeg)
        summary['imagenet_images'][largest] += 1
    with open(os.path.join(voc_root, voc.SPLIT_DIR, f'{split}.txt'),
              'w') as f:
      f.write(''.join(f'{i}\n' for i in ids))
    summary[split] = dict(
        images=count,
        objects_per_image=dict(min=min(num_objects),
                               mean=float(np.mean(num_objects)),
                               max=max(num_objects)),
        occluded_images=occluded / count,
        class_pixel_fractions=_fractions(pixels, names))
  return summary


# Command line.


def _define_flags() -> None:
  """The command's flags (defined only when run as a program)."""
  flags.DEFINE_string(
      'output_dir', None, 'Folder to write (created): new, empty, or an '
      'earlier output of the same flags, which is written again, '
      'identically.', required=True)
  flags.DEFINE_integer('num_train', None, 'Images of the train split.',
                       required=True)
  flags.DEFINE_integer('num_val', None, 'Images of the val split.',
                       required=True)
  flags.DEFINE_integer('image_size', DEFAULTS['image_size'],
                       'Side of the square images, pixels (32..4096).')
  flags.DEFINE_integer(
      'num_classes', DEFAULTS['num_classes'], 'Classes, background '
      f'included (2..{len(CLASS_NAMES)}), taken in this order: '
      f'{", ".join(CLASS_NAMES)}.')
  flags.DEFINE_list(
      'objects_per_image', [str(x) for x in DEFAULTS['objects_per_image']],
      'low,high: objects per image, drawn uniformly in low..high '
      f'(1..{MAX_OBJECTS}).')
  flags.DEFINE_list(
      'object_size', [str(x) for x in DEFAULTS['object_size']],
      'low,high: range of an object\'s extent (circumscribed diameter) as a '
      'fraction of the image side.')
  flags.DEFINE_integer(
      'border', DEFAULTS['border'], 'Width of the band of 255 (ignore) '
      'along every boundary in the label PNGs, pixels (0..16).')
  flags.DEFINE_integer('seed', DEFAULTS['seed'], 'Random seed (>= 0); the '
                       'same flags write byte-identical files.')


def _report(summary: dict) -> str:
  """The summary as text for the console."""
  names = [*summary['class_names'], 'ignore']
  lines = [f'Wrote {summary["train"]["images"]} train and '
           f'{summary["val"]["images"]} val scenes to '
           f'{summary["output_dir"]}:',
           f'  VOC 2012 layout: {summary["voc_dir"]}',
           f'  train images by largest class (ImageNet layout): '
           f'{summary["imagenet_dir"]}',
           f'  arguments: {os.path.join(summary["output_dir"], SETTINGS_FILE)}',
           'objects per image: ' + ', '.join(
               f'{s} {summary[s]["objects_per_image"]["min"]}..'
               f'{summary[s]["objects_per_image"]["max"]} (mean '
               f'{summary[s]["objects_per_image"]["mean"]:.2f})'
               for s in SPLITS),
           'images with occlusions: ' + ', '.join(
               f'{s} {summary[s]["occluded_images"]:.1%}' for s in SPLITS),
           f'{"pixels per class":24}' + ''.join(f'{s:>8}' for s in SPLITS)]
  for name in names:
    lines.append(f'  {name:22}' + ''.join(
        f'{summary[s]["class_pixel_fractions"][name]:8.1%}' for s in SPLITS))
  lines.append('train images per ImageNet class folder: ' + ', '.join(
      f'{k} {v}' for k, v in summary['imagenet_images'].items()))
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    summary = write_dataset(
        f.output_dir, num_train=f.num_train, num_val=f.num_val,
        image_size=f.image_size, num_classes=f.num_classes,
        objects_per_image=f.objects_per_image, object_size=f.object_size,
        border=f.border, seed=f.seed)
  except ValueError as e:
    sys.exit(f'detcon.scenes: error: {e}')
  print(_report(summary), flush=True)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
