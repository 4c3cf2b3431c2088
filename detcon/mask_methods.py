"""The mask methods, one entry each (`--segmentation`, `config.masks`).

A method's masks are either stored in the records (`stored`: the mask
script makes them once per image and names the method in
`records.MASK_SOURCE_KEY`) or drawn by the input pipeline over each image
(like `grid`: the records need no masks). Its entry in `METHODS` holds all
that the code knows of it:

* `make`: the function that makes the masks. Stored methods:
  `make(pixels, entry, settings)` -> integer ids >= 0 `[n_masks, H, W]` for
  the decoded uint8 `[H, W, 3]` image, its `record_writer.Entry` and the
  `record_writer.Settings` (it may raise `record_writer.SkipImage`). Drawn
  methods: `make(height, width, grid_size)` -> int32 `[H, W, 1]` in
  TensorFlow, for scalar int tensors `height`, `width`.
* stored methods: `settings`, the `record_writer.Settings` fields that
  decide the masks (with `mask_encoding`, the resume fingerprint); `flags`,
  the mask script's flags of the method (given with another method, they
  are an error); `help`, its part of `--segmentation`'s help; `work`, what
  the summary says the workers' mask time went to; `describe(settings)`,
  one name per mask for the summary; `bytes_per_pixel` and
  `bytes_per_extra_mask`, its peak memory (`memory_budget.mask_bytes`).
* drawn methods: `check_config(config)`, raising ValueError for settings of
  the method that cannot run (`main_loop.validate`).

Adding a method is one entry of `METHODS` and its function; settings of
its own are also `record_writer.Settings` fields and flags of the mask
script (stored methods) or config fields (drawn ones). Heavy libraries
(scikit-image, TensorFlow) are imported inside the functions, so importing
this module is cheap.
"""

from collections.abc import Callable
from typing import Any, NamedTuple


class MaskMethod(NamedTuple):
  stored: bool
  make: Callable[..., Any]
  settings: tuple[str, ...] = ()
  flags: tuple[str, ...] = ()
  help: str = ''
  work: str = ''
  describe: Callable[[Any], list[str]] | None = None
  # Peak bytes per pixel of making one image's masks, measured by
  # bench/bench_mask_memory.py over 0.2-12 megapixels (decoded image
  # included) and rounded up, plus those of each mask after the first.
  bytes_per_pixel: int = 0
  bytes_per_extra_mask: int = 0
  check_config: Callable[[Any], None] | None = None


def felzenszwalb(pixels, entry, settings):
  """One Felzenszwalb mask per `settings.fh_pairs` pair: `[n_pairs, H, W]`."""
  del entry  # The image alone decides.
  import numpy as np  # pylint: disable=g-import-not-at-top
  from skimage import segmentation  # pylint: disable=g-import-not-at-top
  return np.stack([
      segmentation.felzenszwalb(pixels, scale=scale, min_size=min_size)
      for scale, min_size in settings.fh_pairs])


def slic(pixels, entry, settings):
  """One SLIC mask, ids 0..n-1: `[1, H, W]`."""
  del entry  # The image alone decides.
  from skimage import segmentation  # pylint: disable=g-import-not-at-top
  return segmentation.slic(
      pixels, n_segments=settings.slic_n_segments,
      compactness=settings.slic_compactness, start_label=0)[None]


def ground_truth(pixels, entry, settings):
  """The image's label PNG (`record_writer.read_ground_truth`): `[1, H, W]`."""
  # Imported here: record_writer imports this module.
  from detcon import record_writer  # pylint: disable=g-import-not-at-top
  return record_writer.read_ground_truth(
      entry.ground_truth, pixels.shape[:2], settings.ground_truth_ignore)[None]


def grid(height, width, grid_size: int):
  """The spatial heuristic's rectangles (`data.grid_masks`): `[H, W, 1]`."""
  # Imported here: data imports this module (and TensorFlow).
  from detcon import data  # pylint: disable=g-import-not-at-top
  return data.grid_masks(height, width, grid_size)


def check_grid(config) -> None:
  """`config.grid_size` must give 1 to `config.detcon.max_mask_id` ids."""
  if not 1 <= config.grid_size ** 2 <= config.detcon.max_mask_id:
    raise ValueError(
        f'--config.grid_size={config.grid_size}: use n >= 1 with n x n ids '
        f'at most --config.detcon.max_mask_id={config.detcon.max_mask_id}')


METHODS: dict[str, MaskMethod] = {
    'fh': MaskMethod(
        stored=True, make=felzenszwalb,
        # Without `segmentation`, so that jobs of versions without other
        # methods resume.
        settings=('fh_pairs',),
        flags=('fh_scales', 'fh_min_sizes'),
        help=('Felzenszwalb-Huttenlocher, one mask per '
              '--fh_scales/--fh_min_sizes pair.'),
        work='FH',
        describe=lambda s: [f'scale={scale:g}, min_size={min_size}'
                            for scale, min_size in s.fh_pairs],
        # Each further (scale, min_size) pair keeps one more int64 mask, and
        # the stacking copies them all.
        bytes_per_pixel=400, bytes_per_extra_mask=16),
    'slic': MaskMethod(
        stored=True, make=slic,
        settings=('segmentation', 'slic_n_segments', 'slic_compactness'),
        flags=('slic_n_segments', 'slic_compactness'),
        help='SLIC superpixels (--slic_n_segments, --slic_compactness), one '
             'mask.',
        work='SLIC',
        describe=lambda s: [f'SLIC n_segments={s.slic_n_segments}, '
                            f'compactness={s.slic_compactness:g}'],
        bytes_per_pixel=200),
    'ground_truth': MaskMethod(
        stored=True, make=ground_truth,
        settings=('segmentation', 'ground_truth_directory',
                  'ground_truth_ignore'),
        flags=('ground_truth_directory', 'ground_truth_ignore'),
        help='one label PNG per image from --ground_truth_directory, one '
             'mask.',
        work='reading label PNGs',
        describe=lambda s: [f'ground truth, ignore={s.ground_truth_ignore}'],
        bytes_per_pixel=40),
    'grid': MaskMethod(stored=False, make=grid, check_config=check_grid),
}


def names(*, stored: bool) -> tuple[str, ...]:
  """The methods whose masks are stored in the records (or drawn), in order."""
  return tuple(name for name, m in METHODS.items() if m.stored == stored)


def get(name: str) -> MaskMethod:
  """The method called `name`; a clear error naming the known ones."""
  if name not in METHODS:
    raise ValueError(f'masks={name!r}: use one of {", ".join(METHODS)}')
  return METHODS[name]
