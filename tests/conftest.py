"""Fixtures shared by several test modules (built once per session)."""

import pytest

from detcon import sample_data
from tests.test_main_loop import python


@pytest.fixture(scope='session')
def records(tmp_path_factory):
  """12 train records of real photos (3 classes), in two shards each of our
  PNG layout (`records['png']`) and the original raw one (`['raw']`),
  written by the mask script."""
  root = tmp_path_factory.mktemp('e2e')
  sample_data.make_imagenet_folder(str(root / 'train'), num_classes=3,
                                   images_per_class=4, min_side=64,
                                   max_side=128)
  out = {}
  for encoding in ('png', 'raw'):
    out[encoding] = str(root / f'records-{encoding}')
    result = python('generate_fh_masks_for_imagenet.py',
                    f'--train_directory={root / "train"}',
                    f'--output_directory={out[encoding]}', '--train_shards=2',
                    '--num_threads=2', '--fh_scales=100', '--fh_min_sizes=50',
                    f'--mask_encoding={encoding}')
    assert result.returncode == 0, result.stderr[-3000:]
  return out
