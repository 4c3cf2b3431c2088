"""The pretraining views against the previous implementation's (issue 22).

`tests.reference.pretrain_views` decodes each view's window separately and
keeps the masks int32 throughout, one step at a time; the pipeline decodes
both views from one decode of their union window and resizes the masks as
uint16. On the mask script's records (real photos, real FH masks) the masks
must be equal bit for bit.

The images are equal too, except next to the crop's left and right edges:
libjpeg-turbo's cropped decode (`tf.io.decode_and_crop_jpeg`) gets the first
and last column of a window wrong by up to ~20 grey levels when the image
goes on beyond them (it upsamples the subsampled chroma without the
neighbouring column), and the previous path decoded each view's window, the
pipeline only the union, whose pixels are those of the whole image there.
So the output columns whose bicubic taps (4 source columns) reach the
crop's first or last source column may differ, by less than `EDGE_LEVELS`;
every other pixel must be within one grey level (the pipeline's views are
bytes, the bicubic resize rounded: half a grey level from the reference's
float32 at most, where the decodes agree).
"""

import numpy as np
import pytest

from detcon import data, record_order
from tests import reference

IMAGE_SIZE = 64
SEED = 7
BATCH = 4
EDGE_LEVELS = 48  # Grey levels, in the columns next to the crop's edges.


def _edge_columns(width, size=IMAGE_SIZE):
  """bool `[S]`: the output columns that sample the crop's first or last
  column (symmetric, so the same whether the view is flipped or not)."""
  source = np.floor((np.arange(size) + 0.5) * width / size - 0.5)
  return (source - 1 <= 0) | (source + 2 >= width - 1)


@pytest.mark.parametrize('encoding', ['png', 'raw'])
def test_views_equal_the_previous_implementation(records, encoding):
  paths = data.find_shards(records[encoding], 'train')
  offsets = data.record_offsets_per_file(paths)
  index = record_order.RecordIndex.from_offsets(paths, offsets)
  order = record_order.Order(index.num_records, seed=SEED, process_index=0,
                             process_count=1)
  reader = record_order.Reader(index)
  ds = data.make_pretrain_dataset(
      paths, per_device_batch=BATCH, local_devices=1, image_size=IMAGE_SIZE,
      fh_mask_to_use=0, seed=SEED, process_index=0, process_count=1,
      record_offsets=offsets)
  batches = ds.take(5).as_numpy_iterator()  # 20 elements: > 12 records.
  inner = edge = 0.
  for step, batch in enumerate(batches):
    for i in range(BATCH):
      k = step * BATCH + i
      want = reference.pretrain_views(
          reader.read(order.record(k)), seed=SEED, process_index=0, k=k,
          image_size=IMAGE_SIZE)
      for view in (1, 2):
        masks = batch[f'fh_segmentations{view}'][0, i]
        assert masks.dtype == np.int32
        np.testing.assert_array_equal(masks, want[f'fh_segmentations{view}'])
        image = batch[f'view{view}'][0, i]
        assert image.dtype == np.uint8
        error = np.abs(image - want[f'view{view}'] * 255).max((0, 2))
        near = _edge_columns(want[f'window{view}'][3])
        inner = max(inner, error[~near].max())
        edge = max(edge, error[near].max())
  assert inner <= 1, f'images differ by {inner:.3f} grey levels'
  assert edge < EDGE_LEVELS, f'edge columns differ by {edge:.1f} levels'
