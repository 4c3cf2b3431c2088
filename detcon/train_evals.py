"""Evaluators run during pretraining, as `config.evals` names them.

  config.evals.<name> = dict(evaluator='knn' | 'linear' | 'dense_linear' |
                             'dense_nn', every_steps=N, settings=dict(...))

or, instead of `every_steps`, `at_steps=(s1, s2, ...)` (a learning curve at
chosen points). Each runs on the live online network (a `backbone.Backbone`
of the train state's parameters and the config's encoder settings) every N
steps, or at the listed steps, and at the last step; its metrics are named
`<name>/<metric>`. Default: no entries,
nothing runs. They run on process 0 only, which reads the whole evaluation
set; the other processes wait for it at the next step.
"""

import json
import os

import jax
import ml_collections

from detcon import backbone, evaluators

RESULT_FILE = 'evals.json'
_FIELDS = ('evaluator', 'every_steps', 'at_steps', 'settings')


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails before the first step on a bad entry, naming the setting.

  Raises:
    ValueError: an unknown evaluator or field, an interval below 1, or a
      data folder that does not exist.
  """
  for name, entry in config.get('evals', {}).items():
    where = f'config.evals.{name}'
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
      raise ValueError(f'{where}: unknown fields {unknown}; use '
                       f'{", ".join(_FIELDS)}')
    try:
      evaluators.get(entry.get('evaluator', ''))
    except ValueError as e:
      raise ValueError(f'{where}.evaluator: {e}') from None
    if 'at_steps' in entry:
      at = entry.at_steps
      if 'every_steps' in entry or not at or not all(
          isinstance(s, int) and s >= 1 for s in at):
        raise ValueError(f'{where}.at_steps={at}: use a list of positive '
                         'steps, and no every_steps with it')
    else:
      every = entry.get('every_steps', 0)
      if not isinstance(every, int) or every < 1:
        raise ValueError(f'{where}.every_steps={every}: use a positive '
                         'number of steps, or at_steps (the evaluator also '
                         'runs at the last step)')
    folder = _data_folder(entry.get('settings', {}))
    if folder and not os.path.isdir(folder):
      raise ValueError(f'{where}.settings: no data folder {folder!r}')


def _data_folder(settings) -> str | None:
  """The local folder an evaluator's settings read, if any."""
  if settings.get('dataset_directory'):
    return settings['dataset_directory']
  kind, _, location = str(settings.get('source', '')).partition(':')
  return location if kind in ('records', 'folder') else None


def due(config: ml_collections.ConfigDict, step: int, total: int
        ) -> list[str]:
  """The entries that run after `step` (theirs, and `total`)."""
  return [name for name, entry in config.get('evals', {}).items()
          if step == total or (step in entry.at_steps if 'at_steps' in entry
                               else step % entry.every_steps == 0)]


def run_due(config: ml_collections.ConfigDict, step: int, total: int,
            params, state) -> dict[str, float]:
  """Runs the due evaluators on the online network; `<name>/<metric>`.

  Args:
    config: the run's config.
    step: the step just completed.
    total: the run's last step.
    params, state: the train state's online parameters and BatchNorm state.

  Returns:
    The metrics (empty when nothing is due or on processes other than 0).
  """
  names = due(config, step, total)
  if not names or jax.process_index() != 0:
    return {}
  frozen = backbone.from_params(
      jax.device_get(params), jax.device_get(state), config.model,
      config.checkpoint_dir or 'the training run', step=step, config=config)
  metrics = {}
  for name in names:
    entry = config.evals[name]
    result = evaluators.get(entry.evaluator)(
        frozen, ml_collections.ConfigDict(entry.get('settings', {})))
    metrics.update({f'{name}/{k}': v for k, v in result.items()})
  return metrics


def write(checkpoint_dir: str, step: int, metrics: dict[str, float]) -> None:
  """Adds one evaluation to `<checkpoint_dir>/evals.json` (process 0).

  The file holds the last metrics at its top level (with their `step`) and
  every evaluation so far in `history`: a list of {'step', '<name>/<metric>'}
  in step order, the learning curve. Called after each evaluation, so a
  stopped run keeps its curve; a resumed run replaces the entries at or past
  the step it writes (those of steps it redoes). Written atomically.
  """
  if not checkpoint_dir or not metrics or jax.process_index() != 0:
    return
  path = os.path.join(checkpoint_dir, RESULT_FILE)
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = [h for h in json.load(f).get('history', [])
                 if h['step'] < step]
  entry = dict(metrics, step=step)
  os.makedirs(checkpoint_dir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(dict(entry, history=[*history, entry]), f, indent=1,
              sort_keys=True)
  os.replace(path + '.tmp', path)
