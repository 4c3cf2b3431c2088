"""LARS, the learning-rate schedule and the target EMA schedule."""

import jax
import jax.numpy as jnp
import optax


def warmup_and_total_steps(pretrain_epochs: int, batch_size: int,
                           num_train_images: int,
                           warmup_epochs_divisor: int = 100
                           ) -> tuple[int, int]:
  """Returns (warm-up steps, total steps).

  The warm-up lasts `pretrain_epochs // warmup_epochs_divisor` epochs (the
  original's divisor: 100, i.e. 10 epochs of 1000).
  """
  if warmup_epochs_divisor < 1:
    raise ValueError(f'config.optimizer.warmup_epochs_divisor='
                     f'{warmup_epochs_divisor}: use a positive integer '
                     '(warm-up epochs = pretrain_epochs // it; 100 in the '
                     'original)')
  total = pretrain_epochs * num_train_images // batch_size
  warmup = ((pretrain_epochs // warmup_epochs_divisor) * num_train_images
            // batch_size)
  return warmup, total


def learning_rate_schedule(step, *, batch_size: int, total_steps: int,
                           warmup_steps: int, base_learning_rate: float = 0.2):
  """Linear warm-up from 0 to `base x batch/256`, then cosine decay to 0."""
  peak = base_learning_rate * batch_size / 256
  if warmup_steps <= 0:
    return optax.cosine_decay_schedule(peak, max(total_steps, 1))(step)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  return schedule(step)


def target_ema(step, total_steps: int, base_ema: float = 0.996):
  """EMA decay `1 - (1 - base) (cos(pi k / K) + 1) / 2`, from base to 1."""
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return 1.0 - (1.0 - base_ema) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def is_weight(params):
  """True for conv/linear kernels (`w`); False for biases and BatchNorm."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == 'w', params)


def lars(learning_rate, weight_decay: float = 1.5e-6, eta: float = 1e-3,
         momentum: float = 0.9) -> optax.GradientTransformation:
  """LARS: g + wd w, scaled by eta ||w|| / ||g||, momentum, then `-lr x m`.

  Biases and BatchNorm parameters get neither weight decay nor trust ratio.
  Built from optax's LARS pieces; unlike `optax.lars`, the learning rate
  multiplies the momentum buffer (not the gradient entering it); see
  docs/method.md, Optimisation.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=is_weight),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=eta),
                   is_weight),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(learning_rate),
  )


def ema_update(target, online, tau):
  """`tau x target + (1 - tau) x online`, leaf by leaf."""
  return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)
