r"""DetCon-B pretraining: `python -m detcon.main_loop`.

  python -m detcon.main_loop --dataset_directory=/data/imagenet-fh \
      --checkpoint_dir=/ckpt/detcon --pretrain_epochs=100

Every hyperparameter is in `--config` (default `detcon/configs/detcon_b.py`;
override fields as `--config.optimizer.momentum=0.95`); the flags below are
shortcuts that set config fields. `--is_test` runs one step of ResNet-50 at
224, batch 4, on mock data. Data parallel over all local devices; several
hosts join through `jax.distributed` (flags, or the cluster environment:
`detcon/distributed.py`).
"""

import itertools
import json
import os
import signal
import sys
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from detcon import (
  checkpoint,
  cli,
  distributed,
  log_setup,
  mask_methods,
  networks,
  optim,
  record_order,
  resume,
  run_lock,
  tensorboard_events,
  train,
  train_evals,
)
from detcon.configs import detcon_b
from detcon.tools import progress as progress_lib

try:  # ml_collections applies the --config.* overrides here.
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(os.path.dirname(__file__), 'configs',
                             'detcon_b.py'),
      'Config file (get_config()); fields can be overridden as --config.x=y '
      '(the fields and their defaults: below).')
except (AttributeError, KeyError) as _error:
  cli.exit_on_config_typo(_error, 'detcon.main_loop', sys.argv)
flags.adopt_module_key_flags(log_setup)  # --library_logs in --help.
# Shortcuts that set config fields; None leaves the config's value.
_SHORTCUTS = {
    'dataset_directory': (flags.DEFINE_string, 'Folder of train-%05d-of-%05d '
                          'TFRecords from generate_fh_masks_for_imagenet.py. '
                          'Config default: /tmp/imagenet-fh-train.'),
    'pretrain_epochs': (flags.DEFINE_integer, 'Epochs of pretraining; sets the '
                        'schedules. Config default: 1000.'),
    'batch_size': (flags.DEFINE_integer, 'Global batch size over all devices '
                   'and hosts. Config default: 4096.'),
    'log_tensors_interval': (flags.DEFINE_integer, 'Seconds between metric '
                             'logs. Config default: 60.'),
    'checkpoint_dir': (flags.DEFINE_string, 'Where checkpoints and TensorBoard '
                       'events go; a run resumes from its newest checkpoint. '
                       'Config default: none (no checkpoints).'),
    'encoder': (flags.DEFINE_string, 'ResNet18/34/50/101/152/200. Config '
                'default: ResNet50.'),
    'image_size': (flags.DEFINE_integer, 'Crop side in pixels, a multiple of '
                   '32. Config default: 224.'),
    'max_steps': (flags.DEFINE_integer, 'Steps to train (the schedules '
                  'then span them); 0: as many as --pretrain_epochs takes '
                  'over the training images at --batch_size (the start of '
                  'the log says which). Config default: 0.'),
    'save_checkpoint_interval': (flags.DEFINE_integer, 'Seconds between '
                                 'checkpoints. Config default: 300.'),
    'dtype': (flags.DEFINE_enum, 'Compute dtype (parameters stay float32). '
              'Config default: float32.'),
    'num_train_images': (flags.DEFINE_integer, 'Epoch size; default: counted '
                         'from the train records.'),
}
_FLAGS = {}
for _name, (_define, _help) in _SHORTCUTS.items():
  if _define is flags.DEFINE_enum:
    _FLAGS[_name] = _define(_name, None, ['float32', 'bfloat16'], _help)
  else:
    _FLAGS[_name] = _define(_name, None, _help)
_IS_TEST = flags.DEFINE_bool(
    'is_test', False, 'Run one step of ResNet-50 at 224, batch 4, on mock data '
    'and print its scalars (a setup check, as the original test.sh).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 for multi-host runs '
    '(else JAX reads its environment, e.g. JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (hosts).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process, 0..num_processes-1.')
_CLUSTER_DETECTION = flags.DEFINE_enum(
    'cluster_detection', 'auto', list(distributed.DETECTION_MODES),
    'auto: without --coordinator_address/--num_processes, join the '
    'multi-process run that JAX\'s cluster detection finds (SLURM tasks of '
    'srun, Open MPI, Cloud TPU pod slices, Kubernetes jobs); off: one '
    'process unless those flags (or JAX_COORDINATOR_ADDRESS) say otherwise, '
    'nothing read from the cluster environment.')
_PROGRESS_BAR = flags.DEFINE_enum(
    'progress_bar', 'auto', ['auto', 'on', 'off'],
    'A progress bar on stderr (steps, ETA, images/s, latest loss), besides '
    'the metric lines of the log: auto shows it when stderr is a terminal.')
# jaxline's flags, which the original's main loop took; accepted so that its
# scripts run, with no effect.
_WORKER_FLAGS = (
    flags.DEFINE_string('worker_mode', 'train', 'Accepted for scripts of the '
                        'original (jaxline); no effect: this loop trains.'),
    flags.DEFINE_string('worker_tpu_driver', '', 'Accepted for scripts of the '
                        'original (jaxline); no effect.'),
)

MODEL_FIELDS = ('encoder',)


def config_fields_help(config: ml_collections.ConfigDict,
                       prefix: str = '') -> list[str]:
  """One line per config field: `--config.<field>  default: <value>`."""
  lines = []
  for name, value in sorted(config.items()):
    if isinstance(value, ml_collections.ConfigDict) and value:
      lines += config_fields_help(value, f'{prefix}{name}.')
    else:
      lines.append(f'  --config.{prefix}{name}  default: {value!r}')
  return lines


# `--help` prints this docstring: it lists every field of the default config
# (comments on each: detcon/configs/detcon_b.py; docs/method.md).
__doc__ += ('\nConfig fields (--config.<field>=<value>) and the defaults of '
            'detcon/configs/detcon_b.py:\n'
            + '\n'.join(config_fields_help(detcon_b.get_config())) + '\n')


def config_from_flags() -> ml_collections.ConfigDict:
  """The config with the shortcut flags applied; `--is_test` settings."""
  config = _CONFIG.value
  for name, flag in _FLAGS.items():
    if flag.value is not None:
      target = config.model if name in MODEL_FIELDS else config
      target[name] = flag.value
  if _IS_TEST.value:
    config.batch_size, config.max_steps, config.image_size = 4, 1, 224
    config.model.encoder, config.mock_data = 'ResNet50', True
  return config


def _or(names: tuple[str, ...]) -> str:
  """'a', 'a or b', 'a, b or c'."""
  return ' or '.join(filter(None, (', '.join(names[:-1]), names[-1])))


def validate(config) -> None:
  """Clear errors for settings that cannot run."""
  networks.check_encoder_name(config.model.encoder)
  train.check_config(config)
  method = mask_methods.METHODS.get(config.masks)
  if method is None:
    raise ValueError(
        f'--config.masks={config.masks!r}: use '
        f'{_or(mask_methods.names(stored=True))} (the records\' masks made by '
        f'that method) or {_or(mask_methods.names(stored=False))} (no masks '
        'needed)')
  if method.check_config:
    method.check_config(config)
  train_evals.validate(config)
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ValueError(f'--batch_size={config.batch_size} does not divide over '
                     f'the {devices} devices; use a multiple of {devices}')


def mock_batches(config, local_devices: int, per_device: int,
                 start_step: int = 0):
  """Endless random images with blocky masks, shaped like the real input.

  Each process yields its slice of the same seeded global batch, so runs on
  any number of devices and processes see the same data; the batch of step
  s is drawn from (seed, s), so a resumed run continues with the batches of
  an uninterrupted one. Without classes (`num_classes` 0) every label is -1.
  """
  s, n = config.image_size, config.batch_size
  start = jax.process_index() * local_devices * per_device
  local = slice(start, start + local_devices * per_device)

  for step in itertools.count(start_step):
    rng = np.random.default_rng([config.seed, step])

    def blocks(rng=rng):
      coarse = rng.integers(0, 6, (n, 4, 4))
      return np.kron(coarse, np.ones((s // 4, s // 4), np.int64))[..., None]

    labels = (rng.integers(0, config.num_classes, n, dtype=np.int32)
              if config.num_classes else np.full(n, -1, np.int32))
    batch = dict(view1=rng.integers(0, 256, (n, s, s, 3), np.uint8),
                 view2=rng.integers(0, 256, (n, s, s, 3), np.uint8),
                 fh_segmentations1=blocks().astype(np.int32),
                 fh_segmentations2=blocks().astype(np.int32),
                 labels=labels)
    yield {k: v[local].reshape(local_devices, per_device, *v.shape[1:])
           for k, v in batch.items()}


class TrainRecords(NamedTuple):
  """What the train shards are, learnt before any step (`inspect_records`).

  Attributes:
    paths: the shards, all of them.
    offsets: int64 `[records]` per shard, each record's byte offset.
    num_records: records in all shards.
    has_classes: False when the records carry label 0 (no class).
  """
  paths: list[str]
  offsets: list[np.ndarray]
  num_records: int
  has_classes: bool


def inspect_records(config) -> TrainRecords:
  """Finds, checks and indexes the train shards of `config.dataset_directory`.

  Every shard is walked first (damaged shards raise one ValueError that lists
  them), which finds every record's offset for the data order. Then the first
  record is read: records made with other masks than `config.masks` fail
  here, and whether the records carry classes is noted.
  """
  # Imported here: TensorFlow loads only for runs that read records.
  from detcon import data  # pylint: disable=g-import-not-at-top
  data.hide_gpus_from_tf()
  paths = data.find_shards(config.dataset_directory, 'train')
  offsets = data.record_offsets_per_file(paths)
  num_records = sum(len(o) for o in offsets)
  logging.info('Counted %d training records in %d shards.', num_records,
               len(paths))
  first = data.check_dataset(paths, config.detcon.fh_mask_to_use,
                             config.masks)
  if (mask_methods.METHODS[config.masks].stored and
      first['mask_source'] is None):
    logging.info('%s does not say which method made its masks (no '
                 'image/mask_source: records of the original release or an '
                 'older version); taking them as %s masks (--config.masks).',
                 first['path'], config.masks)
  if first['label'] < 0 and config.num_classes:
    logging.info('The records carry label 0 (no class; first record of %s): '
                 'the online classifier is off (num_classes 0, classif_loss '
                 '0, no top1).', first['path'])
  return TrainRecords(paths, offsets, num_records, first['label'] >= 0)


def with_input_facts(config, train_records: TrainRecords | None):
  """A copy of `config` completed by what the input says (the caller's stays).

  `num_train_images` 0 becomes the records' count (the global batch on mock
  data, `train_records` None); records without classes turn the online
  classifier off (`num_classes` 0). The copy is what the run trains with
  and what its checkpoints keep.
  """
  config = config.copy_and_resolve_references()
  if train_records is None:
    config.num_train_images = config.num_train_images or config.batch_size
    return config
  config.num_train_images = (config.num_train_images or
                             train_records.num_records)
  if not train_records.has_classes:
    config.num_classes = 0
  return config


def input_state(config, train_records: TrainRecords, origin: int) -> dict:
  """This run's `record_order.input_state` (what a checkpoint keeps)."""
  return record_order.input_state(
      train_records.paths, [len(o) for o in train_records.offsets],
      seed=config.seed,
      process_count=jax.process_count(),
      process_batch=config.batch_size // jax.process_count(),
      masks=config.masks, origin=origin)


def resume_origin(saved: dict | None, new: dict, step: int) -> int:
  """The stream element of step 0 for a run at `step`; logs what it does."""
  origin = record_order.resume_origin(saved, new, step)
  if step == 0:
    return origin
  if saved is None:
    logging.warning(
        'The checkpoint of step %d keeps no input position (written before '
        'it was kept): the data order restarts at the next epoch, element '
        '%d of this process\'s stream.', step, origin + step *
        new['process_batch'])
  elif origin != saved['origin']:
    logging.warning(
        'The input differs from the checkpoint\'s (%s): the batches cannot '
        'continue where they stopped; the data order restarts at the next '
        'epoch, element %d of this process\'s stream.',
        '; '.join(record_order.changes(saved, new)),
        origin + step * new['process_batch'])
  else:
    logging.info('The data continues at element %d of this process\'s '
                 'stream, as if never interrupted.',
                 origin + step * new['process_batch'])
  return origin


def real_batches(config, train_records: TrainRecords, local_devices: int,
                 per_device: int, start: int):
  """The tf.data pipeline of this process, from stream element `start`."""
  from detcon import data  # pylint: disable=g-import-not-at-top
  ds = data.make_pretrain_dataset(
      train_records.paths, per_device_batch=per_device,
      local_devices=local_devices, image_size=config.image_size,
      fh_mask_to_use=config.detcon.fh_mask_to_use, seed=config.seed,
      masks=config.masks, grid_size=config.grid_size,
      record_offsets=train_records.offsets, start=start)
  return ds.as_numpy_iterator()


# The exit status of a run that a signal stopped before its last step, after
# saving (EX_TEMPFAIL: try again later). A finished run exits 0.
EXIT_STOPPED_EARLY = 75


class _StopRequest:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a request to save and stop.

  The loop polls `requested` after each step. A second SIGINT raises
  KeyboardInterrupt at once (nothing more is saved). The previous handlers
  come back on `restore`.
  """

  def __init__(self):
    self.requested = None  # The signal's name, once one came.
    self._previous = {sig: signal.signal(sig, self._handle)
                      for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = name
    logging.warning('%s received: saving a checkpoint and stopping (exit '
                    'status %d; the same command resumes).%s', name,
                    EXIT_STOPPED_EARLY,
                    ' Ctrl-C again stops at once, without saving.'
                    if signum == signal.SIGINT else '')

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _on_any_process(*flags_: bool) -> tuple[bool, ...]:
  """Each flag, true if it is true on any process: every process agrees.

  A signal reaches the processes of a run at different steps, and each has
  its own clock for the periodic save; saving is collective, so all must
  save, and stop, after the same step. One small all-gather per step when
  there are several processes; nothing otherwise.
  """
  if jax.process_count() == 1:
    return flags_
  gathered = multihost_utils.process_allgather(np.asarray(flags_))
  return tuple(bool(f) for f in np.asarray(gathered).reshape(
      -1, len(flags_)).any(axis=0))


class StoppedEarly(Exception):
  """A signal stopped the run before its last step; its state was saved."""


def run(config, progress_bar: bool = False) -> dict[str, float]:
  """Pretrains; returns the last logged metrics.

  Args:
    config: the experiment config (`detcon/configs/detcon_b.py`).
    progress_bar: show a `tools.progress.ProgressBar` on stderr (process 0).
  """
  validate(config)
  local_devices = jax.local_device_count()
  per_device = config.batch_size // jax.device_count()
  train_records = None if config.mock_data else inspect_records(config)
  config = with_input_facts(config, train_records)
  warmup, total = optim.warmup_and_total_steps(
      config.pretrain_epochs, config.batch_size, config.num_train_images,
      config.optimizer.warmup_epochs_divisor)
  if config.max_steps > 0:
    total = config.max_steps
    warmup = min(warmup, total // 10)
    reason = f'--max_steps={config.max_steps}'
  else:
    reason = (f'--max_steps=0: {config.pretrain_epochs} epochs '
              '(--pretrain_epochs) of the training images')
  logging.info('Pretraining %s (%s) for %d steps (%s; %d warm-up), batch %d '
               'over %d devices in %d processes, %d training images.',
               config.model.encoder, config.objective, total, reason, warmup,
               config.batch_size, jax.device_count(), jax.process_count(),
               config.num_train_images)

  mesh = train.make_mesh()
  optimizer, schedule = train.make_optimizer(config, total, warmup)
  manager, saved_input, state = None, None, None
  if config.checkpoint_dir:
    manager = checkpoint.make_manager(config.checkpoint_dir,
                                      config.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
      # Before any network is built: a changed one would not fit.
      changed = resume.check(
          checkpoint.restore_saved(manager, latest, 'config') or {}, config,
          latest)
      state = checkpoint.restore_latest_state(
          manager, train.state_like(config, optimizer, mesh))
      saved_input = checkpoint.restore_saved(manager, latest, 'input')
      logging.info('Resumed from step %d of %s.%s', latest,
                   config.checkpoint_dir,
                   f' Settings changed since: {changed}.' if changed else '')
    else:
      logging.info('No checkpoint in %s: starting from step 0.',
                   config.checkpoint_dir)
  if state is None:
    state = train.replicate(
        train.init_state(config, jax.random.PRNGKey(config.seed), optimizer),
        mesh)
  step = int(state.step)
  if config.mock_data:
    batches = mock_batches(config, local_devices, per_device, step)
    stream = None
  else:
    stream = input_state(config, train_records, origin=0)
    stream['origin'] = resume_origin(saved_input, stream, step)
    batches = real_batches(config, train_records, local_devices, per_device,
                           stream['origin'] + step * stream['process_batch'])
  step_fn = train.make_train_step(config, mesh, optimizer, schedule, total)
  writer = _summary_writer(config, step)
  stop = _StopRequest()

  start_step, start = step, time.time()
  last_log = last_save = time.time()
  saved_step = step
  log_step, metrics = step, {}
  progress = progress_lib.ProgressBar(total, step, config.batch_size,
                         progress_bar and jax.process_index() == 0)
  stopping = False
  while step < total and not stopping:
    state, device_metrics = step_fn(state, train.shard_batch(next(batches),
                                                             mesh))
    step += 1
    now = time.time()
    logged = now - last_log >= config.log_tensors_interval or step == total
    if logged:
      metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      # Steps are dispatched ahead of the device: time them once this one's
      # metrics are on the host, not when it was queued.
      now = time.time()
      metrics['step_time_s'] = (now - last_log) / (step - log_step)
      metrics['images_per_s'] = config.batch_size / metrics['step_time_s']
      metrics['skipped_records'] = _skipped_records(config)
      _log_metrics(step, metrics, writer)
      last_log, log_step = now, step
    evals = train_evals.run_due(config, step, total, state.params, state.state)
    if evals:
      metrics = {**metrics, **evals}
      _log_metrics(step, evals, writer)
      train_evals.write(config.checkpoint_dir, step, evals)
    progress.update(step, device_metrics, metrics if logged else None)
    stopping, save_due = _on_any_process(
        bool(stop.requested),
        bool(manager) and now - last_save >= config.save_checkpoint_interval)
    if save_due:
      checkpoint.save(manager, state, config, stream)
      last_save, saved_step = now, step
  progress.close()
  if manager:
    if saved_step != step:
      checkpoint.save(manager, state, config, stream)
    manager.wait_until_finished()
    logging.info('Saved step %d to %s.', step, config.checkpoint_dir)
  if writer:
    writer.close()
  elapsed = time.time() - start
  logging.info('Done: steps %d -> %d in %.1f s (%.2f images/s).', start_step,
               step, elapsed,
               (step - start_step) * config.batch_size / max(elapsed, 1e-9))
  stop.restore()
  if step < total:
    logging.warning('Stopped by %s at step %d of %d%s; the same command '
                    'resumes from there.',
                    stop.requested or "another process's signal", step, total,
                    ', saved' if manager else ' (no --checkpoint_dir: '
                    'nothing saved)')
    raise StoppedEarly(metrics)
  return metrics



def _summary_writer(config, step: int):
  """TensorBoard events of process 0; a resumed run hides logged steps > step.

  A run killed after its last save logged steps it will compute again:
  `purge_step` hides those from TensorBoard, so no step shows twice.
  """
  if not config.checkpoint_dir or jax.process_index() != 0:
    return None
  return tensorboard_events.ScalarWriter(
      os.path.join(config.checkpoint_dir, 'tensorboard'),
      purge_step=step + 1 if step else None)


def _skipped_records(config) -> int:
  """Records of this process's shards it could not read (0 on mock data)."""
  if config.mock_data:
    return 0
  from detcon import data  # pylint: disable=g-import-not-at-top
  return data.skipped_records()


def _log_metrics(step, metrics, writer):
  text = ', '.join(f'{k}={v:.5g}' for k, v in sorted(metrics.items()))
  logging.info('step %d: %s', step, text)
  if writer:
    writer.write(step, metrics)


def _note_worker_flags() -> None:
  """Logs that the original's jaxline flags, when given, have no effect."""
  given = [f'--{f.name}={f.value}' for f in _WORKER_FLAGS if f.present]
  if given:
    logging.warning('%s: flags of the original (jaxline), accepted for its '
                    'scripts; they have no effect here.', ' '.join(given))


def main(argv):
  log_setup.apply()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  distributed.join(_COORDINATOR.value, _NUM_PROCESSES.value,
                   _PROCESS_ID.value, _CLUSTER_DETECTION.value)
  config = config_from_flags()
  _note_worker_flags()
  mode = _PROGRESS_BAR.value
  status = 0
  try:
    if config.checkpoint_dir:
      cli.check_writable_directory(config.checkpoint_dir, '--checkpoint_dir')
    with run_lock.hold(config.checkpoint_dir):
      metrics = run(config, mode == 'on' or
                    (mode == 'auto' and sys.stderr.isatty()))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'detcon.main_loop: error: {e}')
  except StoppedEarly as e:
    metrics, status = e.args[0], EXIT_STOPPED_EARLY
  # The last logged scalars, one JSON line (the smoke test's output).
  print(json.dumps(metrics, sort_keys=True))
  sys.exit(status)


if __name__ == '__main__':
  cli.run(main)
