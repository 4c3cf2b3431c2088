r"""A pretrained encoder on one image: its top-5 classes and a picture.

  python -m detcon.predict --npy=resnet50_detcon_b_imagenet_1k.npy \
      [--image=photo.jpg] [--labels_file=imagenet_lsvrc_2015_synsets.txt \
      --imagenet_metadata_file=imagenet_metadata.txt] [--output=predict.png]

What the original release's Colab does, as a command. The weights come from a
released or exported `.npy` file (`backbone.from_npy`; the encoder is
inferred from its shapes). The image (default: the coffee photo that ships with
scikit-image) gets the evaluation crop of linear evaluation (centre square of
side S/(S+32) x the short side, bicubic to S x S); the encoder runs in
inference mode (BatchNorm moving statistics) and normalises internally. The
FH segmentation is made on the whole image and seen through the same crop
(nearest-neighbour), as the pretraining pipeline does with its masks.

Printed: the classifier's top-5 (0-based class index, probability, and the
synset and text when a labels file is given), when the file has a classifier.

Written (`--output`, a PNG through `plots.image_sheet`): the image | its
Felzenszwalb-Huttenlocher segmentation, a colour per segment | the
mask-pooled features: each segment's feature is the mean of the final feature
map's cells, weighted by how many of the segment's pixels fall in each cell
(DetCon's mask pooling at pixel resolution); the first three principal
components over the segments, each scaled to [0, 1], are painted as RGB on
the segment's pixels, so segments the encoder sees alike look alike.
"""

import os
import sys

import numpy as np
from absl import app, flags, logging
from PIL import Image, UnidentifiedImageError
from skimage import color, segmentation
from skimage import data as skimage_data

from detcon import backbone, cli, image_io, log_setup, plots, records

DEFAULT_IMAGE = 'coffee'  # skimage.data.coffee(): a cup of coffee, 400x600.


def read_image(path: str | None) -> np.ndarray:
  """An RGB image, uint8 `[H, W, 3]`; None: scikit-image's coffee photo.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file PIL cannot read as an image.
  """
  if not path:
    return getattr(skimage_data, DEFAULT_IMAGE)()
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such image file: {path}')
  try:
    with Image.open(path) as image:
      return np.asarray(image_io.to_rgb(image))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f'{path} is not an image PIL can read ({e}); give a '
                     'JPEG or PNG photo') from None


def crop_window(image: np.ndarray, image_size: int) -> tuple[int, ...]:
  """(y, x, h, w): the evaluation crop of linear evaluation, in pixels."""
  from detcon import data  # pylint: disable=g-import-not-at-top (TF)
  data.hide_gpus_from_tf()
  return tuple(int(v) for v in data.center_crop_window(
      image.shape[0], image.shape[1], image_size))


def crop_image(image: np.ndarray, window: tuple[int, ...], image_size: int
               ) -> np.ndarray:
  """uint8 `[H, W, 3]` -> float32 `[S, S, 3]` in [0, 1]: crop, bicubic."""
  from detcon import data  # pylint: disable=g-import-not-at-top (TF)
  y, x, h, w = window
  return np.asarray(data._resize_image(  # pylint: disable=protected-access
      image[y:y + h, x:x + w], image_size))


def crop_segments(segments: np.ndarray, window: tuple[int, ...],
                  image_size: int) -> np.ndarray:
  """Segment ids `[H, W]` -> `[S, S]`: crop, nearest, renumbered 0..N-1.

  As the pretraining pipeline treats its masks (made on the whole image).
  """
  y, x, h, w = window
  rows = y + (np.arange(image_size) + 0.5) * h // image_size
  cols = x + (np.arange(image_size) + 0.5) * w // image_size
  cropped = segments[np.ix_(rows.astype(int), cols.astype(int))]
  return np.unique(cropped, return_inverse=True)[1].reshape(cropped.shape)


def segment_features(segments: np.ndarray, feature_map: np.ndarray
                     ) -> np.ndarray:
  """Mask-pooled features of every segment.

  Args:
    segments: int `[S, S]` segment ids 0..N-1 (as FH gives them).
    feature_map: `[g, g, C]`, each cell covering `S/g x S/g` pixels.

  Returns:
    float64 `[N, C]`: row i is the mean of the cells' features weighted by
    the number of segment i's pixels in each cell.
  """
  size, grid = segments.shape[0], feature_map.shape[0]
  if segments.shape != (size, size) or size % grid:
    raise ValueError(f'segments {segments.shape} do not tile the {grid}x'
                     f'{grid} feature grid')
  rows = np.arange(size) // (size // grid)
  cells = (rows[:, None] * grid + rows[None, :]).ravel()
  counts = np.zeros((segments.max() + 1, grid * grid))
  np.add.at(counts, (segments.ravel(), cells), 1)
  weights = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  return weights @ feature_map.reshape(grid * grid, -1).astype(np.float64)


def pca_colours(features: np.ndarray) -> np.ndarray:
  """RGB `[N, 3]` in [0, 1]: the first three principal components of rows.

  Each component is scaled to [0, 1] over the rows; a component that does
  not vary (fewer than 4 rows, or identical rows) is 0.5.
  """
  centred = features - features.mean(0)
  colours = np.full((len(features), 3), 0.5)
  if len(features) > 1:
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :3] * s[:3]
    span = np.ptp(scores, axis=0)
    varies = span > 1e-9 * s[0]
    colours[:, :scores.shape[1]] = np.where(
        varies, (scores - scores.min(0)) / np.where(varies, span, 1), 0.5)
  return colours


def read_class_names(labels_file: str | None, metadata_file: str | None
                     ) -> list[str] | None:
  """'synset text' per 0-based class index, or None without a labels file.

  Args:
    labels_file: one synset a line; class index = line number - 1.
    metadata_file: `synset<TAB>text` lines (optional); a synset without one
      shows alone.
  """
  if not labels_file:
    if metadata_file:
      raise ValueError('--imagenet_metadata_file needs --labels_file, which '
                       'gives the order of the classes')
    return None
  texts = records.read_synset_texts(metadata_file) if metadata_file else {}
  with open(labels_file) as f:
    synsets = [line.strip() for line in f if line.strip()]
  return [f'{s} {texts[s]}' if s in texts else s for s in synsets]


def top_k_lines(logits: np.ndarray, names: list[str] | None, k: int = 5
                ) -> list[str]:
  """The `k` most probable classes of `logits [K]`, one line each."""
  probabilities = np.exp(logits - logits.max())
  probabilities /= probabilities.sum()
  if names is not None and len(names) != len(logits):
    raise ValueError(f'the labels file lists {len(names)} synsets, the '
                     f'classifier has {len(logits)} classes; give the labels '
                     'file of the pretraining data')
  lines = []
  for rank, index in enumerate(np.argsort(-probabilities)[:k], 1):
    name = f'  {names[index]}' if names else ''
    lines.append(f'{rank}. class {index:4d}  p={probabilities[index]:.4f}'
                 f'{name}')
  return lines


def run(npy: str, image_path: str | None, output: str, *, image_size: int,
        fh_scale: float, fh_min_size: int, labels_file: str | None = None,
        metadata_file: str | None = None) -> list[str]:
  """Classifies one image and writes the picture.

  Args:
    npy: a released or exported `.npy` file.
    image_path: the image; None: scikit-image's coffee photo.
    output: the PNG to write.
    image_size: side of the centre crop fed to the encoder, a multiple of 32.
    fh_scale, fh_min_size: `skimage.segmentation.felzenszwalb` settings.
    labels_file, metadata_file: class names (`read_class_names`).

  Returns:
    The printed lines: the top-5, or a note that the file has no classifier.
  """
  if image_size <= 0 or image_size % 32:
    raise ValueError(f'--image_size={image_size} must be a positive multiple '
                     'of 32 (the encoder output stride), e.g. 224')
  names = read_class_names(labels_file, metadata_file)
  photo = read_image(image_path)
  pretrained = backbone.from_npy(npy)
  window = crop_window(photo, image_size)
  image = crop_image(photo, window, image_size)
  segments = crop_segments(
      segmentation.felzenszwalb(photo, scale=fh_scale, min_size=fh_min_size),
      window, image_size)
  feature_map = np.asarray(backbone.feature_map_fn(pretrained)(
      image[None]))[0]
  classifier = pretrained.params.get('classifier')
  if classifier is None:
    lines = [f'{npy} has no classifier: no classes to show.']
  else:
    logits = feature_map.mean((0, 1)) @ classifier['w'] + classifier['b']
    lines = top_k_lines(logits, names)
  pixels = (image * 255 + 0.5).astype(np.uint8)
  pooled = pca_colours(segment_features(segments, feature_map))[segments]
  outlined = segmentation.mark_boundaries(
      color.label2rgb(segments, bg_label=-1), segments, color=(0, 0, 0))
  tiles = [(pixels, f'input: centre crop, {image_size}x{image_size}'),
           ((outlined * 255).astype(np.uint8),
            f'FH segmentation: {segments.max() + 1} segments'),
           ((pooled * 255 + 0.5).astype(np.uint8),
            'mask-pooled features: PCA 1-3 as RGB')]
  plots.image_sheet(
      output, [tiles],
      f'{pretrained.encoder} x{pretrained.width_multiplier} from '
      f'{os.path.basename(npy)}',
      notes=[f'FH scale {fh_scale:g}, min_size {fh_min_size}; feature grid '
             f'{feature_map.shape[0]}x{feature_map.shape[1]}.', *lines])
  logging.info('Wrote %s.', output)
  return lines


def _define_flags() -> None:
  """The command's flags (defined only when run as a program)."""
  flags.DEFINE_string(
      'npy', None, 'Weights: a released checkpoint (e.g. resnet50_detcon_b_'
      'imagenet_1k.npy) or a detcon.export --format=npy file.', required=True)
  flags.DEFINE_string(
      'image', None, 'Image file (JPEG, PNG, ...). Default: the coffee photo '
      'that ships with scikit-image (skimage.data.coffee).')
  flags.DEFINE_string(
      'labels_file', None, 'Synsets, one a line, in the classifier order '
      '(class index = line - 1), e.g. imagenet_lsvrc_2015_synsets.txt.')
  flags.DEFINE_string(
      'imagenet_metadata_file', None, 'synset<TAB>text lines, e.g. '
      'imagenet_metadata.txt; needs --labels_file.')
  flags.DEFINE_string('output', 'predict.png', 'The PNG picture to write.')
  flags.DEFINE_integer(
      'image_size', 224, 'Side of the centre crop fed to the encoder, pixels; '
      'a multiple of 32.', lower_bound=32)
  flags.DEFINE_float('fh_scale', 1000, 'Felzenszwalb-Huttenlocher scale.',
                     lower_bound=0)
  flags.DEFINE_integer('fh_min_size', 1000, 'Felzenszwalb-Huttenlocher '
                       'minimum segment size, pixels.', lower_bound=0)


def main(argv):
  log_setup.apply()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    cli.check_writable_file(f.output, '--output')
    lines = run(f.npy, f.image, f.output, image_size=f.image_size,
                fh_scale=f.fh_scale, fh_min_size=f.fh_min_size,
                labels_file=f.labels_file,
                metadata_file=f.imagenet_metadata_file)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'detcon.predict: error: {e}')
  print('\n'.join([*lines, f'Wrote {f.output}']), flush=True)


if __name__ == '__main__':
  _define_flags()
  flags.adopt_module_key_flags(log_setup)  # --library_logs in --help.
  cli.run(main)
