"""What a resumed run may change: its saved config against the new one.

A run resumes from the newest checkpoint of its `--checkpoint_dir`. Settings
that make another network or another objective (`FIXED`) cannot change on a
resume: the checkpoint would hold a mixture, or not fit the network. Every
other setting (steps, schedule, logging, intervals, data) may change; the
changes are listed in one log line.
"""

import ml_collections

# Config fields (dotted; a trailing '.' means every field under it) that a
# resumed run must keep.
FIXED = ('objective', 'model.', 'num_classes', 'detcon.num_samples',
         'detcon.max_mask_id', 'detcon.temperature')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _fixed(name: str) -> bool:
  return any(name == f or (f.endswith('.') and name.startswith(f))
             for f in FIXED)


def changed_settings(saved: dict,
                     new: ml_collections.ConfigDict) -> tuple[list, list]:
  """The fields that differ, as (fixed, free) lists of (name, saved, new).

  Fields missing from `saved` (a checkpoint of an older version) count as
  unchanged.
  """
  saved, now = _flat(saved), _flat(new.to_dict())
  fixed, free = [], []
  for name in sorted(now):
    if name in saved and _comparable(saved[name]) != _comparable(now[name]):
      (fixed if _fixed(name) else free).append((name, saved[name],
                                                now[name]))
  return fixed, free


def _comparable(value):
  """JSON turns tuples into lists; compare them alike."""
  return list(value) if isinstance(value, tuple) else value


def check(saved: dict, new: ml_collections.ConfigDict, step: int) -> str:
  """Raises ValueError naming each fixed setting that changed.

  Returns:
    One line listing the other settings that changed ('' when none).
  """
  fixed, free = changed_settings(saved, new)
  if fixed:
    lines = '\n  '.join(f'--config.{n}: {s!r} in the checkpoint, {v!r} now'
                        for n, s, v in fixed)
    raise ValueError(
        f'{new.checkpoint_dir!r} holds step {step} of a run with other '
        f'settings that change the network or the objective:\n  {lines}\n'
        'Resume with the checkpoint\'s values, or start a fresh run with '
        'another --checkpoint_dir; to start from these weights with the new '
        'settings, export them (python -m detcon.export --checkpoint_dir='
        f'{new.checkpoint_dir} --format=npy --output=weights.npy) and '
        'start a run with another --checkpoint_dir and '
        '--config.init_from=weights.npy.')
  return ', '.join(f'{n}: {s!r} -> {v!r}' for n, s, v in free)
