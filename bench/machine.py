"""What machine a benchmark ran on, printed beside its figures."""

import os


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo, or 'unknown CPU'."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown CPU'


def load_average() -> str:
  """The 1/5/15-minute load averages, e.g. '0.3/0.5/0.4'."""
  return '/'.join(f'{x:.1f}' for x in os.getloadavg())


def describe() -> str:
  """E.g. '2 CPUs (2 usable), AMD EPYC ...; load average (1/5/15 min) ...'."""
  usable = len(os.sched_getaffinity(0))
  return (f'{os.cpu_count()} CPUs ({usable} usable), {cpu_model()}; load '
          f'average (1/5/15 min) {load_average()}')


def describe_jax() -> str:
  """E.g. 'jax 0.10.2, backend cpu, 1 device(s): cpu'."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return (f'jax {jax.__version__}, backend {jax.default_backend()}, '
          f'{len(devices)} device(s): {devices[0].device_kind}')
