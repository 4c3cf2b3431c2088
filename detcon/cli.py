"""What the commands check before their work, to fail in one sentence, and
how they run.

An output that cannot be written is found before hours of work (a
read-only mount, a missing permission), and a `--config.` field that does
not exist is one line with ml_collections' suggestion, not its traceback.
"""

import gc
import os
import re
import sys
import tempfile

from absl import app


def run(main) -> None:
  """`absl.app.run(main)`, ending without Python's last garbage collection.

  At exit the interpreter's cyclic collector walks every object of the
  process: with TensorFlow loaded that takes about a second at the end of
  every command. The command's outputs are closed by then (each is closed
  by the code that writes it; stdout and stderr are flushed at exit in any
  case), so its objects are moved out of the collector's reach
  (`gc.freeze`) once `main` ends, and the OS takes back their memory.
  """

  def main_then_freeze(argv):
    try:
      return main(argv)
    finally:
      gc.freeze()

  app.run(main_then_freeze)


def _cannot_write(directory: str) -> str | None:
  """Why files cannot be made in `directory` (created if needed), or None."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


def check_writable_directory(directory: str, flag: str) -> None:
  """Creates `directory` if needed and checks that files can be made in it.

  Raises:
    ValueError: naming `flag`, the folder and the reason.
  """
  reason = _cannot_write(directory)
  if reason:
    raise ValueError(f'{flag}={directory} cannot be written ({reason}); '
                     'give a folder this user can write')


def check_writable_file(path: str, flag: str) -> None:
  """Checks that the file `path` can be written (its folder is created).

  Raises:
    ValueError: naming `flag`, the file and the reason.
  """
  reason = ('it is a folder' if os.path.isdir(path) else
            _cannot_write(os.path.dirname(os.path.abspath(path))))
  if reason:
    raise ValueError(f'{flag}={path} cannot be written ({reason}); give a '
                     'file name in a folder this user can write')


def exit_on_config_typo(error: Exception, command: str, argv: list[str]):
  """Exits with one line for an unknown `--config.` field.

  ml_collections reads the `--config.` overrides of the command line when
  the config flag is defined and reports an unknown field as an
  AttributeError or KeyError whose message ends in 'Did you mean ...?'.

  Args:
    error: that exception.
    command: the command's name, for the message.
    argv: the command line (`sys.argv`), whose `--config.` fields are named.
  """
  given = ' '.join(a.split('=')[0] for a in argv if a.startswith('--config.'))
  match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(error))
  hint = (f'; did you mean {match[1]!r} instead of {match[2]!r}?' if match
          else '')
  sys.exit(f'{command}: error: {given}: no such config field{hint} '
           '(`--help` lists the fields)')
