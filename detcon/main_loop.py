r"""DetCon-B pretraining: `python -m detcon.main_loop`.

  python -m detcon.main_loop --dataset_directory=/data/imagenet-fh \
      --checkpoint_dir=/ckpt/detcon --pretrain_epochs=100

Every hyperparameter is in `--config` (default `detcon/configs/detcon_b.py`;
override fields as `--config.optimizer.momentum=0.95`); the flags below are
shortcuts that set config fields. `--is_test` runs one step of ResNet-50 at
224, batch 4, on mock data. Data parallel over all local devices; several
hosts join through `jax.distributed` (flags or JAX's environment variables).
"""

import json
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from detcon import checkpoint, networks, optim, train

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'detcon_b.py'),
    'Config file (get_config()); fields can be overridden as --config.x=y.')
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
    'max_steps': (flags.DEFINE_integer, 'Stop after this many steps (the '
                  'schedules then span them). Config default: from epochs.'),
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

MODEL_FIELDS = ('encoder',)


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


def maybe_initialize_distributed() -> None:
  """Joins a multi-process run when flags or JAX's environment ask for one."""
  if _COORDINATOR.value or _NUM_PROCESSES.value:
    # Cross-process collectives for CPU devices (no effect on accelerators).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  elif os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()


def validate(config) -> None:
  """Clear errors for settings that cannot run."""
  networks.check_encoder_name(config.model.encoder)
  train.grid_size(config.image_size)
  if config.objective not in ('detcon_b', 'byol'):
    raise ValueError(f'objective {config.objective!r}: use detcon_b or byol')
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ValueError(f'--batch_size={config.batch_size} does not divide over '
                     f'the {devices} devices; use a multiple of {devices}')


def mock_batches(config, local_devices: int, per_device: int):
  """Endless random images with blocky masks, shaped like the real input.

  Each process yields its slice of the same seeded global batch, so runs on
  any number of devices and processes see the same data.
  """
  rng = np.random.default_rng(config.seed)
  s, n = config.image_size, config.batch_size
  start = jax.process_index() * local_devices * per_device
  local = slice(start, start + local_devices * per_device)

  def blocks():
    coarse = rng.integers(0, 6, (n, 4, 4))
    return np.kron(coarse, np.ones((s // 4, s // 4), np.int64))[..., None]

  while True:
    batch = dict(view1=rng.random((n, s, s, 3), np.float32),
                 view2=rng.random((n, s, s, 3), np.float32),
                 fh_segmentations1=blocks().astype(np.int32),
                 fh_segmentations2=blocks().astype(np.int32),
                 labels=rng.integers(0, config.num_classes, n, dtype=np.int32))
    yield {k: v[local].reshape(local_devices, per_device, *v.shape[1:])
           for k, v in batch.items()}


def real_batches(config, local_devices: int, per_device: int):
  """The tf.data pipeline over this process's share of the train shards.

  Every shard is checked and counted first (its count is what the pipeline
  expects of it): damaged shards raise one ValueError that lists them.
  """
  # Imported here: TensorFlow loads only for runs that read records.
  from detcon import data  # pylint: disable=g-import-not-at-top
  data.hide_gpus_from_tf()
  paths = data.find_shards(config.dataset_directory, 'train')
  # Always: damaged shards stop the run here, before any step.
  counts = data.count_records_per_file(paths)
  logging.info('Counted %d training records in %d shards.', sum(counts),
               len(paths))
  config.num_train_images = config.num_train_images or sum(counts)
  ds = data.make_pretrain_dataset(
      paths, per_device_batch=per_device, local_devices=local_devices,
      image_size=config.image_size,
      fh_mask_to_use=config.detcon.fh_mask_to_use, seed=config.seed,
      shuffle_buffer_batches=config.shuffle_buffer_batches,
      record_counts=counts)
  return ds.as_numpy_iterator()


class _Preemption:
  """Remembers a SIGTERM so the loop can save and stop cleanly."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True


def run(config) -> dict[str, float]:
  """Pretrains; returns the last logged metrics."""
  validate(config)
  local_devices = jax.local_device_count()
  per_device = config.batch_size // jax.device_count()
  if config.mock_data:
    config.num_train_images = config.num_train_images or config.batch_size
    batches = mock_batches(config, local_devices, per_device)
  else:
    batches = real_batches(config, local_devices, per_device)
  warmup, total = optim.warmup_and_total_steps(
      config.pretrain_epochs, config.batch_size, config.num_train_images)
  if config.max_steps > 0:
    total = config.max_steps
    warmup = min(warmup, total // 10)
  logging.info('Pretraining %s (%s) for %d steps (%d warm-up), batch %d over '
               '%d devices in %d processes, %d training images.',
               config.model.encoder, config.objective, total, warmup,
               config.batch_size, jax.device_count(), jax.process_count(),
               config.num_train_images)

  mesh = train.make_mesh()
  optimizer, schedule = train.make_optimizer(config, total, warmup)
  state = train.replicate(
      train.init_state(config, jax.random.PRNGKey(config.seed), optimizer),
      mesh)
  manager = None
  if config.checkpoint_dir:
    manager = checkpoint.make_manager(config.checkpoint_dir,
                                      config.keep_checkpoints)
    restored = checkpoint.restore_latest_state(manager, state)
    if restored is not None:
      state = restored
      logging.info('Resumed from step %d of %s.', int(state.step),
                   config.checkpoint_dir)
    else:
      logging.info('No checkpoint in %s: starting from step 0.',
                   config.checkpoint_dir)
  step_fn = train.make_train_step(config, mesh, optimizer, schedule, total)
  writer = _summary_writer(config)
  preemption = _Preemption()

  step = int(state.step)
  start_step, start = step, time.time()
  last_log = last_save = time.time()
  saved_step = step
  log_step, metrics = step, {}
  progress = _progress_bar(total, step)
  while step < total and not preemption.requested:
    state, device_metrics = step_fn(state, train.shard_batch(next(batches),
                                                             mesh))
    step += 1
    progress.update(1)
    now = time.time()
    if now - last_log >= config.log_tensors_interval or step == total:
      metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      metrics['step_time_s'] = (now - last_log) / (step - log_step)
      metrics['images_per_s'] = config.batch_size / metrics['step_time_s']
      metrics['skipped_records'] = _skipped_records(config)
      _log_metrics(step, metrics, writer, progress)
      last_log, log_step = now, step
    if manager and (now - last_save >= config.save_checkpoint_interval):
      checkpoint.save(manager, state, config)
      last_save, saved_step = now, step
  progress.close()
  if manager:
    if saved_step != step:
      checkpoint.save(manager, state, config)
    manager.wait_until_finished()
    logging.info('Saved step %d to %s.', step, config.checkpoint_dir)
  if writer:
    writer.close()
  elapsed = time.time() - start
  logging.info('Done: steps %d -> %d in %.1f s (%.2f images/s).', start_step,
               step, elapsed,
               (step - start_step) * config.batch_size / max(elapsed, 1e-9))
  return metrics


def _progress_bar(total: int, initial: int):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
              disable=not sys.stderr.isatty() or jax.process_index() != 0)


def _summary_writer(config):
  if not config.checkpoint_dir or jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(config.checkpoint_dir, 'tensorboard'))


def _skipped_records(config) -> int:
  """Records of this process's shards it could not read (0 on mock data)."""
  if config.mock_data:
    return 0
  from detcon import data  # pylint: disable=g-import-not-at-top
  return data.skipped_records()


def _log_metrics(step, metrics, writer, progress):
  text = ', '.join(f'{k}={v:.5g}' for k, v in sorted(metrics.items()))
  logging.info('step %d: %s', step, text)
  progress.set_postfix(loss=f'{metrics["loss"]:.4f}')
  if writer:
    for k, v in metrics.items():
      writer.add_scalar(k, v, step)
    writer.flush()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  maybe_initialize_distributed()
  config = config_from_flags()
  try:
    metrics = run(config)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'detcon.main_loop: error: {e}')
  # The last logged scalars, one JSON line (the smoke test's output).
  print(json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
