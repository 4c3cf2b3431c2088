"""The training step of DetCon-B, BYOL, DetCon-S and SimCLR, data parallel.

One step (docs/method.md): augment both views on device, assign each 32x32 cell
of each view's mask to its majority id, sample 16 ids per view, run the online
network (encoder -> mask pooling -> projector [-> predictor], plus the
classifier) on both views, take the representation loss plus the classifier's
cross-entropy, apply LARS. The objectives (`config.objective`, defined in
`objectives`):

* `detcon_b` (default) and `byol` (its image-level baseline): the BYOL
  framework. The online network has a predictor; a target network (encoder
  and projector, an EMA of the online ones) projects both views; the loss
  compares online predictions with target projections, and the target moves
  towards the online network after the step.
* `detcon_s` and `simclr` (its image-level baseline): the SimCLR framework.
  No predictor, no target: both views go through the online network, and the
  contrastive detection loss takes the online projections as predictions and
  as candidates (the gradient flows through both). The `TrainState`'s target
  fields are then empty dicts.

The image-level objectives use one global mask per image (all ids 0).

The step runs under `shard_map` over a 1-D mesh of every device of every
process (axis `data`): each device holds `batch / devices` images; BatchNorm
statistics are averaged over the axis, candidates are gathered as negatives,
and the loss is averaged over the axis inside the differentiated function, so
the gradient is exactly that of the loss on the global batch.
"""

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import ml_collections
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from detcon import augment, masks, networks, objectives, optim

AXIS = 'data'
TARGET_MODULES = ('encoder', 'projector')  # The target has no predictor.
TARGET_INITS = ('independent', 'copy')


class TrainState(NamedTuple):
  """Everything a checkpoint holds; every leaf is replicated on all devices."""
  step: jax.Array  # int32 scalar.
  params: hk.Params  # Online network.
  state: hk.State  # Online BatchNorm statistics.
  # EMA of the online encoder and projector; {} without a target network.
  target_params: hk.Params
  target_state: hk.State  # The target's own BatchNorm statistics, or {}.
  opt_state: optax.OptState
  rng: jax.Array  # Base key; each step folds in the step and device.


def has_target(config: ml_collections.ConfigDict) -> bool:
  """Whether the objective uses BYOL's predictor and EMA target network."""
  return objectives.get(config.objective).has_target


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for the step's settings that cannot run.

  Raises:
    ValueError: unknown `objective` or `target_init`, negative `num_classes`,
      or an `image_size` that is not a multiple of 32.
  """
  objectives.get(config.objective)
  if config.target_init not in TARGET_INITS:
    raise ValueError(f'target_init {config.target_init!r}: use independent '
                     '(the original: the target gets its own random '
                     'initialisation) or copy (the target starts as the '
                     'online network)')
  if config.num_classes < 0:
    raise ValueError(f'num_classes={config.num_classes}: use the number of '
                     'classes of the records, or 0 for no online classifier')
  grid_size(config.image_size)


def grid_size(image_size: int) -> int:
  """Cells per side of the encoder's output (stride 32)."""
  if image_size % 32:
    raise ValueError(f'--image_size={image_size} must be a multiple of 32 '
                     '(the encoder output stride), e.g. 64, 96, 224')
  return image_size // 32


class Network(NamedTuple):
  """The run's network: two Haiku functions over one parameter tree.

  The encoder and the heads are separate so that the masks used for pooling
  can be computed between them, from the batch's masks or from the
  encoder's features (see `view_outputs`). Parameter and state names are
  those of `networks` (`encoder/...`, `projector/...`, `predictor/...`,
  `classifier/...`).

  Attributes:
    init: `(rng, images, pool_weights, online) -> (params, state)`.
    encode: `(params, state, rng, images) -> (features, state)`: images
      float `[B, S, S, 3]` in [0, 1] to float32 features `[B, cells, C]`
      (cells in row-major order).
    heads: `(params, state, rng, features, pool_weights, online) ->
      (outputs, state)`: `pool_weights` `[B, K, cells]`; outputs
      `projection` `[B, K, D]` and, when `online`, `prediction` `[B, K, D]`
      (objectives with a target only) and classifier `logits`
      `[B, num_classes]` (when `num_classes > 0`).
  """
  init: Callable[..., tuple[hk.Params, hk.State]]
  encode: Callable[..., tuple[jax.Array, hk.State]]
  heads: Callable[..., tuple[dict[str, jax.Array], hk.State]]


def make_network(config: ml_collections.ConfigDict,
                 axis_name: str | None) -> Network:
  """The encoder and heads of `config.model` (a `Network`).

  Always in training mode (BatchNorm on batch statistics, averaged over
  `axis_name`). The compute dtype (`config.dtype`) holds inside this network
  only: its mixed-precision policies are pushed while it is traced, so other
  networks of the process (a frozen float32 encoder) are unaffected. In
  float32 no policy is pushed: every cast would be to the dtype at hand.
  """
  m = config.model
  bn = networks.bn_config(m.bn_decay, m.bn_eps, axis_name)
  policy = jmp.get_policy(f'params=float32,compute={config.dtype},'
                          'output=float32')
  # BatchNorm computes in float32 and hands the compute dtype on.
  bn_policy = jmp.get_policy(
      f'params=float32,compute=float32,output={config.dtype}')

  def precision() -> contextlib.ExitStack:
    scope = contextlib.ExitStack()
    if config.dtype == 'float32':  # Nothing to cast; tracing is faster.
      return scope
    for cls, p in ((networks.ResNetEncoder, policy), (networks.MLP, policy),
                   (hk.BatchNorm, bn_policy)):
      scope.enter_context(hk.mixed_precision.push_policy(cls, p))
    return scope

  def functions():
    encoder = networks.ResNetEncoder(m.encoder, m.width_multiplier, bn)
    projector = networks.MLP(m.projector_hidden_size,
                             m.projector_output_size, bn, name='projector')

    def encode(images):
      with precision():
        features = encoder(images, is_training=True)
      b, _, _, c = features.shape
      return features.reshape(b, -1, c).astype(jnp.float32)

    def heads(features, pool_weights, online):
      with precision():
        pooled = jnp.einsum('bkc,bcd->bkd', pool_weights, features)
        out = {'projection': projector(pooled, True)}
        if online and has_target(config):
          out['prediction'] = networks.MLP(
              m.predictor_hidden_size, m.projector_output_size, bn,
              name='predictor')(out['projection'], True)
        if online and config.num_classes:
          out['logits'] = hk.Linear(config.num_classes, name='classifier')(
              jax.lax.stop_gradient(features.mean(1)))
      return out

    def init(images, pool_weights, online):
      return heads(encode(images), pool_weights, online)

    return init, (encode, heads)

  net = hk.multi_transform_with_state(functions)
  return Network(net.init, *net.apply)


def target_subset(tree):
  """The encoder and projector entries of a Haiku params or state tree."""
  return hk.data_structures.filter(
      lambda module, *_: module.split('/')[0] in TARGET_MODULES, tree)


def make_optimizer(config, total_steps: int, warmup_steps: int):
  o = config.optimizer

  def schedule(step):
    return optim.learning_rate_schedule(
        step, batch_size=config.batch_size, total_steps=total_steps,
        warmup_steps=warmup_steps, base_learning_rate=o.base_learning_rate)

  return optim.lars(schedule, o.weight_decay, o.eta, o.momentum), schedule


def _fresh_state_fn(config, optimizer) -> Callable[[jax.Array], TrainState]:
  """The jitted `rng -> TrainState` of freshly initialised networks."""
  check_config(config)
  net = make_network(config, axis_name=None)
  size, k = config.image_size, config.detcon.num_samples
  cells = grid_size(size) ** 2

  @jax.jit
  def init(rng):
    init_rng, net_rng, target_rng = jax.random.split(rng, 3)
    images = jnp.zeros((2, size, size, 3), jnp.float32)
    weights = jnp.full((2, k, cells), 1.0 / cells)
    params, state = net.init(net_rng, images, weights, True)
    if not has_target(config):
      target_params, target_state = {}, {}
    elif config.target_init == 'copy':
      target_params, target_state = target_subset(params), target_subset(state)
    else:
      target_params, target_state = net.init(target_rng, images, weights,
                                             False)
    # Copies: the step donates its input, so no two leaves may share memory.
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, state=state,
        target_params=jax.tree.map(jnp.copy, target_params),
        target_state=jax.tree.map(jnp.copy, target_state),
        opt_state=optimizer.init(params), rng=init_rng)

  return init


def init_state(config, rng: jax.Array, optimizer) -> TrainState:
  """Initialises online, target and optimiser state (jitted, on one device).

  The target network (objectives with one) follows `config.target_init`:
  'independent' (the original's) initialises its encoder and projector with
  a key of its own, and the EMA then draws it towards the online network;
  'copy' starts it equal to the online encoder and projector. Without a
  target network the target fields are empty dicts. With
  `config.init_from`, online and target networks both start from that file
  (`pretrained_lib.init_from_pretrained`).
  """
  ts = _fresh_state_fn(config, optimizer)(rng)
  if config.init_from:
    ts = _from_pretrained(ts, config, optimizer)
  return ts


def state_like(config, optimizer, mesh) -> TrainState:
  """`init_state`'s structure as `jax.ShapeDtypeStruct`s replicated on `mesh`.

  What a checkpoint is restored into: shapes and dtypes only, so nothing
  is initialised (or read from `config.init_from`) to be overwritten.
  """
  shapes = jax.eval_shape(_fresh_state_fn(config, optimizer),
                          jax.ShapeDtypeStruct((2,), jnp.uint32))
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def _from_pretrained(ts: TrainState, config, optimizer) -> TrainState:
  """`ts` with online and target networks loaded from `config.init_from`."""
  from detcon import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  pretrained = pretrained_lib.load_pretrained(
      config.init_from, config.model.encoder, config.model.width_multiplier)
  params, state = pretrained_lib.init_from_pretrained(ts.params, ts.state,
                                                      pretrained)
  target_params = target_state = {}
  if has_target(config):
    target_params, target_state = target_subset(params), target_subset(state)
  logging.info('Initialised the online%s network from %s.',
               ' and target' if has_target(config) else '', config.init_from)

  def copy(tree):  # The step donates its input: no shared buffers.
    return jax.tree.map(jnp.array, tree)

  return ts._replace(params=copy(params), state=copy(state),
                     target_params=copy(target_params),
                     target_state=copy(target_state),
                     opt_state=optimizer.init(params))


def sample_ids(keys, cell_ids, config):
  """Sampled mask ids `[B, K]`, each image drawing with its own key.

  Args:
    keys: `[B]` PRNG keys, one per image.
    cell_ids: int32 `[B, cells]` majority id per cell.
    config: the run's config (`detcon`).
  """
  d = config.detcon
  return jax.vmap(lambda k, c: masks.sample_mask_ids(
      k, c[None], d.num_samples, d.max_mask_id)[0])(keys, cell_ids)


def sample_view_masks(keys, fh_masks, config):
  """Cell ids and sampled mask ids of one view, as the train step draws them.

  Args:
    keys: `[B]` PRNG keys, one per image.
    fh_masks: int `[B, S, S, 1]` masks (the config's `fh_mask_to_use`).
    config: the run's config (`image_size`, `detcon`).

  Returns:
    (int32 `[B, cells]` majority id per cell, int32 `[B, K]` sampled ids).
  """
  cell_ids = masks.cell_mask_ids(fh_masks[..., 0],
                                 grid_size(config.image_size),
                                 config.detcon.max_mask_id)
  return cell_ids, sample_ids(keys, cell_ids, config)


def _view_pooling(keys, fh_masks, config):
  """Sampled ids `[B, K]` and weights from one view's masks `[B, S, S, 1]`.

  The input pipeline keeps only the config's `fh_mask_to_use` channel.
  """
  if objectives.get(config.objective).image_level:
    b, cells = fh_masks.shape[0], grid_size(config.image_size) ** 2
    return jnp.zeros((b, 1), jnp.int32), masks.global_pooling_weights(b, cells)
  cell_ids, ids = sample_view_masks(keys, fh_masks, config)
  return ids, masks.pooling_weights(cell_ids, ids)


def _forward(net: Network, params, state, images, pool_weights, online):
  """The encoder, then the heads, on one view: `(outputs, state)`.

  Masks computed from the network's own features would be drawn here,
  between `net.encode` and `net.heads`, from the features `[B, cells, C]`.
  """
  features, state = net.encode(params, state, None, images)
  return net.heads(params, state, None, features, pool_weights, online)


def _image_keys(ts: TrainState, local_batch: int) -> jax.Array:
  """`[B, 4]` keys per image, from its index in the global batch.

  Keying by the global index makes augmentations and mask samples the same
  whatever the number of devices and processes.
  """
  first = jax.lax.axis_index(AXIS) * local_batch
  step_rng = jax.random.fold_in(ts.rng, ts.step)
  index = first + jnp.arange(local_batch)
  return jax.vmap(
      lambda i: jax.random.split(jax.random.fold_in(step_rng, i), 4))(index)


def _local_step(ts: TrainState, batch, *, config, net, optimizer, schedule,
                total_steps: int):
  """The step on one device's shard of the batch (inside `shard_map`)."""
  keys = _image_keys(ts, batch['labels'].shape[0])
  aug_cfg = config.augment.to_dict()
  view1 = augment.augment_view(keys[:, 0], batch['view1'], aug_cfg, 0)
  view2 = augment.augment_view(keys[:, 1], batch['view2'], aug_cfg, 1)
  ids1, weights1 = _view_pooling(keys[:, 2], batch['fh_segmentations1'],
                                 config)
  ids2, weights2 = _view_pooling(keys[:, 3], batch['fh_segmentations2'],
                                 config)

  def loss_fn(params):
    online1, state = _forward(net, params, ts.state, view1, weights1, True)
    online2, state = _forward(net, params, state, view2, weights2, True)
    if has_target(config):
      target1, tstate = _forward(net, ts.target_params, ts.target_state,
                                 view1, weights1, False)
      target2, tstate = _forward(net, ts.target_params, tstate, view2,
                                 weights2, False)
      pred1, pred2 = online1['prediction'], online2['prediction']
      cand1 = jax.lax.stop_gradient(target1['projection'])
      cand2 = jax.lax.stop_gradient(target2['projection'])
    else:  # SimCLR framework: each view's projections are the candidates.
      tstate = ts.target_state
      pred1 = cand1 = online1['projection']
      pred2 = cand2 = online2['projection']
    repr_loss = objectives.get(config.objective).loss(
        pred1, pred2, cand1, cand2, ids1, ids2, config.detcon.temperature,
        AXIS)
    metrics = dict(repr_loss=jax.lax.pmean(repr_loss, AXIS),
                   **_classifier_metrics(online1.get('logits'),
                                         batch['labels']))
    loss = metrics['repr_loss'] + metrics['classif_loss']
    return loss, (state, tstate, metrics)

  (loss, (state, target_state, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(ts.params)
  updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
  params = optax.apply_updates(ts.params, updates)
  metrics = dict(metrics, loss=loss, lr=schedule(ts.step))
  target_params = ts.target_params
  if has_target(config):
    tau = optim.target_ema(ts.step, total_steps, config.base_target_ema)
    target_params = optim.ema_update(target_params, target_subset(params),
                                     tau)
    metrics['tau'] = tau
  new = TrainState(step=ts.step + 1, params=params, state=state,
                   target_params=target_params, target_state=target_state,
                   opt_state=opt_state, rng=ts.rng)
  return new, metrics


def _classifier_metrics(logits, labels):
  """The online classifier's cross-entropy and top-1 over the global batch.

  Args:
    logits: `[B, num_classes]`, or None without a classifier (then
      `classif_loss` is 0 and there is no `top1`).
    labels: int32 `[B]`, 0-based; -1 (a record without a class) counts in
      neither metric.

  Returns:
    dict of scalars, averaged over the labelled images of all devices (0 when
    there are none).
  """
  if logits is None:
    return dict(classif_loss=jnp.zeros((), jnp.float32))
  labelled = labels >= 0
  count = jnp.maximum(jax.lax.psum(labelled.sum(), AXIS), 1)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.maximum(labels, 0))
  correct = jnp.argmax(logits, -1) == labels

  def mean(x):
    return jax.lax.psum(jnp.where(labelled, x, 0).sum(), AXIS) / count

  return dict(classif_loss=mean(cross_entropy), top1=mean(correct))


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (AXIS,))


def make_train_step(config, mesh, optimizer, schedule, total_steps: int):
  """Returns the jitted `step(state, batch) -> (state, metrics)`.

  `batch` leaves are global arrays sharded along their first axis over the
  mesh (see `shard_batch`); state and metrics are replicated.
  """
  net = make_network(config, axis_name=AXIS)
  local = jax.shard_map(
      lambda ts, b: _local_step(ts, b, config=config, net=net,
                                optimizer=optimizer, schedule=schedule,
                                total_steps=total_steps),
      mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(local, donate_argnums=0)


def replicate(tree, mesh):
  """Places a host tree on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(local_batch: Mapping[str, Any], mesh):
  """Turns this process's batch `[local_devices, b, ...]` into global arrays.

  The leading two axes are merged, so each device gets its `b` images; with
  several processes the global batch is the concatenation of theirs.
  """
  sharding = NamedSharding(mesh, P(AXIS))

  def one(x):
    x = x.reshape(-1, *x.shape[2:])
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(one, dict(local_batch))
