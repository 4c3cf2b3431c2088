"""The pretraining views against the previous implementation's (issue 22).

`tests.reference.pretrain_views` decodes each view's window separately and
keeps the masks int32 throughout, one step at a time; the pipeline decodes
both views from one decode of their union window and resizes the masks as
uint16. On the mask script's records (real photos, real FH masks) the masks
must be equal bit for bit and the images within one grey level.
"""

import numpy as np
import pytest

from detcon import data, record_order
from tests import reference

IMAGE_SIZE = 64
SEED = 7
BATCH = 4


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
  worst = 0.
  for step, batch in enumerate(batches):
    for i in range(BATCH):
      k = step * BATCH + i
      want = reference.pretrain_views(
          reader.read(order.record(k)), seed=SEED, process_index=0, k=k,
          image_size=IMAGE_SIZE)
      for key in ('fh_segmentations1', 'fh_segmentations2'):
        assert batch[key].dtype == np.int32
        np.testing.assert_array_equal(batch[key][0, i], want[key])
      for key in ('view1', 'view2'):
        assert batch[key].dtype == np.float32
        worst = max(worst, np.abs(batch[key][0, i] - want[key]).max())
  assert worst <= 1 / 255, f'images differ by {worst * 255:.3f} grey levels'
