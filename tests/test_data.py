"""The tf.data input pipeline (docs/method.md) on small real TFRecords."""

import os

import numpy as np
import pytest
import tensorflow as tf

from detcon import data, records
from tests.common import (
    FH_PARAMS,
    PHOTOS,
    photo,
    photo_example,
    write_records,
)

GRADIENT_SIZE = (72, 120)  # Height, width.


def _gradient(height, width):
  """Image whose pixels encode their position; mask id = y * width + x."""
  y, x = np.mgrid[:height, :width]
  image = np.stack([255 * x / (width - 1), 255 * y / (height - 1),
                    np.full(x.shape, 128.)], -1).round().astype(np.uint8)
  return image, (y * width + x)[None]


def _pretrain(paths, **kwargs):
  kwargs = dict(dict(per_device_batch=2, local_devices=1, image_size=48,
                     process_index=0, process_count=1), **kwargs)
  return data.make_pretrain_dataset(paths, **kwargs)


def _batches(ds, n):
  return [b for _, b in zip(range(n), ds.as_numpy_iterator(), strict=False)]


def test_hide_gpus_twice():
  data.hide_gpus_from_tf()
  data.hide_gpus_from_tf()
  assert not tf.config.get_visible_devices('GPU')


def test_find_and_count_shards(photos, tmp_path):
  directory, _ = photos
  paths = data.find_shards(directory, 'train')
  assert [os.path.basename(p) for p in paths] == [
      'train-00000-of-00002', 'train-00001-of-00002']
  assert data.count_records(paths) == len(PHOTOS)
  truncated = tmp_path / 'train-00000-of-00001'
  truncated.write_bytes(open(paths[0], 'rb').read()[:-3])
  with pytest.raises(ValueError, match='truncated'):
    data.count_records([str(truncated)])


def test_find_shards_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    data.find_shards(str(tmp_path / 'absent'), 'train')
  (tmp_path / 'validation-00000-of-00001').write_bytes(b'')
  assert data.find_shards(str(tmp_path), 'validation')
  with pytest.raises(FileNotFoundError, match='no train shards'):
    data.find_shards(str(tmp_path), 'train')
  with pytest.raises(ValueError, match='unknown split'):
    data.find_shards(str(tmp_path), 'test')
  for name in ('train-00000-of-00003', 'train-00002-of-00003'):
    (tmp_path / name).write_bytes(b'')
  with pytest.raises(ValueError, match='missing train-00001-of-00003'):
    data.find_shards(str(tmp_path), 'train')
  (tmp_path / 'train-00001-of-00004').write_bytes(b'')
  with pytest.raises(ValueError, match=r'sizes \[3, 4\]'):
    data.find_shards(str(tmp_path), 'train')
  (tmp_path / 'train-3-of-7').write_bytes(b'')
  with pytest.raises(ValueError, match='train-3-of-7'):
    data.find_shards(str(tmp_path), 'train')


def test_pretrain_batch_shapes_dtypes_labels(photos):
  directory, masks_by_label = photos
  paths = data.find_shards(directory, 'train')
  size, n_devices, per_device = 40, 2, 3
  ds = _pretrain(paths, per_device_batch=per_device, local_devices=n_devices,
                 image_size=size)
  seen = set()
  for batch in _batches(ds, 3):
    assert set(batch) == {'view1', 'view2', 'fh_segmentations1',
                          'fh_segmentations2', 'labels'}
    lead = (n_devices, per_device)
    for k in ('view1', 'view2'):
      assert batch[k].shape == (*lead, size, size, 3)
      assert batch[k].dtype == np.uint8  # Scaled on the device.
      assert batch[k].max() > batch[k].min()  # Pixels, not a constant.
    assert batch['labels'].shape == lead
    assert batch['labels'].dtype == np.int32
    for k in ('fh_segmentations1', 'fh_segmentations2'):
      assert batch[k].shape == (*lead, size, size, len(FH_PARAMS))
      assert batch[k].dtype == np.int32
    for d in range(n_devices):
      for b in range(per_device):
        label = int(batch['labels'][d, b])
        assert label in masks_by_label  # 0-based: record label - 1.
        seen.add(label)
        ids = set(np.unique(masks_by_label[label][0]))
        for k in ('fh_segmentations1', 'fh_segmentations2'):
          assert set(np.unique(batch[k][d, b, ..., 0])) <= ids
  assert len(seen) > len(PHOTOS) // 2

  ds = _pretrain(paths, image_size=size, fh_mask_to_use=1)
  batch = _batches(ds, 1)[0]
  assert batch['fh_segmentations1'].shape == (1, 2, size, size, 1)
  for b, label in enumerate(batch['labels'][0]):
    assert (set(np.unique(batch['fh_segmentations2'][0, b]))
            <= set(np.unique(masks_by_label[label][1])))


def test_seed_reproduces_and_raw_png_give_same_masks(tmp_path):
  examples = {'png': [], 'raw': []}
  for i, (name, h, w, _, _) in enumerate(PHOTOS[:3]):
    image, masks = photo(name, h, w)
    for encoding, items in examples.items():
      items.append(photo_example(image, masks, i + 1, encoding=encoding))
  paths = {e: [write_records(tmp_path / f'{e}-train-00000-of-00001', items)]
           for e, items in examples.items()}
  png = _batches(_pretrain(paths['png'], seed=3), 3)
  raw = _batches(_pretrain(paths['raw'], seed=3), 3)
  assert len(png) == len(raw) == 3
  other_seed = _batches(_pretrain(paths['png'], seed=4), 3)
  for a, b in zip(png, raw, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(a['view1'], c['view1'])
             for a, c in zip(png, other_seed, strict=True))


def test_views_and_masks_crop_and_flip_together(tmp_path):
  height, width = GRADIENT_SIZE
  image, masks = _gradient(height, width)
  paths = [write_records(tmp_path / f'train-0000{i}-of-00002',
                         [photo_example(image, masks, 2 * i + j + 1)
                          for j in range(2)])
           for i in range(2)]
  size = 40
  flips = []
  for batch in _batches(_pretrain(paths, per_device_batch=8,
                                  image_size=size), 2):
    for view, seg in (('view1', 'fh_segmentations1'),
                      ('view2', 'fh_segmentations2')):
      for img, ids in zip(batch[view][0], batch[seg][0, ..., 0], strict=True):
        ys, xs = ids // width, ids % width
        # A crop resized by nearest neighbour: rows and columns of the
        # source, each a single position, in order.
        assert (ys == ys[:, :1]).all() and (xs == xs[:1]).all()
        assert (np.diff(ys[:, 0]) >= 0).all()
        dx = np.diff(xs[0])
        flipped = bool((dx <= 0).all() and (dx < 0).any())
        assert flipped or (dx >= 0).all()
        flips.append(flipped)
        crop_area = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
        assert crop_area >= 0.07 * height * width
        # The image pixels carry their source position: they must agree
        # with the mask's, up to JPEG and resampling offsets (< 1 source
        # pixel, i.e. < 255 / 71 levels of G); a flip of only one of them
        # would be off by up to 255 levels.
        expected = np.stack([xs / (width - 1), ys / (height - 1)], -1)
        error = np.abs(img[1:-1, 1:-1, :2] / 255 - expected[1:-1, 1:-1])
        assert error.max() < 6 / 255
        assert error.mean() < 2.5 / 255
  assert 0 < sum(flips) < len(flips)


def _windows(height, width, n=3000):
  fn = tf.function(lambda seeds: tf.map_fn(
      lambda s: data.sample_crop_window(s, height, width), seeds))
  seeds = tf.stack([tf.range(n), tf.fill([n], 7)], 1)
  return fn(seeds).numpy()


def test_crop_window_statistics():
  height, width = 800, 1000
  y, x, h, w = _windows(height, width).T
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  unclipped = (h < height) & (w < width)
  assert unclipped.mean() > 0.5
  area = (h * w / (height * width))[unclipped]
  aspect = (w / h)[unclipped]
  rounding = 1 / np.sqrt(0.08 * height * width * 0.75)  # Relative, < 0.5%.
  assert area.min() >= 0.08 * (1 - 2 * rounding) and area.max() <= 1
  assert area.min() < 0.1 and area.max() > 0.8
  assert aspect.min() >= 3 / 4 * (1 - 2 * rounding)
  assert aspect.max() <= 4 / 3 * (1 + 2 * rounding)
  assert aspect.min() < 0.77 and aspect.max() > 1.3
  # Windows under 45% of the area were never clipped, whatever their aspect
  # (clipping needs a side over 800 px): there log-aspect is uniform, with
  # mean 0 (that of log 3/4 and log 4/3) and std 0.575 / sqrt(12).
  log_aspect = np.log(aspect[area < 0.45])
  assert abs(log_aspect.mean()) < 4 * 0.166 / np.sqrt(len(log_aspect))
  # Offsets spread uniformly over the free range.
  room = (height - h) > 10
  assert abs((y[room] / (height - h[room])).mean() - 0.5) < 0.05
  # Tiny and thin images: windows stay inside and are never empty.
  for height, width in ((1, 1), (3, 40), (40, 3)):
    y, x, h, w = _windows(height, width, n=300).T
    assert (h >= 1).all() and (w >= 1).all()
    assert (y + h <= height).all() and (x + w <= width).all()
    assert (y >= 0).all() and (x >= 0).all()


def test_center_crop_geometry_and_one_pass(tmp_path):
  # (height, width, encoding, tolerance): PNG is lossless, so a window one
  # pixel off (>= 255 / 119 levels) fails; JPEG adds a few levels of noise.
  cases = ((72, 120, 'png', 1 / 255), (120, 72, 'png', 1 / 255),
           (72, 120, 'jpeg', 6 / 255))
  path = write_records(tmp_path / 'validation-00000-of-00001',
                       [photo_example(_gradient(h, w)[0], None, i + 1, fmt=fmt,
                                      masks_bytes=b'')
                        for i, (h, w, fmt, _) in enumerate(cases)])
  size = 32
  ds = data.make_eval_dataset([path], batch_size=2, image_size=size,
                              process_index=0, process_count=1)
  batches = list(ds.as_numpy_iterator())
  assert [len(b['labels']) for b in batches] == [2, 1]
  images = np.concatenate([b['images'] for b in batches])
  assert images.dtype == np.float32 and images.shape[1:] == (size, size, 3)
  np.testing.assert_array_equal(
      np.concatenate([b['labels'] for b in batches]), [0, 1, 2])
  for image, (height, width, _, atol) in zip(images, cases, strict=True):
    side = int(size / (size + 32) * min(height, width))
    y0, x0 = (height - side + 1) // 2, (width - side + 1) // 2
    # Source position of each output pixel centre (half-pixel convention);
    # bicubic reproduces the linear gradient away from the crop border.
    pos = (np.arange(size) + 0.5) * side / size - 0.5
    expected_x = np.broadcast_to((x0 + pos) / (width - 1), (size, size))
    expected_y = np.broadcast_to((y0 + pos)[:, None] / (height - 1),
                                 (size, size))
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(image[..., 0][inner], expected_x[inner],
                               atol=atol)
    np.testing.assert_allclose(image[..., 1][inner], expected_y[inner],
                               atol=atol)


def test_eval_random_mode(photos):
  directory, _ = photos
  ds = data.make_eval_dataset(data.find_shards(directory, 'train'),
                              batch_size=4, image_size=24, mode='random',
                              process_index=0, process_count=1)
  batches = _batches(ds, 4)  # More images than records: it repeats.
  assert len(batches) == 4
  for batch in batches:
    assert batch['images'].shape == (4, 24, 24, 3)
    assert batch['images'].dtype == np.float32
    assert 0 <= batch['images'].min() and batch['images'].max() <= 1
    assert set(batch['labels']) <= set(range(len(PHOTOS)))
  with pytest.raises(ValueError, match='unknown eval mode'):
    data.make_eval_dataset([directory], batch_size=1, mode='crop')


def test_split_over_processes(photos):
  directory, _ = photos
  paths = data.find_shards(directory, 'train')
  half = len(PHOTOS) // 2

  def labels(index, count):
    ds = data.make_eval_dataset(paths, batch_size=8, image_size=8,
                                process_index=index, process_count=count)
    return [int(v) for b in ds.as_numpy_iterator() for v in b['labels']]

  # Files over processes: each process reads its own file.
  assert sorted(labels(0, 2)) == list(range(half))
  assert sorted(labels(1, 2)) == list(range(half, len(PHOTOS)))
  # More processes than files: records are split, each read once.
  split = [labels(i, 4) for i in range(4)]
  assert sorted(sum(split, [])) == list(range(len(PHOTOS)))


def _bad_records(tmp_path, name, bad, first_ok):
  image, masks = photo('chelsea', 60, 90)
  good = photo_example(image, masks, 1)
  items = [good, bad] if first_ok else [bad, good]
  return [write_records(tmp_path / f'{name}-train-00000-of-00001', items)]


def _check_fails(tmp_path, name, bad, match):
  """Fails eagerly on a bad first record, and in the pipeline later on."""
  with pytest.raises(ValueError, match=match):
    data.check_dataset(_bad_records(tmp_path, name, bad, first_ok=False))
  paths = _bad_records(tmp_path, name + '-late', bad, first_ok=True)
  data.check_dataset(paths)
  with pytest.raises(tf.errors.InvalidArgumentError, match=match):
    _batches(_pretrain(paths), 2)


def test_error_record_without_masks(tmp_path):
  image = photo('coffee', 50, 70)[0]
  bad = photo_example(image, None, 2, masks_bytes=b'')
  _check_fails(tmp_path, 'nomask', bad, 'without FH masks.*generate_fh_masks')


def test_error_mask_size_differs(tmp_path):
  image = photo('coffee', 40, 100)[0]
  # As many pixels as the image (4000), and a height that divides its own:
  # only the PNG width tells the shapes apart.
  png = photo_example(image, np.zeros((1, 80, 50), np.int32), 2)
  _check_fails(tmp_path, 'png', png, 'mask size differs.*generate_fh_masks')
  raw = photo_example(image, np.zeros((1, 40, 99), np.int32), 2, encoding='raw')
  _check_fails(tmp_path, 'raw', raw, 'mask size differs')


def test_error_bad_header_label_and_mask_index(tmp_path):
  image, masks = photo('coffee', 40, 100)
  cases = (
      ('size', photo_example(image, masks[:, :, :50], 2, size=(40, 50)),
       'image/height, image/width differ'),
      ('label', photo_example(image, masks, -1), r'>= 0 \(1-based classes'),
  )
  for name, bad, match in cases:
    with pytest.raises(ValueError, match=match):
      data.check_dataset(_bad_records(tmp_path, name, bad, first_ok=False))
  paths = [write_records(tmp_path / 'ok-train-00000-of-00001',
                         [photo_example(image, masks, 1)])]
  with pytest.raises(ValueError, match='fh_mask_to_use'):
    _pretrain(paths, fh_mask_to_use=len(FH_PARAMS))
  with pytest.raises(ValueError, match='no records'):
    data.check_dataset([write_records(tmp_path / 'empty', [])])


# Mask sources (docs/method.md, Variants) and records without a class.


def _grid_reference(height, width, n):
  """The n x n grid drawn from its definition: row r spans pixel rows
  [ceil(r H / n), ceil((r + 1) H / n)), columns likewise, id r n + c."""
  out = np.zeros((height, width), np.int64)
  for r in range(n):
    for c in range(n):
      y0, y1 = -(-r * height // n), -(-(r + 1) * height // n)
      x0, x1 = -(-c * width // n), -(-(c + 1) * width // n)
      out[y0:y1, x0:x1] = r * n + c
  return out


def _with_source(example, source):
  example.features.feature[records.MASK_SOURCE_KEY].bytes_list.value.append(
      source.encode())
  return example


@pytest.mark.parametrize('height,width,n', [(90, 140, 4), (7, 11, 3),
                                            (2, 5, 4)])
def test_grid_masks_partition_the_image(height, width, n):
  got = data.grid_masks(height, width, n).numpy()
  assert got.shape == (height, width, 1) and got.dtype == np.int32
  np.testing.assert_array_equal(got[..., 0], _grid_reference(height, width,
                                                             n))


def test_grid_views_equal_fh_views_of_the_drawn_grid(tmp_path):
  """Records whose FH mask is the grid, read as 'fh', equal records without
  masks (or with other masks) read as 'grid': same crops, flips, resizing."""
  n = 3
  drawn, bare, other = [], [], []
  for i, (name, h, w, fmt, encoding) in enumerate(PHOTOS):
    image, fh = photo(name, h, w)
    grid = _grid_reference(h, w, n)[None]
    drawn.append(photo_example(image, grid, i + 1, fmt=fmt, encoding=encoding))
    bare.append(photo_example(image, None, i + 1, fmt=fmt, masks_bytes=b''))
    other.append(_with_source(photo_example(image, fh, i + 1, fmt=fmt), 'slic'))
  paths = {k: [write_records(tmp_path / f'{k}-train-00000-of-00001', v)]
           for k, v in (('drawn', drawn), ('bare', bare), ('other', other))}
  kwargs = dict(per_device_batch=3, image_size=32, seed=5)
  want = _batches(_pretrain(paths['drawn'], masks='fh', **kwargs), 3)
  assert want[0]['fh_segmentations1'].shape == (1, 3, 32, 32, 1)
  for key in ('bare', 'other'):
    got = _batches(_pretrain(paths[key], masks='grid', grid_size=n,
                             **kwargs), 3)
    for a, b in zip(want, got, strict=True):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f'{key} {k}')
  # Crops of a 3 x 3 grid: several rectangles in some views, never a 10th id.
  ids = np.concatenate([b['fh_segmentations1'].ravel() for b in want])
  assert set(np.unique(ids)) <= set(range(n * n))
  assert len(np.unique(ids)) > 3
  with pytest.raises(ValueError, match='grid_size=0'):
    _pretrain(paths['bare'], masks='grid', grid_size=0)


def test_mask_source_must_match_config(tmp_path):
  image, masks = photo('chelsea', 60, 90)
  path = write_records(tmp_path / 'train-00000-of-00001',
                       [_with_source(photo_example(image, masks, 1), 'slic')])
  with pytest.raises(ValueError, match=r"made by 'slic'.*--config.masks=slic"):
    data.check_dataset([path], masks='fh')
  assert data.check_dataset([path], masks='slic')['mask_source'] == 'slic'
  assert data.check_dataset([path], masks='grid')['mask_source'] == 'slic'
  batch = _batches(_pretrain([path], per_device_batch=1, masks='slic'), 1)[0]
  assert set(np.unique(batch['fh_segmentations1'])) <= set(np.unique(masks))
  with pytest.raises(ValueError, match='use one of fh, slic, ground_truth, '
                     'grid'):
    data.check_dataset([path], masks='mcg')
  # Records without the feature (the original release's) are accepted.
  old = write_records(tmp_path / 'old-train-00000-of-00001',
                      [photo_example(image, masks, 1)])
  assert data.check_dataset([old], masks='ground_truth') == dict(
      path=old, label=0, mask_source=None)


def test_records_without_a_class_give_label_minus_one(tmp_path):
  image, masks = photo('coffee', 50, 70)
  path = write_records(tmp_path / 'train-00000-of-00001',
                       [photo_example(image, masks, 0),
                        photo_example(image, masks, 2)])
  assert data.check_dataset([path])['label'] == -1
  batch = _batches(data.make_eval_dataset([path], batch_size=2, image_size=8,
                                          process_index=0, process_count=1),
                   1)[0]
  np.testing.assert_array_equal(batch['labels'], [-1, 1])
