"""The mask workers' shared memory budget, with real processes.

The worker function is at module level so that spawned processes import it.
"""

import multiprocessing
import os
import subprocess
import sys
import time

from detcon import memory_budget

TOTAL = 100


def _hold(budget, name, num_bytes, start_after, hold_s, log):
  """Waits `start_after` s, holds `num_bytes` for `hold_s` s; logs times.

  Both times are taken inside the reservation, so 'out' precedes every entry
  that needed these bytes back, whatever the processes' scheduling.
  """
  time.sleep(start_after)
  with budget.reserve(num_bytes):
    log.put((name, 'in', time.monotonic(), budget.used))
    time.sleep(hold_s)
    log.put((name, 'out', time.monotonic(), None))
    time.sleep(0.01)  # The 'out' time is strictly before the release.


def _run(requests):
  """Runs one process per (name, bytes, start_after, hold_s).

  Returns: {name: entry time}, {name: leave time}, {name: bytes reserved
  just after its entry}.
  """
  ctx = multiprocessing.get_context('spawn')
  budget = memory_budget.MemoryBudget(ctx, TOTAL)
  log = ctx.Queue()
  procs = [ctx.Process(target=_hold, args=(budget, *r, log))
           for r in requests]
  for p in procs:
    p.start()
  events = [log.get(timeout=60) for _ in range(2 * len(requests))]
  for p in procs:
    p.join(timeout=60)
    assert p.exitcode == 0
  return ({name: t for name, kind, t, _ in events if kind == 'in'},
          {name: t for name, kind, t, _ in events if kind == 'out'},
          {name: used for name, kind, _, used in events if kind == 'in'})


def test_reservations_that_do_not_fit_together_never_overlap():
  # a and b fit together; c does not fit beside them; huge exceeds the total.
  requests = [('a', 40, 0.0, 1.0), ('b', 40, 0.1, 1.0), ('c', 60, 0.3, 0.5),
              ('huge', 500, 0.5, 0.5)]
  enter, leave, used = _run(requests)
  assert max(used.values()) <= TOTAL  # Never more reserved than the budget.
  assert enter['b'] < leave['a']  # Both fit: they ran side by side.
  assert enter['c'] >= min(leave['a'], leave['b'])  # Only with room for 60.
  # Over the total: alone, after every earlier request, before none later.
  others = [n for n in enter if n != 'huge']
  assert all(enter['huge'] >= leave[n] for n in others)


def test_requests_are_served_in_order_so_a_large_one_is_not_starved():
  # 'big' (90) waits for 'a' (30) to finish; 'small' (10) came after 'big'
  # and would fit beside 'a', but waits its turn behind 'big'.
  requests = [('a', 30, 0.0, 1.0), ('big', 90, 0.2, 0.5),
              ('small', 10, 0.5, 0.2)]
  enter, leave, used = _run(requests)
  assert enter['big'] >= leave['a']
  assert enter['small'] >= leave['a']  # It would have fitted beside 'a'.
  # It entered beside 'big' (90 + 10 reserved), not before it.
  assert used['small'] == TOTAL


def test_the_fh_estimate_bounds_the_measured_peak():
  width, height = 1000, 750
  # The peak over the memory before FH: Linux's high-water mark, reset
  # first (clear_refs 5), less the resident memory then.
  code = f"""if True:
    import numpy as np
    from PIL import Image
    from skimage import data, segmentation
    from detcon import record_writer

    def status(key):
      with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

    record_writer.keep_freed_memory()
    photo = Image.fromarray(data.astronaut()).resize(({width}, {height}))
    pixels = np.asarray(photo)
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    before = status('VmRSS:')
    masks = np.stack([segmentation.felzenszwalb(pixels, scale=s, min_size=m)
                      for s, m in ((1000, 1000), (100, 50))])
    print(status('VmHWM:') - before)
  """
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300, check=True)
  peak = int(result.stdout.split()[-1])
  estimate = memory_budget.mask_bytes(width, height, 'fh', num_masks=2)
  # An upper bound, and not a wasteful one.
  assert 0.7 * estimate < peak <= estimate, (peak, estimate)


def test_machine_memory_is_positive_and_at_most_physical():
  physical = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  assert 0 < memory_budget.machine_memory_bytes() <= physical
