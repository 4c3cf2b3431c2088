r"""Time of the weighted k-NN classifier (`detcon.evaluators.knn`).

Classifies random queries against a random bank of L2-normalised features
(the cost does not depend on the values), k=20, T=0.07, 1000 classes, for a
few query chunk sizes; prints the compile time, the median wall time of a
call (after a warm-up call) and the throughput, beside the machine.

  python -m bench.bench_knn --bank=50000 --queries=10000 --dim=2048
"""

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from bench import machine
from detcon.evaluators import knn

_BANK = flags.DEFINE_integer('bank', 50_000, 'Bank entries N.')
_QUERIES = flags.DEFINE_integer('queries', 10_000, 'Queries M.')
_DIM = flags.DEFINE_integer('dim', 2048, 'Feature dimension D.')
_CLASSES = flags.DEFINE_integer('classes', 1000, 'Classes C.')
_CHUNKS = flags.DEFINE_list('chunk_sizes', ['128', '512'],
                            'Query chunk sizes to time.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per chunk size.')


def main(argv):
  del argv
  print(machine.describe())
  print(machine.describe_jax())
  rng = np.random.default_rng(0)
  bank = jax.device_put(rng.normal(size=(_BANK.value, _DIM.value))
                        .astype(np.float32))
  labels = jax.device_put(rng.integers(0, _CLASSES.value, _BANK.value))
  queries = jax.device_put(rng.normal(size=(_QUERIES.value, _DIM.value))
                           .astype(np.float32))
  print(f'bank {_BANK.value} x {_DIM.value}, {_QUERIES.value} queries, '
        f'{_CLASSES.value} classes, k={knn.DEFAULT_K}')
  for chunk_size in map(int, _CHUNKS.value):
    def call(chunk_size=chunk_size):
      return knn.knn_predict(bank, labels, queries, _CLASSES.value,
                             chunk_size=chunk_size).block_until_ready()
    start = time.perf_counter()
    call()  # Compiles, then runs once.
    first = time.perf_counter() - start
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      call()
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f'chunk_size {chunk_size}: first call (compile + run) '
          f'{first:.2f} s, median of {len(times)} calls {median:.2f} s '
          f'({_QUERIES.value / median:,.0f} queries/s; similarities held '
          f'{4 * chunk_size * _BANK.value / 2**20:.0f} MiB)')


if __name__ == '__main__':
  app.run(main)
