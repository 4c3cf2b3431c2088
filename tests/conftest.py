"""Fixtures shared by several test modules (built once per session).

The session compiles the same small networks many times, in this process
and in the commands the end-to-end tests start. One JAX persistent
compilation cache lets every compile after the first of a program be read
back (XLA's own cache, keyed by the program, the compiler options and the
JAX version, so what runs is unchanged). It is a folder of the virtualenv
running the suite, kept from one session to the next: a later session of
the same environment reads back what an earlier one compiled, and a new
environment starts with none (`_environment_cache`). Subprocesses inherit
it through the environment; it is set here, before anything imports JAX.

`bash test.sh` runs the suite in parallel worker processes (pytest-xdist).
The workers inherit the cache folder from the process that starts them, and
each expensive fixture is built once by whichever worker asks first, under a
file lock, and read back by the others (`_once`).
"""

import fcntl
import gc
import os
import pickle
import shutil
import sys
import tempfile

# A kept cache that has grown past this (old programs of earlier code; one
# whole session adds about 40 MB) is emptied when a session starts.
_CACHE_LIMIT_BYTES = 500 * 2**20


def _environment_cache():
  """(folder, kept): the compilation cache of the virtualenv running the
  suite, made if missing, emptied first once over `_CACHE_LIMIT_BYTES`;
  outside a virtualenv, or where it is read-only, a new temporary folder
  removed when the session ends (kept False)."""
  if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
    return tempfile.mkdtemp(prefix='detcon_test_jax_cache_'), False
  folder = os.path.join(sys.prefix, 'detcon-test-jax-cache')
  size = sum(entry.stat().st_size for entry in os.scandir(folder)
             if entry.is_file()) if os.path.isdir(folder) else 0
  if size > _CACHE_LIMIT_BYTES:
    shutil.rmtree(folder)
  os.makedirs(folder, exist_ok=True)
  return folder, True


# The first process of the session (the only one, or xdist's controller)
# picks the cache; workers and subprocesses find it in the environment.
_OWN_CACHE = _CACHE_KEPT = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _OWN_CACHE, _CACHE_KEPT = _environment_cache()
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# XLA's CPU backend at optimisation level 0 (LLVM's cheap passes only), its
# elementwise fusions emitted by the older direct LLVM emitter instead of
# the MLIR fusion emitters, and no reductions handed to YNNPACK (an empty
# list of YNN fusion types): the suite's small programs compile in about
# half the time, a cached program loads in two thirds of the time, and
# they run slower, which these few-step tests gain from. The results
# differ from the defaults' only in float rounding; every comparison in the
# suite is between runs of this same setting or against a tolerance. The
# smoke run in test.sh, the quick demo (`_quick_demo`) and every command
# outside the suite compile at XLA's defaults.
# Subprocesses inherit it; tests that add XLA flags keep it
# (`common.two_devices_env`).
_FAST_COMPILE = ('--xla_backend_optimization_level=0 '
                 '--xla_cpu_use_fusion_emitters=false '
                 '--xla_cpu_experimental_ynn_fusion_type=')
if _FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip())

import pytest  # noqa: E402

from detcon import sample_data  # noqa: E402
from tests import common  # noqa: E402


def _once(tmp_path_factory, name, build):
  """`build(folder)`'s result, built once per session even across workers.

  Args:
    tmp_path_factory: pytest's session temporary-folder factory.
    name: the folder's name (one per fixture).
    build: called with a new empty folder; returns a picklable result.

  Under pytest-xdist the folder lies in the temporary folder all workers
  share; the first worker to take the lock builds, the others wait and read
  its pickled result. A build that fails is retried by the next worker.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  folder, done = root / name, root / f'{name}.pickle'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      done.write_bytes(pickle.dumps(build(folder)))
    return pickle.loads(done.read_bytes())


def _records(root):
  out = {}
  sample_data.make_imagenet_folder(str(root / 'train'), num_classes=3,
                                   images_per_class=4, min_side=64,
                                   max_side=128)
  for encoding in ('png', 'raw'):
    out[encoding] = str(root / f'records-{encoding}')
    result = common.python(
        'generate_fh_masks_for_imagenet.py',
        f'--train_directory={root / "train"}',
        f'--output_directory={out[encoding]}', '--train_shards=2',
        '--num_threads=2', '--fh_scales=100', '--fh_min_sizes=50',
        f'--mask_encoding={encoding}')
    assert result.returncode == 0, result.stderr[-3000:]
  return out


@pytest.fixture(scope='session')
def records(tmp_path_factory):
  """12 train records of real photos (3 classes), in two shards each of our
  PNG layout (`records['png']`) and the original raw one (`['raw']`),
  written by the mask script."""
  return _once(tmp_path_factory, 'e2e', _records)


@pytest.fixture(scope='session')
def pretrained_run(records, tmp_path_factory):
  """One pretraining run on `records['png']` with `common.TINY`, from step 0
  to `common.PRETRAINED_STEPS`, saving after every step (the last three
  kept): (checkpoint folder, the run's stderr). The tests of what a run
  writes read it; resumed runs must end bitwise equal to it. Tests that
  train on from it work on a copy."""

  def build(folder):
    ckpt = folder / 'ckpt'
    result = common.python(*common.pretrain_args(
        records['png'], ckpt, '--save_checkpoint_interval=0'))
    assert result.returncode == 0, result.stderr[-3000:]
    return str(ckpt), result.stderr

  return _once(tmp_path_factory, 'pretrained', build)


def _photos(directory):
  examples, masks_by_label = [], {}
  for i, (name, h, w, fmt, encoding) in enumerate(common.PHOTOS):
    image, masks = common.photo(name, h, w)
    masks_by_label[i] = masks
    examples.append(common.photo_example(image, masks, i + 1, fmt=fmt,
                                         encoding=encoding))
  half = len(examples) // 2
  common.write_records(directory / 'train-00000-of-00002', examples[:half])
  common.write_records(directory / 'train-00001-of-00002', examples[half:])
  return str(directory), masks_by_label


@pytest.fixture(scope='session')
def photos(tmp_path_factory):
  """Two train shards of `common.PHOTOS` (real photos, FH masks in both
  layouts): (folder, {0-based label: the record's `[2, H, W]` masks})."""
  return _once(tmp_path_factory, 'photos', _photos)


def _quick_demo(folder):
  out = folder / 'out'
  # At XLA's default level: the demo's reduced run computes more than it
  # compiles (ResNet-18 at full width), 81 s instead of 99 s alone here.
  flags = os.environ['XLA_FLAGS'].replace(_FAST_COMPILE, '').strip()
  result = common.python('-m', 'detcon.demo', '--quick', f'--output_dir={out}',
                         env=dict(os.environ, XLA_FLAGS=flags))
  assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
  return str(out), result


@pytest.fixture(scope='session')
def quick_demo(tmp_path_factory):
  """`python -m detcon.demo --quick`, run once per session: (output folder,
  its finished process). Its checkpoint, records and scenes are read by the
  demo's tests and by the evaluation and export tests."""
  return _once(tmp_path_factory, 'demo', _quick_demo)


# The modules that take longest (end-to-end runs that start pretraining
# processes), slowest first, from `pytest --durations=0` on the 2-core
# development machine (2026-12-07). xdist hands each worker whole modules
# in collection order (test.sh: --dist loadfile --no-loadscope-reorder), so
# starting with these leaves short modules for the end instead of one long
# module running alone. A stale list costs time, never a test.
_SLOWEST_FIRST = ('test_exact_resume.py', 'test_train.py',
                  'test_two_process_resume.py', 'test_demo.py',
                  'test_main_loop.py', 'test_generate_fh_masks.py',
                  'test_train_evals.py', 'test_released.py',
                  'test_dense_study.py', 'test_backbone.py',
                  'test_linear_eval.py')


def pytest_collection_modifyitems(session, config, items):
  """Runs the modules of `_SLOWEST_FIRST` first, in that order."""
  del session, config
  rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_sessionfinish(session, exitstatus):
  """Ends the compilation cache this process picked, if it picked one, and
  spares the process's exit the last garbage collection (`cli.run`).

  The environment's cache is kept only after a session that passed: after
  a failure or an interrupt it is removed, so that an entry a killed
  process left half-written cannot outlive the session that made it.
  """
  del session
  if _OWN_CACHE is not None and not (_CACHE_KEPT
                                     and exitstatus == pytest.ExitCode.OK):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
  gc.freeze()
