"""This task's place in a SLURM job array, for scripts that split work.

`sbatch --array=0-7` starts 8 tasks, each with `SLURM_ARRAY_TASK_COUNT=8`,
`SLURM_ARRAY_TASK_MIN=0` and its own `SLURM_ARRAY_TASK_ID`; a step
(`--array=0-14:2`) also sets `SLURM_ARRAY_TASK_STEP`. The task's index is
(id - min) / step. Arrays given as lists (`--array=1,5,9`) have no such
index: give `--num_tasks` / `--task_index` for them.
"""

import os


class ArrayError(ValueError):
  """The array variables give no index in [0, count)."""


def task_from_environment(environ=None) -> tuple[int, int, str] | None:
  """(num_tasks, task_index, how they were read), or None outside an array.

  Raises:
    ArrayError: when the variables do not give an index in [0, count).
  """
  env = os.environ if environ is None else environ
  if 'SLURM_ARRAY_TASK_COUNT' not in env or 'SLURM_ARRAY_TASK_ID' not in env:
    return None
  names = ('SLURM_ARRAY_TASK_COUNT', 'SLURM_ARRAY_TASK_ID',
           'SLURM_ARRAY_TASK_MIN', 'SLURM_ARRAY_TASK_STEP')
  given = {n: env[n] for n in names if n in env}
  count, task = int(given[names[0]]), int(given[names[1]])
  first = int(given.get(names[2], 0))
  step = int(given.get(names[3], 1))
  index, rest = divmod(task - first, step)
  how = ', '.join(f'{k}={v}' for k, v in given.items())
  if rest or not 0 <= index < count:
    raise ArrayError(
        f'the SLURM job array ({how}) gives no task index in [0, {count}); '
        'for arrays that are not a range, give --num_tasks and --task_index')
  return count, index, how
