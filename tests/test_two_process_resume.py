"""Two pretraining processes stop together on one's signal and resume each
on its share of the data, ending bitwise where two uninterrupted processes
end (real records, CPU, loopback). One process: test_exact_resume."""

import signal
import subprocess
import sys
import time

from detcon import checkpoint, main_loop
from tests.common import PRETRAINED_STEPS as STEPS
from tests.common import REPO, assert_same_final_state, free_port, pretrain_args


def _two_processes(args, tmp_path, name, stop_after=None):
  """Runs `args` as two processes on loopback; returns [(status, stderr)].

  With `stop_after`, SIGTERM goes to process 1 only, once process 0 logged
  a line holding it: both must agree to save and stop after the same step.
  """
  address = f'localhost:{free_port()}'
  logs = [tmp_path / f'{name}-{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(
          [sys.executable, *args, f'--coordinator_address={address}',
           '--num_processes=2', f'--process_id={i}'],
          cwd=REPO, stdout=subprocess.DEVNULL, stderr=f))
  if stop_after:
    deadline = time.time() + 600
    while stop_after not in logs[0].read_text():
      assert time.time() < deadline and procs[0].poll() is None
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
  for p in procs:
    p.wait(timeout=900)
  return [(p.returncode, log.read_text()) for p, log in zip(procs, logs,
                                                             strict=True)]


def test_two_processes_stop_together_and_resume_each_on_its_share(
    records, tmp_path):
  args = pretrain_args(records['png'], tmp_path / 'whole')
  whole = _two_processes(args, tmp_path, 'whole')
  assert [status for status, _ in whole] == [0, 0], whole[0][1][-3000:]
  ckpt = tmp_path / 'ckpt'
  args = pretrain_args(records['png'], ckpt)
  stopped = _two_processes(args, tmp_path, 'stopped', stop_after='] step 2:')
  assert [status for status, _ in stopped] == [main_loop.EXIT_STOPPED_EARLY] * 2
  assert 'SIGTERM received' in stopped[1][1]
  step = checkpoint.restore_latest(str(ckpt))['step']
  assert 2 <= step < STEPS
  assert (f"Stopped by another process's signal at step {step} of {STEPS}"
          in stopped[0][1])
  resumed = _two_processes(args, tmp_path, 'resumed')
  for status, err in resumed:
    assert status == 0, err[-3000:]
    # Global batch 4 over two processes: 2 elements per process and step.
    assert f'data continues at element {2 * step} of this process' in err
  assert_same_final_state(ckpt, checkpoint.restore_latest(
      str(tmp_path / 'whole')))
