"""`python -m detcon.predict`: top-5 of a released file and its picture."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from detcon import predict, sample_data
from tests import released_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 1000


def _released(path, with_classifier=True, seed=0):
  """A ResNet-18 in the released layout; its classifier w = 0, b random.

  With w = 0 the logits are b whatever the image, so the top-5 is known.
  """
  tree = released_layout.released_dict(
      (2, 2, 2, 2), bottleneck=False, prefix='res_net18/~/', seed=seed,
      heads=(64, 32, 64), num_classes=NUM_CLASSES if with_classifier else 0)
  if with_classifier:
    tree['classifier']['w'][:] = 0
    tree['classifier']['b'] = np.random.default_rng(seed).normal(
        0, 2, NUM_CLASSES).astype(np.float32)
  return released_layout.save(path, tree), tree


def _check_png(path, min_width=300):
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.width >= min_width
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 20  # A picture, not a blank page.


def test_cli_prints_top5_with_names_and_writes_png(tmp_path):
  npy, tree = _released(tmp_path / 'r18.npy')
  synsets = [f'n{i:08d}' for i in range(NUM_CLASSES)]
  labels = tmp_path / 'synsets.txt'
  labels.write_text(''.join(f'{s}\n' for s in synsets))
  metadata = tmp_path / 'metadata.txt'  # Text for the even classes only.
  metadata.write_text(''.join(f'{s}\tthing {i}\n'
                              for i, s in enumerate(synsets) if i % 2 == 0))
  image = tmp_path / 'astronaut.jpg'
  Image.fromarray(data.astronaut()).resize((160, 120)).save(image)
  output = tmp_path / 'picture.png'
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.predict', f'--npy={npy}',
       f'--image={image}', f'--labels_file={labels}',
       f'--imagenet_metadata_file={metadata}', f'--output={output}',
       '--image_size=64', '--fh_scale=100', '--fh_min_size=20'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  b = tree['classifier']['b'].astype(np.float64)
  probabilities = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 6 and lines[-1] == f'Wrote {output}'
  for rank, (line, index) in enumerate(
      zip(lines[:5], np.argsort(-probabilities)[:5], strict=True), 1):
    words = line.split()
    assert words[:3] == [f'{rank}.', 'class', str(index)], line
    assert float(words[3].removeprefix('p=')) == pytest.approx(
        probabilities[index], abs=1e-4)
    name = [synsets[index]] + (['thing', str(index)] if index % 2 == 0
                               else [])
    assert words[4:] == name, line
  _check_png(output)


def test_without_classifier_still_draws_default_image(tmp_path):
  npy, _ = _released(tmp_path / 'r18.npy', with_classifier=False)
  output = str(tmp_path / 'picture.png')
  lines = predict.run(npy, None, output, image_size=64, fh_scale=100,
                      fh_min_size=20)
  assert lines == [f'{npy} has no classifier: no classes to show.']
  _check_png(output)


def test_bad_inputs_are_clear_errors(tmp_path):
  npy, _ = _released(tmp_path / 'r18.npy', with_classifier=False)
  out = str(tmp_path / 'p.png')
  kwargs = dict(image_size=64, fh_scale=100, fh_min_size=20)
  with pytest.raises(FileNotFoundError, match='no such image file'):
    predict.run(npy, str(tmp_path / 'none.jpg'), out, **kwargs)
  not_image = tmp_path / 'notes.jpg'
  not_image.write_text('hello')
  with pytest.raises(ValueError, match='is not an image PIL can read'):
    predict.run(npy, str(not_image), out, **kwargs)
  with pytest.raises(FileNotFoundError, match='no such .npy file'):
    predict.run(str(tmp_path / 'none.npy'), None, out, **kwargs)
  with pytest.raises(ValueError, match='multiple of 32'):
    predict.run(npy, None, out, image_size=100, fh_scale=100, fh_min_size=20)
  with pytest.raises(ValueError, match='needs --labels_file'):
    predict.run(npy, None, out, metadata_file=str(not_image), **kwargs)
  assert not os.path.exists(out)


def test_labels_file_must_match_the_classifier():
  with pytest.raises(ValueError, match='lists 3 synsets, the classifier has '
                     '4 classes'):
    predict.top_k_lines(np.zeros(4), ['a', 'b', 'c'])


def test_segment_features_weight_cells_by_pixels():
  # 4x4 pixels, 2x2 cells of 2x2 pixels. Segment 1: the top-left cell plus
  # one pixel of the top-right cell; segment 0: the rest.
  segments = np.zeros((4, 4), int)
  segments[:2, :2] = 1
  segments[0, 2] = 1
  cells = np.arange(4 * 3, dtype=np.float32).reshape(2, 2, 3)
  got = predict.segment_features(segments, cells)
  top_left, top_right = cells[0, 0], cells[0, 1]
  bottom_left, bottom_right = cells[1, 0], cells[1, 1]
  np.testing.assert_allclose(got[1], (4 * top_left + top_right) / 5)
  np.testing.assert_allclose(
      got[0], (3 * top_right + 4 * bottom_left + 4 * bottom_right) / 11)


def test_pca_colours():
  rng = np.random.default_rng(0)
  # Two groups of 5 rows apart along one direction, plus small noise.
  direction = rng.normal(size=16)
  features = np.concatenate([np.zeros((5, 16)), 10 * direction + np.zeros(
      (5, 16))]) + 0.01 * rng.normal(size=(10, 16))
  colours = predict.pca_colours(features)
  assert colours.shape == (10, 3)
  assert colours.min() >= 0 and colours.max() <= 1
  first = colours[:, 0]  # The first component separates the groups.
  assert np.ptp(first) == pytest.approx(1)
  assert abs(first[:5].mean() - first[5:].mean()) > 0.9
  np.testing.assert_array_equal(predict.pca_colours(np.ones((3, 4))), 0.5)
  np.testing.assert_array_equal(predict.pca_colours(np.ones((1, 4))), 0.5)


def test_cli_help_lists_every_flag():
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.predict', '--help'], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  for flag in ('npy', 'image', 'labels_file', 'imagenet_metadata_file',
               'output', 'image_size', 'fh_scale', 'fh_min_size',
               '[no]library_logs'):
    assert f'--{flag}' in result.stdout, flag


@pytest.mark.parametrize('depth,fmt', [(0, 'PNG'), (1, 'TIFF')])
def test_16_bit_and_float_images_are_read_scaled_to_8_bits(tmp_path, depth,
                                                            fmt):
  deep, gray = sample_data.deep_gray()[depth], sample_data.deep_gray()[2]
  path = str(tmp_path / f'deep.{fmt.lower()}')
  Image.fromarray(deep).save(path, fmt)
  pixels = predict.read_image(path)
  assert pixels.dtype == np.uint8 and pixels.shape == (*gray.shape, 3)
  for channel in range(3):
    np.testing.assert_array_equal(pixels[..., channel], gray)


def test_unwritable_output_is_one_line_before_any_work(tmp_path):
  blocker = tmp_path / 'a-file'
  blocker.write_text('')
  result = subprocess.run(
      [sys.executable, '-m', 'detcon.predict', f'--npy={tmp_path}/w.npy',
       f'--output={blocker}/out.png'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert (f'detcon.predict: error: --output={blocker}/out.png cannot be '
          'written (File exists)') in result.stderr
