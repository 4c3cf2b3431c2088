"""Every figure of the project, drawn with matplotlib (Agg, no screen needed).

* `image_sheet`: rows of captioned images under a title, with notes below
  (the demo's pictures, the dense evaluation's predictions, `predict`).
* `line_plot`: curves against the training step, optionally smoothed as
  TensorBoard does (the demo's loss curves) or with a spread band (the
  studies' learning curves over seeds).
* `bar_chart`: grouped bars with error bars (benchmark tables).

Images are composited beforehand (NumPy / PIL); this module only lays them
out, captions them and draws axes.
"""

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use('Agg')
from matplotlib import patheffects  # noqa: E402  (after choosing Agg)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Label = tuple[float, float, str]  # (x, y) in the image's pixels, text.
# (uint8 [H, W, 3] or [H, W] image, caption), optionally with labels written
# on the image: white text, outlined in black, its top left at (x, y).
Tile = tuple[np.ndarray, str] | tuple[np.ndarray, str, Sequence[Label]]


def image_sheet(path: str, rows: Sequence[Sequence[Tile]], title: str,
                notes: Sequence[str] = (), tile_inches: float = 2.4,
                dpi: int = 100) -> None:
  """Saves a PNG grid of captioned images.

  Args:
    path: the PNG to write.
    rows: rows of `Tile`s; rows may differ in length. Images keep their
      aspect ratio inside square tiles and are shown pixel for pixel
      (nearest-neighbour), so label maps stay crisp.
    title: one line above the grid.
    notes: lines of explanation below the grid.
    tile_inches: side of one tile, inches.
    dpi: pixels per inch of the PNG.
  """
  num_cols = max(len(r) for r in rows)
  notes_h = 0.22 * len(notes)
  fig = Figure(figsize=(num_cols * tile_inches,
                        len(rows) * (tile_inches + 0.3) + 0.5 + notes_h),
               dpi=dpi)
  grid = fig.add_gridspec(len(rows), num_cols, left=0.01, right=0.99,
                          top=1 - 0.5 / fig.get_figheight(),
                          bottom=(notes_h + 0.05) / fig.get_figheight(),
                          wspace=0.05, hspace=0.25)
  for r, row in enumerate(rows):
    for c, (image, caption, *labels) in enumerate(row):
      ax = fig.add_subplot(grid[r, c])
      gray = np.ndim(image) == 2
      ax.imshow(image, interpolation='nearest', cmap='gray' if gray else None,
                vmin=0 if gray else None, vmax=255 if gray else None)
      for x, y, text in labels[0] if labels else ():
        ax.text(x, y, text, color='white', fontsize=8, ha='left', va='top',
                path_effects=[patheffects.withStroke(linewidth=2,
                                                     foreground='black')])
      ax.set_title(caption, fontsize=8)
      ax.set_axis_off()
  fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig.get_figheight())
  for i, note in enumerate(notes):
    fig.text(0.01, (notes_h - 0.22 * i - 0.15) / fig.get_figheight(), note,
             fontsize=8, va='bottom')
  fig.savefig(path, dpi=dpi)


def smooth(values: Sequence[float], weight: float) -> list[float]:
  """TensorBoard's smoothing: a debiased exponential moving average."""
  out, average = [], 0.0
  for k, value in enumerate(values, 1):
    average = weight * average + (1 - weight) * value
    out.append(average / (1 - weight**k))
  return out


def line_plot(path: str,
              curves: Mapping[str, tuple[Sequence[float], ...]],
              title: str, x_label: str = 'training step', y_label: str = '',
              smoothing: float = 0.0) -> None:
  """Saves a PNG line plot of `{name: (x, y)}`, one colour per curve.

  Args:
    path: the PNG to write.
    curves: the x and y values of each curve, in legend order, and
      optionally a spread (e.g. a standard deviation) per point, drawn as a
      band from y - spread to y + spread.
    title: above the plot.
    x_label, y_label: axis captions.
    smoothing: with a weight in (0, 1), each curve is drawn faint as it is
      and bold after `smooth`; 0 draws it as it is (with markers when it has
      30 points or fewer).

  When every x is a whole number (steps), so are the x ticks.
  """
  fig = Figure(figsize=(9.6, 5.2), dpi=100)
  ax = fig.add_subplot()
  for k, (name, (xs, ys, *spread)) in enumerate(curves.items()):
    colour = f'C{k}'
    if spread:
      ax.fill_between(xs, np.subtract(ys, spread[0]), np.add(ys, spread[0]),
                      color=colour, alpha=0.2, linewidth=0)
    if smoothing and len(ys) > 1:
      ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=1)
      ax.plot(xs, smooth(ys, smoothing), color=colour, linewidth=2,
              label=name)
    else:
      ax.plot(xs, ys, color=colour, linewidth=2, label=name,
              marker='o' if len(ys) <= 30 else None, markersize=4)
  if smoothing:
    x_label += f' (faint: each value; bold: smoothed, weight {smoothing})'
  ax.set(title=title, xlabel=x_label, ylabel=y_label)
  if all(float(x).is_integer() for xs, *_ in curves.values() for x in xs):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)


def bar_chart(path: str, groups: Sequence[str],
              series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
              title: str, y_label: str) -> None:
  """Saves a PNG of grouped bars with error bars.

  Args:
    path: the PNG to write.
    groups: the x-axis categories (e.g. metrics).
    series: {name: (values, errors)}, one value and error per group; one
      colour per series.
    title, y_label: captions.
  """
  fig = Figure(figsize=(1.6 + 1.2 * len(groups) * max(len(series), 1) / 2,
                        4.5), dpi=100)
  ax = fig.add_subplot()
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  for k, (name, (values, errors)) in enumerate(series.items()):
    ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width,
           yerr=errors, capsize=3, label=name, color=f'C{k}')
  ax.set_xticks(x, groups)
  ax.set(title=title, ylabel=y_label)
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
