"""XLA's cost of a compiled train step, for the benchmarks (no flags)."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from detcon import train


def abstract_batch(config, per_device, mesh):
  """`ShapeDtypeStruct`s of a global batch sharded like `shard_batch`'s."""
  n, s = per_device * jax.device_count(), config.image_size
  sharding = NamedSharding(mesh, P(train.AXIS))

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  return dict(view1=spec((n, s, s, 3), np.uint8),
              view2=spec((n, s, s, 3), np.uint8),
              fh_segmentations1=spec((n, s, s, 1), np.int32),
              fh_segmentations2=spec((n, s, s, 1), np.int32),
              labels=spec((n,), np.int32))


def xla_flops(compiled):
  """XLA's FLOP count of a compiled program (nan when it gives none)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
      cost = cost[0]
    return float(cost['flops'])
  except Exception:  # pylint: disable=broad-except
    return float('nan')


def step_flops_per_image(config, per_device=8):
  """XLA's FLOPs of one train step of `config`, per image.

  The step is compiled for abstract inputs (state and batch shapes only):
  nothing is initialised or run.
  """
  mesh = train.make_mesh()
  config.batch_size = per_device * jax.device_count()
  optimizer, schedule = train.make_optimizer(config, 1000, 10)
  replicated = NamedSharding(mesh, P())
  state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(lambda: train.init_state(
          config, jax.random.PRNGKey(0), optimizer)))
  step = train.make_train_step(config, mesh, optimizer, schedule, 1000)
  compiled = step.lower(state, abstract_batch(config, per_device,
                                              mesh)).compile()
  return xla_flops(compiled) / config.batch_size
