"""DetCon-B in JAX (see README.md and docs/)."""

import sys

from detcon import log_setup

# Before any module here loads TensorFlow, which reads its log level once.
log_setup.quiet_tensorflow_cpp(sys.argv)
