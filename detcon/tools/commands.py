"""Runs the project's commands from Python: the demo's and the studies'.

`run` starts `python <args>` in the repository root, writes its whole
output to a log file and relays the lines a filter picks to the console
(`relay`, which also draws a command's tqdm bar in place on a terminal).
"""

import codecs
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TextIO

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


class CommandError(Exception):
  """A command exited with a non-zero code; the message names its log."""


def run(args: Sequence[str], log_path: str,
        shown: Callable[[str], bool] = lambda line: False,
        env: Mapping[str, str] | None = None, append: bool = False) -> float:
  """Runs `python *args` in the repository root; returns its wall time (s).

  Args:
    args: the arguments after the Python interpreter.
    log_path: gets the whole output (stdout and stderr), progress bars but
      for their final state aside.
    shown: which output lines are also printed (after '  | '); default none.
    env: environment variables the command gets unless already set.
    append: add to `log_path` (a resumed command) instead of replacing it.

  Raises:
    CommandError: the command exited with a non-zero code.
  """
  command = [sys.executable, *args]
  print(f'$ {shlex.join(command)}', flush=True)
  full_env = {**(env or {}), **os.environ}
  live = sys.stdout.isatty()
  if live:  # Progress bars as wide as the console, less the '  | ' margin.
    full_env.setdefault('TQDM_NCOLS',
                        str(shutil.get_terminal_size().columns - 5))
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  start = time.time()
  with open(log_path, 'a' if append else 'w') as log, subprocess.Popen(
      command, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT) as proc:
    relay(iter(lambda: proc.stdout.read1(1 << 16), b''), log, sys.stdout,
          live, shown)
  if proc.returncode:
    raise CommandError(f'failed with exit code {proc.returncode}; its whole '
                       f'output is in {log_path}')
  return time.time() - start


def relay(output: Iterable[bytes], log: TextIO, console: TextIO,
          live: bool, shown: Callable[[str], bool]) -> None:
  """Copies a command's output, as it comes, to its log and the console.

  Lines (text ended by '\\n') all go to the log and, when `shown`, to the
  console after '  | '. A progress bar redraws its line after a '\\r' (as
  tqdm does): its states go to neither, but on a live console the newest is
  drawn in place on the last line. The bar's final state ends with '\\n',
  as a line.

  Args:
    output: the command's output (stdout and stderr) as it comes, in
      chunks of bytes of any size.
    log: where every line goes.
    console: where the shown lines go.
    live: whether `console` is a terminal, where the bar can be redrawn.
    shown: whether a line goes to the console.
  """
  decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
  pending = ''  # The text after the last '\r' or '\n'.
  after_cr = False  # Whether that was a '\r': `pending` is a bar state.
  drawn = ''  # The bar state drawn on the console's last line, if any.

  def write(text):
    console.write(text)
    console.flush()

  def line(text) -> bool:
    """Logs a line; shows it if `shown`, over the bar; returns if shown."""
    nonlocal drawn
    log.write(text + '\n')
    if not shown(text):
      return False
    if drawn:
      write('\r' + ' ' * len(drawn) + '\r')
    write(f'  | {text}\n')
    drawn = ''
    return True

  for chunk in output:
    pieces = re.split('([\r\n])', pending + decoder.decode(chunk))
    pending, bar = pieces.pop(), None  # The bar state to draw, if any.
    for text, end in zip(pieces[::2], pieces[1::2], strict=True):
      if end == '\n':
        if line(text):
          bar = None  # Older than the line: the bar redraws after it.
      elif text.strip():
        bar = text
      after_cr = end == '\r'
    if after_cr and pending.strip():
      bar = pending
    if live and bar is not None and f'  | {bar}' != drawn:
      text = f'  | {bar}'
      write('\r' + text + ' ' * max(len(drawn) - len(text), 0))
      drawn = text
    log.flush()  # The log can be followed while the command runs.
  pending += decoder.decode(b'', final=True)
  if pending.strip():
    line(pending)
  elif drawn:
    write('\n')
