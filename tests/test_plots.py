"""The figures of `detcon.plots`, read back from their PNG pixels."""

import numpy as np
import pytest
from PIL import Image

from detcon import plots

# matplotlib's first two default colours, C0 and C1.
BLUE = (31, 119, 180)
ORANGE = (255, 127, 14)


def pixels(path):
  """The PNG at `path` as uint8 RGB `[H, W, 3]`, after checking it."""
  with Image.open(path) as image:
    assert image.format == 'PNG'
    image.verify()
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def count(image, colour, tolerance=8):
  """How many pixels are within `tolerance` of `colour` in each channel."""
  return int((np.abs(image.astype(int) - colour) <= tolerance).all(-1).sum())


def test_line_plot_draws_each_curve_in_its_colour(tmp_path):
  one, two = tmp_path / 'one.png', tmp_path / 'two.png'
  plots.line_plot(str(one), {'a': ([1, 2, 3], [3.0, 2.0, 1.0])}, 'title')
  plots.line_plot(str(two), {'a': ([1, 2, 3], [3.0, 2.0, 1.0]),
                             'b': ([1], [1.5])}, 'title')
  one, two = pixels(one), pixels(two)
  assert count(one, BLUE) > 100 and count(one, ORANGE) == 0
  assert count(two, BLUE) > 100 and count(two, ORANGE) > 20


def test_smoothed_line_plot_draws_the_raw_curve_faint(tmp_path):
  steps = list(range(100))
  path = tmp_path / 'smooth.png'
  plots.line_plot(str(path), {'a': (steps, [1.0 + (-1)**s for s in steps])},
                  'title', smoothing=0.9)
  image = pixels(path)
  faint = tuple(round(0.3 * c + 0.7 * 255) for c in BLUE)  # Alpha 0.3.
  assert count(image, faint, tolerance=4) > 100
  assert count(image, BLUE) > 100


def test_a_spread_draws_a_band_around_the_curve(tmp_path):
  plain, banded = tmp_path / 'plain.png', tmp_path / 'banded.png'
  xs, ys = [0, 1, 2], [1.0, 2.0, 3.0]
  plots.line_plot(str(plain), {'a': (xs, ys)}, 'title')
  plots.line_plot(str(banded), {'a': (xs, ys, [0.0, 0.5, 0.5])}, 'title')
  band = tuple(round(0.2 * c + 0.8 * 255) for c in BLUE)  # Alpha 0.2.
  # The plain line's antialiased edges have a few pixels of that shade.
  assert count(pixels(banded), band, tolerance=4) > (
      count(pixels(plain), band, tolerance=4) + 1000)


def test_smooth_is_a_debiased_moving_average():
  # a_k = w a_{k-1} + (1 - w) x_k from a_0 = 0, divided by 1 - w^k.
  assert plots.smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0] * 3)
  assert plots.smooth([0.0, 1.0, 1.0], 0.5) == pytest.approx(
      [0.0, 0.5 / 0.75, 0.75 / 0.875])
  assert plots.smooth([4.0, 0.0], 0.0) == pytest.approx([4.0, 0.0])


def _tiles(image, colour):
  """The boxes of the tiles of exactly `colour`, stacked in one column."""
  mask = (image == colour).all(-1)
  rows = np.nonzero(mask.any(1))[0]
  cols = np.nonzero(mask.any(0))[0]
  runs = np.split(rows, np.nonzero(np.diff(rows) > 1)[0] + 1)
  return [image[r[0]:r[-1] + 1, cols[0]:cols[-1] + 1] for r in runs]


def test_image_sheet_shows_its_tiles_and_their_labels(tmp_path):
  red = np.full((16, 16, 3), (255, 0, 0), np.uint8)
  blue = np.full((16, 24, 3), (0, 0, 255), np.uint8)
  path = tmp_path / 'sheet.png'
  plots.image_sheet(str(path), [[(blue, 'plain'), (red, 'red')],
                                [(blue, 'labelled', [(1, 1, 'id 7')])]],
                    'title')
  image = pixels(path)
  assert count(image, (255, 0, 0), tolerance=0) > 150 * 150  # Fills a tile.
  plain, labelled = _tiles(image, (0, 0, 255))
  assert plain.shape[0] > 100 and plain.shape[1] > 150
  assert (plain == (0, 0, 255)).all()
  assert (labelled != (0, 0, 255)).any(-1).sum() > 20  # 'id 7' on it.
  assert count(labelled, (255, 255, 255), tolerance=4) > 0  # In white.


def test_image_sheet_notes_add_lines_below(tmp_path):
  red = np.full((16, 16, 3), (255, 0, 0), np.uint8)
  plain, with_notes = tmp_path / 'plain.png', tmp_path / 'notes.png'
  plots.image_sheet(str(plain), [[(red, 'red')]], 'title')
  plots.image_sheet(str(with_notes), [[(red, 'red')]], 'title',
                    ['a note', 'another note'])
  plain, with_notes = pixels(plain), pixels(with_notes)
  assert with_notes.shape[0] > plain.shape[0]
  dark = (with_notes.max(-1) < 100).any(1)  # Rows with black text.
  red_rows = np.nonzero((with_notes == (255, 0, 0)).all(-1).any(1))[0]
  assert dark[red_rows[-1] + 1:].sum() > 10  # The notes, under the tile.


def test_bar_chart_draws_each_series_in_its_colour(tmp_path):
  path = tmp_path / 'bars.png'
  plots.bar_chart(str(path), ['top-1', 'top-5'],
                  {'ours': ([0.5, 0.8], [0.02, 0.01]),
                   'original': ([0.4, 0.7], [0.03, 0.02])}, 'title', 'acc')
  image = pixels(path)
  assert count(image, BLUE, tolerance=2) > 500
  assert count(image, ORANGE, tolerance=2) > 500
