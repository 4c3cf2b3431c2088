"""Checkpoints with orbax: save, keep the last few, resume from the newest.

A checkpoint directory holds one sub-folder per saved step. Orbax writes each
to a temporary name and renames it once complete, so a process killed during
a save leaves the previous checkpoints intact and readable. Each step folder
holds two or three items: `state` (the whole `TrainState`: step, online and
target parameters, BatchNorm statistics, optimiser state and RNG), `config`
(the run's config as JSON, so exports and evaluations rebuild the same
network) and, for runs on records, `input` (where the data stream stands:
`record_order.input_state`, a few hundred bytes of JSON).
"""

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp


def make_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A manager over `directory` (created when missing) keeping the newest N."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                         config=ocp.JsonCheckpointHandler(),
                         input=ocp.JsonCheckpointHandler()))


def save(manager: ocp.CheckpointManager, train_state,
         config: ml_collections.ConfigDict,
         input_state: dict | None = None) -> None:
  """Starts saving `train_state` at its step (asynchronously).

  Args:
    manager: from `make_manager`.
    train_state: the `TrainState`.
    config: the run's config.
    input_state: where the data stream stands (`record_order.input_state`);
      None for runs without one (mock data).
  """
  step = int(jax.device_get(train_state.step))
  items = dict(state=ocp.args.StandardSave(train_state._asdict()),
               config=ocp.args.JsonSave(config.to_dict()))
  if input_state is not None:
    items['input'] = ocp.args.JsonSave(input_state)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_saved(manager: ocp.CheckpointManager, step: int,
                  item: str) -> dict | None:
  """The JSON item `item` ('config' or 'input') of step `step`, or None.

  None when that checkpoint has no such item (`input` is missing from
  checkpoints written before the data stream's position was kept).
  """
  if not os.path.isdir(os.path.join(manager.directory, str(step), item)):
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.JsonRestore()}))
  return restored[item]


def restore_latest_state(manager: ocp.CheckpointManager, like):
  """Restores the newest checkpoint into the structure and shardings of `like`.

  Args:
    manager: from `make_manager`.
    like: a `TrainState` (arrays or `jax.ShapeDtypeStruct`s) whose structure,
      shapes and shardings the restored state takes.

  Returns:
    The restored `TrainState`, or None when the directory has no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like._asdict())
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return type(like)(**restored['state'])


def restore_latest(checkpoint_dir: str) -> dict[str, Any]:
  """Reads the newest checkpoint on the host, for export and evaluation.

  Returns:
    `{'step': int, 'params': online params, 'state': online BatchNorm state,
    'target_params': ..., 'config': ConfigDict}` as NumPy arrays.
  """
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f'no checkpoint directory {checkpoint_dir!r}; '
                            'pass the --checkpoint_dir of a pretraining run')
  manager = make_manager(checkpoint_dir)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{checkpoint_dir!r} holds no checkpoint')
  # Onto this host's first device, whatever devices and processes saved it.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      manager.item_metadata(step)['state'])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      config=ocp.args.JsonRestore()))
  state = jax.device_get(restored['state'])
  return dict(step=int(state['step']), params=state['params'],
              state=state['state'], target_params=state['target_params'],
              config=ml_collections.ConfigDict(restored['config']))
