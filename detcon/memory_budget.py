"""A memory budget that worker processes share, first come first served.

The mask script's workers make one image's masks at a time. Felzenszwalb
needs about 330-380 bytes per pixel at its peak (SLIC about 120-190;
`bench/bench_mask_memory.py` measures it), so an ImageNet image (about 0.2
megapixels) takes some 70 MB, but one 6000x4000 photo takes 8-9 GB, and a
few workers meeting such photos at once exhaust a machine. Each worker
therefore reserves its image's estimate (`mask_bytes`) before decoding it
and gives it back once the masks are encoded. Requests are served in the
order they came: one that does not fit waits, and the requests behind it
wait too, so a large image is not starved by a stream of small ones. An
image whose estimate alone exceeds the budget takes all of it: it runs when
the others have finished theirs, alone. The masks never change; only when
they are made.
"""

import contextlib
import os

from detcon import mask_methods


def mask_bytes(width: int, height: int, segmentation: str,
               num_masks: int = 1) -> int:
  """Estimated peak memory (bytes) of one image's masks by `segmentation`.

  From the method's `bytes_per_pixel` and `bytes_per_extra_mask` for each
  mask after the first (`mask_methods.METHODS`).
  """
  method = mask_methods.METHODS[segmentation]
  per_pixel = (method.bytes_per_pixel +
               method.bytes_per_extra_mask * (num_masks - 1))
  return per_pixel * width * height


def machine_memory_bytes() -> int:
  """Physical memory, or the cgroup's limit (containers) when lower."""
  total = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  for path in ('/sys/fs/cgroup/memory.max',  # cgroup v2.
               '/sys/fs/cgroup/memory/memory.limit_in_bytes'):  # v1.
    try:
      with open(path) as f:
        limit = f.read().strip()
    except OSError:
      continue
    if limit.isdigit():
      total = min(total, int(limit))
  return total


class MemoryBudget:
  """`total` bytes that processes of one multiprocessing context share.

  Made in the parent and handed to the workers at their start (e.g. in a
  pool's `initargs`): its lock and counters live in shared memory.
  """

  def __init__(self, ctx, total: int):
    """`ctx`: a multiprocessing context; `total`: the budget in bytes."""
    self.total = total
    self._condition = ctx.Condition()
    self._used = ctx.RawValue('q', 0)  # Bytes reserved now.
    self._next_ticket = ctx.RawValue('q', 0)  # Given to the next request.
    self._serving = ctx.RawValue('q', 0)  # The ticket allowed in next.

  @contextlib.contextmanager
  def reserve(self, num_bytes: int):
    """Holds `num_bytes` (at most `total`) for the `with` block.

    Blocks until every earlier request got its bytes and these fit.
    """
    num_bytes = min(num_bytes, self.total)
    with self._condition:
      ticket = self._next_ticket.value
      self._next_ticket.value += 1
      self._condition.wait_for(
          lambda: self._serving.value == ticket and
          self._used.value + num_bytes <= self.total)
      self._used.value += num_bytes
      self._serving.value += 1
      self._condition.notify_all()  # The next ticket may fit as well.
    try:
      yield
    finally:
      with self._condition:
        self._used.value -= num_bytes
        self._condition.notify_all()

  @property
  def used(self) -> int:
    """Bytes reserved now."""
    return self._used.value
