"""One run per checkpoint directory: the `RUN_LOCK` file.

Process 0 of a run creates `<checkpoint_dir>/RUN_LOCK`, a JSON object
`{"host", "pid", "started", "heartbeat", "command", "token"}` (times in
seconds since the epoch), rewrites its `heartbeat` every
`HEARTBEAT_INTERVAL_S` from a thread and deletes the file when the run ends.
A second run that finds the file stops before any step, naming the first.

A lock is stale, and taken over with a warning, when
- its host is this host and its process no longer exists; or
- its host is another one (it cannot be asked: a shared file system) and its
  heartbeat is older than `STALE_AFTER_S`, ten heartbeats.
Hosts are compared by `socket.gethostname()`. The file is created with an
atomic link (safe on NFS), and a takeover renames the stale file away first,
so that of two runs taking over at once only one gets the directory.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging

LOCK_NAME = 'RUN_LOCK'
HEARTBEAT_INTERVAL_S = 60
STALE_AFTER_S = 600


class DirectoryInUse(ValueError):
  """Another run holds the checkpoint directory."""


def _describe(lock: dict) -> str:
  """The run of a lock, as messages name it."""
  age = time.time() - lock['heartbeat']
  started = time.strftime('%Y-%m-%d %H:%M:%S %Z',
                          time.localtime(lock['started']))
  return (f'host {lock["host"]}, pid {lock["pid"]}, started {started}, last '
          f'heartbeat {age:.0f} s ago, command: {lock["command"]}')


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by another user.
    return True
  return True


def stale_reason(lock: dict, now: float | None = None) -> str | None:
  """Why `lock` is stale, or None when its run may still be alive."""
  now = time.time() if now is None else now
  if lock['host'] == socket.gethostname():
    if not _process_exists(lock['pid']):
      return f'its process {lock["pid"]} no longer exists on this host'
    return None
  age = now - lock['heartbeat']
  if age > STALE_AFTER_S:
    return (f'no heartbeat from host {lock["host"]} for {age:.0f} s (more '
            f'than the {STALE_AFTER_S} s after which a lock of another host '
            'is stale)')
  return None


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _write_atomically(path: str, lock: dict, replace: bool) -> None:
  """Writes `lock` to `path` whole; FileExistsError if not `replace`."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(lock, f)
  try:
    if replace:
      os.replace(tmp, path)
    else:
      os.link(tmp, path)  # Atomic, and fails when `path` exists.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


class RunLock:
  """The lock of this process on one directory, with its heartbeat thread."""

  def __init__(self, directory: str):
    """Takes `directory` (created when missing) or raises DirectoryInUse."""
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, LOCK_NAME)
    now = time.time()
    self._lock = dict(host=socket.gethostname(), pid=os.getpid(),
                      started=now, heartbeat=now,
                      command=' '.join(sys.argv), token=uuid.uuid4().hex)
    try:
      _write_atomically(self.path, self._lock, replace=False)
    except FileExistsError:
      self._take_over(directory)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()

  def _take_over(self, directory: str) -> None:
    try:
      other = _read(self.path)
      reason = stale_reason(other)
    except (OSError, ValueError, KeyError) as e:
      raise DirectoryInUse(
          f'{self.path} exists but cannot be read as a run lock ({e}); if no '
          'run uses this directory, delete the file and start again') from e
    if reason is None:
      raise DirectoryInUse(
          f'--checkpoint_dir={directory} is in use by another run ('
          f'{_describe(other)}). Two runs on one directory overwrite each '
          'other\'s checkpoints: wait for that run to end or stop it, or give '
          'this one another --checkpoint_dir. If that run is gone (e.g. its '
          f'host was lost), delete {self.path}, or wait until the lock is '
          f'stale ({STALE_AFTER_S} s without a heartbeat).')
    aside = f'{self.path}.stale-{os.getpid()}'
    os.rename(self.path, aside)
    taken = _read(aside)
    os.remove(aside)
    if taken['token'] != other['token']:  # Another run took it over first.
      raise DirectoryInUse(f'{self.path}: another run took over the stale '
                           'lock at the same time; start again to see which')
    _write_atomically(self.path, self._lock, replace=False)
    logging.warning('Taking over the stale run lock %s (%s): %s.', self.path,
                    _describe(other), reason)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_INTERVAL_S):
      self._lock['heartbeat'] = time.time()
      if not self._holds():
        logging.error('%s is no longer this run\'s lock; another run took it '
                      'over.', self.path)
        return
      _write_atomically(self.path, self._lock, replace=True)

  def _holds(self) -> bool:
    try:
      return _read(self.path)['token'] == self._lock['token']
    except (OSError, ValueError, KeyError):
      return False

  def release(self) -> None:
    """Stops the heartbeat and deletes the file if it is still this run's."""
    self._stop.set()
    self._thread.join()
    if self._holds():
      os.remove(self.path)


@contextlib.contextmanager
def hold(directory: str | None):
  """Holds `directory` for the run inside the `with` block; None: nothing.

  Process 0 takes the lock; in a run of several processes all of them
  raise DirectoryInUse when it could not. The lock is released when the
  block ends, also on an exception (or SystemExit / KeyboardInterrupt).
  """
  lock, refused = None, None
  if directory and jax.process_index() == 0:
    try:
      lock = RunLock(directory)
    except DirectoryInUse as e:
      refused = e
  if directory and jax.process_count() > 1:
    # Imported here: only multi-process runs need it.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    taken = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
    if not taken and refused is None:
      refused = DirectoryInUse(
          f'process 0 could not take --checkpoint_dir={directory} for this '
          'run; its log says why')
  if refused is not None:
    raise refused
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
