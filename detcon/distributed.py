"""How the processes of one run find each other (`jax.distributed`).

A run is one process unless something says otherwise, in this order:

1. `--coordinator_address` / `--num_processes` (and `--process_id`), or
   JAX's `JAX_COORDINATOR_ADDRESS` variable: `jax.distributed.initialize`
   with those values; with detection on, JAX fills in the ones not given
   from the cluster environment.
2. Else, with `--cluster_detection=auto`, JAX's own cluster detection
   (`jax._src.clusters`): SLURM (a task of `srun`), Open MPI (`mpirun`),
   Cloud TPU VMs of a pod slice (GCE metadata or GKE variables) and
   Kubernetes jobs (with the `kubernetes` package installed). When one of
   them recognises the environment and counts more than one process, the run
   joins it with `jax.distributed.initialize()` and no arguments. A single
   task (e.g. a batch script without `srun`) stays one process, with all of
   its devices.

The coordinator's port is the flag's; under SLURM JAX derives one from
`SLURM_JOB_ID` (61440 + id % 4096) unless `JAX_COORDINATOR_PORT` is set.
"""

import os

import jax
from absl import logging

DETECTION_MODES = ('auto', 'off')


def detected_cluster():
  """JAX's cluster environment class that recognises this process, or None.

  The same choice as `jax.distributed.initialize()` makes without arguments:
  the first detector that is not opt-in only (mpi4py is) and says its
  environment is present.
  """
  # JAX has no public API that names the detectors or the one that matches.
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  return next((env for env in clusters.ClusterEnv._cluster_types
               if not env.opt_in_only_method and env.is_env_present()), None)


def join(coordinator_address: str | None, num_processes: int | None,
         process_id: int | None, detection: str = 'auto') -> str:
  """Joins the multi-process run that flags or the environment describe.

  Call before anything else touches JAX's devices. Logs how the run was
  formed (processes, this process's index, local and global devices, and
  what formed it).

  Args:
    coordinator_address: `host:port` of process 0, or None.
    num_processes: number of processes, or None.
    process_id: this process, 0..num_processes-1, or None.
    detection: `auto` (use JAX's cluster detection) or `off` (flags and
      `JAX_COORDINATOR_ADDRESS` only; the environment is not read).

  Returns:
    What formed the run, as logged (e.g. "JAX's SlurmCluster detection").
  """
  if detection not in DETECTION_MODES:
    raise ValueError(f'--cluster_detection={detection!r}: use one of '
                     f'{", ".join(DETECTION_MODES)}')
  source, cluster = None, None
  if coordinator_address or num_processes:
    source = 'the --coordinator_address/--num_processes flags'
  elif os.environ.get('JAX_COORDINATOR_ADDRESS'):
    source = 'JAX_COORDINATOR_ADDRESS'
  elif detection == 'auto':
    cluster = detected_cluster()
  if cluster is not None:
    if cluster.get_process_count() > 1:
      source = f"JAX's {cluster.__name__} detection"
    else:
      logging.info("JAX's %s detection found this one process only: running "
                   'alone.', cluster.__name__)
  if source is None:
    how = ('cluster detection off (--cluster_detection=off)'
           if detection == 'off' else 'no cluster environment detected')
    source = f'one process ({how}, no --coordinator_address/--num_processes)'
  else:
    # Cross-process collectives for CPU devices (no effect on accelerators).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        cluster_detection_method=None if detection == 'auto' else 'deactivate')
  logging.info('Run formed by %s: process %d of %d, %d local %s devices of %d '
               'in all.', source, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.default_backend(),
               jax.device_count())
  return source
