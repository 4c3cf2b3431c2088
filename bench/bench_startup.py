r"""What a command pays before its first step: import times of a fresh process.

Every command, and each of the suite's end-to-end tests, starts a Python
process that imports JAX (and TensorFlow, for tf.data, when it reads
records). This prints, for each import, the median over `--runs` fresh
interpreters of the seconds it takes after `import numpy`, and the versions
that gave them:

- `ml_dtypes` (bfloat16 and friends for NumPy; JAX and TensorFlow both
  import it first);
- `jax` (ml_dtypes included);
- `detcon.main_loop`: what a pretraining run on mock data imports;
- `detcon.main_loop` and `tensorflow`: what a run on records imports, as it
  is and with TensorFlow's eager Keras import skipped (`TF_USE_LEGACY_KERAS=1`
  without the `tf_keras` package: TensorFlow then fails to find Keras and
  goes on; nothing here uses Keras), in the same run.

  python -m bench.bench_startup --runs=5
"""

import importlib.metadata
import os
import statistics
import subprocess
import sys

from absl import app, flags

from bench import machine
from detcon.tools import commands

_RUNS = flags.DEFINE_integer('runs', 5, 'Fresh interpreters per import.')

# (label, the timed imports, extra environment).
_RECORDS_RUN = 'detcon.main_loop, tensorflow'
_CASES = (
    ('ml_dtypes', 'ml_dtypes', {}),
    ('jax', 'jax', {}),
    ('detcon.main_loop', 'detcon.main_loop', {}),
    ('+ tensorflow', _RECORDS_RUN, {}),
    ('+ tensorflow, Keras skipped', _RECORDS_RUN,
     {'TF_USE_LEGACY_KERAS': '1'}),
)


def import_seconds(modules: str, env: dict[str, str]) -> float:
  """Seconds `import modules` takes in a fresh interpreter after NumPy."""
  code = ('import time\nimport numpy\nstart = time.perf_counter()\n'
          f'import {modules}\nprint(time.perf_counter() - start)')
  result = subprocess.run(
      [sys.executable, '-c', code], capture_output=True, text=True,
      check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', **env),
      cwd=commands.REPO)
  return float(result.stdout.strip().splitlines()[-1])


def installed_versions(names) -> str:
  """E.g. 'numpy 2.4.6, jax 0.10.2' for those of `names` that are installed."""
  versions = []
  for name in names:
    try:
      versions.append(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
      pass
  return ', '.join(versions)


def main(argv):
  del argv
  print(machine.describe())
  print(installed_versions(('numpy', 'ml-dtypes', 'jax', 'tensorflow-cpu',
                            'tensorflow', 'keras')))
  print(f'median of {_RUNS.value} fresh interpreters, seconds:')
  for label, modules, env in _CASES:
    times = [import_seconds(modules, env) for _ in range(_RUNS.value)]
    print(f'  {label:<28} {statistics.median(times):6.2f}  '
          f'(min {min(times):.2f}, max {max(times):.2f})')


if __name__ == '__main__':
  app.run(main)
