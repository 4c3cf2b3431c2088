"""Our INFO lines without the libraries' chatter; `--library_logs` shows it.

By default the commands hide the INFO messages of orbax (about 44 lines per
checkpoint save), JAX's backend probing ("Unable to initialize backend
'tpu'") and TensorFlow's C++ INFO lines; their warnings and errors still
show. The few notices TensorFlow prints while it loads, before its logging
starts (oneDNN's), ignore every log level and still show. TensorFlow reads
its C++ log level once, when it loads, so that part is set by
`detcon/__init__.py`, before any module of the package can load TensorFlow
(`quiet_tensorflow_cpp`).
"""

import logging
import os

from absl import flags
from absl import logging as absl_logging

LIBRARY_LOGS = flags.DEFINE_bool(
    'library_logs', False, 'Also show the INFO messages of orbax, JAX and '
    'TensorFlow (hidden by default; their warnings and errors always show).')

# Python loggers and source folders whose INFO records are hidden.
_QUIET_LOGGERS = ('jax._src.xla_bridge', 'orbax', 'etils')
_QUIET_SOURCES = (f'{os.sep}orbax{os.sep}', f'{os.sep}etils{os.sep}')



def quiet_tensorflow_cpp(argv: list[str]) -> None:
  """Hides TensorFlow's C++ INFO lines unless `--library_logs` is in `argv`.

  A `TF_CPP_MIN_LOG_LEVEL` already in the environment is kept.
  """
  if not any(a in ('--library_logs', '--library_logs=true',
                   '--library_logs=True', '--library_logs=1') for a in argv):
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # 1: no C++ INFO.


def _not_library_info(record: logging.LogRecord) -> bool:
  """A log filter: False for INFO (and lower) records of the libraries."""
  return record.levelno >= logging.WARNING or not any(
      s in record.pathname for s in _QUIET_SOURCES)


def apply() -> None:
  """Hides the libraries' INFO messages unless `--library_logs` (in main())."""
  if LIBRARY_LOGS.value:
    return
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  # orbax logs through absl's logger, as we do: told apart by source file.
  absl_logging.get_absl_handler().addFilter(_not_library_info)
