"""The pretraining progress bar (tqdm on stderr), fed by the main loop."""

import collections
import sys
import threading
import time

import jax
from absl import logging


class ProgressBar:
  """A tqdm bar on stderr: steps done / total, ETA, images/s, latest loss.

  The loop dispatches steps ahead of the device, so a step counts as done
  once its metrics are computed: a thread looks twice a second, without
  waiting for them. The loss and images/s are refreshed at most about once a
  second, from such metrics or from those the loop read for the log. While
  the bar is shown, each absl log record clears it first, so that log lines
  start on a line of their own.
  """

  def __init__(self, total: int, initial: int, batch_size: int, show: bool):
    """A bar from step `initial` to `total`; hidden (no-op) unless `show`."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm(total=total, initial=initial, unit='step', miniters=1,
                     dynamic_ncols=sys.stderr.isatty(), disable=not show)
    self._batch_size = batch_size
    self._lock = threading.Lock()  # For the two below, across threads.
    self._running = collections.deque()  # (step, device metrics), in order.
    # The step whose metrics are on the bar and when they were read.
    self._shown = (initial, time.time())
    self._stop = threading.Event()
    self._watcher = threading.Thread(target=self._watch, daemon=True)
    if show:
      logging.get_absl_handler().addFilter(self._clear_bar)
      self._watcher.start()

  def _clear_bar(self, record) -> bool:
    """An absl log filter that lets every record through a cleared line."""
    del record
    self._bar.clear()
    return True

  def update(self, step: int, device_metrics: dict[str, jax.Array],
             metrics: dict[str, float] | None) -> None:
    """Notes that the loop dispatched `step`.

    Args:
      step: the step just dispatched.
      device_metrics: its metrics, possibly not computed yet.
      metrics: the same on the host when the loop read them (for the log; the
        step is then done), else None.
    """
    if self._bar.disable:
      return
    with self._lock:
      if metrics is None:
        self._running.append((step, device_metrics))
      else:
        self._running.clear()
        self._advance(step, metrics)

  def _watch(self) -> None:
    """Moves the bar to the newest step whose metrics are computed."""
    while not self._stop.wait(0.5):
      with self._lock:
        done = None
        while self._running and self._running[0][1]['loss'].is_ready():
          done, metrics = self._running.popleft()
        if done is not None:
          self._advance(done, metrics)

  def _advance(self, done: int, metrics) -> None:
    """Moves the bar to step `done`, whose `metrics` are computed."""
    now = time.time()
    if now - self._shown[1] >= 1.0 or done == self._bar.total:
      self._show(done, float(metrics['loss']), now)
    self._bar.update(done - self._bar.n)

  def _show(self, step: int, loss: float, now: float) -> None:
    """Puts the loss of `step` and images/s since the last shown step.

    The first images/s counts from the start, compilation included (as the
    log's first `images_per_s`).
    """
    last_step, last_time = self._shown
    rate = (step - last_step) * self._batch_size / (now - last_time)
    self._bar.set_postfix_str(f'loss={loss:.4f}, {rate:.3g} images/s',
                              refresh=False)
    self._shown = (step, now)

  def close(self) -> None:
    """Leaves the bar's final state on its own line."""
    if self._watcher.is_alive():
      self._stop.set()
      self._watcher.join()
    logging.get_absl_handler().removeFilter(self._clear_bar)
    self._bar.close()
