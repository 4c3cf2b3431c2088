"""One run per checkpoint directory (`detcon.run_lock`), on real processes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from detcon import run_lock
from tests.common import TINY, main_loop, python

MOCK_STEP = ('--config.mock_data=True', '--max_steps=1')


def dead_pid():
  """The pid of a process that has exited (and was reaped)."""
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def write_lock(directory, **fields):
  os.makedirs(directory, exist_ok=True)
  now = time.time()
  lock = dict(host=socket.gethostname(), pid=os.getpid(), started=now - 5,
              heartbeat=now, command='python -m detcon.main_loop (first)',
              token='first')
  lock.update(fields)
  with open(os.path.join(directory, run_lock.LOCK_NAME), 'w') as f:
    json.dump(lock, f)


def test_second_run_stops_before_any_step_naming_the_first(tmp_path):
  """The lock of a live process (this test) keeps a main_loop run out."""
  ckpt = str(tmp_path / 'ckpt')
  with run_lock.hold(ckpt):
    result = python('-m', 'detcon.main_loop', *TINY, *MOCK_STEP,
                    f'--checkpoint_dir={ckpt}')
    assert os.path.exists(os.path.join(ckpt, run_lock.LOCK_NAME))
  assert result.returncode != 0
  err = result.stderr
  assert f'--checkpoint_dir={ckpt} is in use by another run' in err
  assert f'host {socket.gethostname()}, pid {os.getpid()}' in err
  assert 'wait for that run to end or stop it' in err
  assert 'Traceback' not in err and '] step ' not in err
  assert os.listdir(ckpt) == []  # Released; nothing written by the second.


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
  ckpt = str(tmp_path / 'ckpt')
  pid = dead_pid()
  write_lock(ckpt, pid=pid)
  result = main_loop(*MOCK_STEP, f'--checkpoint_dir={ckpt}')
  assert 'Taking over the stale run lock' in result.stderr
  assert f'its process {pid} no longer exists on this host' in result.stderr
  assert 'Saved step 1' in result.stderr
  assert not os.path.exists(os.path.join(ckpt, run_lock.LOCK_NAME))


@pytest.mark.parametrize('age, stale', [(60, False), (3600, True)])
def test_lock_of_another_host_is_stale_after_its_heartbeat_timeout(
    tmp_path, age, stale):
  ckpt = str(tmp_path / 'ckpt')
  write_lock(ckpt, host='other-node', heartbeat=time.time() - age)
  if stale:
    lock = run_lock.RunLock(ckpt)
    with open(lock.path) as f:
      assert json.load(f)['pid'] == os.getpid()
    lock.release()
    assert not os.path.exists(lock.path)
  else:
    with pytest.raises(run_lock.DirectoryInUse, match='host other-node'):
      run_lock.RunLock(ckpt)


def test_released_on_an_exception_and_kept_by_a_live_process(tmp_path):
  ckpt = str(tmp_path / 'ckpt')
  path = os.path.join(ckpt, run_lock.LOCK_NAME)
  with pytest.raises(RuntimeError, match='boom'):
    with run_lock.hold(ckpt):
      assert os.path.exists(path)
      with pytest.raises(run_lock.DirectoryInUse, match='in use by another'):
        run_lock.RunLock(ckpt)  # This same live process holds it.
      raise RuntimeError('boom')
  assert not os.path.exists(path)
