"""Fixtures shared by several test modules (built once per session).

The session compiles the same small networks many times, in this process
and in the commands the end-to-end tests start. One JAX persistent
compilation cache, in a fresh folder of this session, lets every compile
after the first of a program be read back (XLA's own cache, keyed by the
program and the compiler options, so what runs is unchanged). Subprocesses
inherit it through the environment; it is set here, before anything
imports JAX.
"""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix='detcon_test_jax_cache_')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

from detcon import sample_data  # noqa: E402
from tests.test_main_loop import python  # noqa: E402


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


def pytest_sessionfinish(session, exitstatus):
  """Removes this session's compilation cache."""
  del session, exitstatus
  shutil.rmtree(_CACHE, ignore_errors=True)
