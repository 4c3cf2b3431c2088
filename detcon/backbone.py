"""One frozen backbone: where its weights come from and how it computes.

Every command that runs a pretrained encoder without training it
(`linear_eval`, `dense_eval`, `export`, `predict`, the evaluators and the
evaluations during pretraining) gets a `Backbone` from one of the loaders
below and its features from `feature_map_fn` / `pooled_features_fn`:

  from_checkpoint  the newest checkpoint of a pretraining run (its config's
                   encoder, width multiplier and BatchNorm eps);
  from_npy         a released or exported `.npy` file (`pretrained`;
                   eps from the file when it records one, else 1e-5);
  from_random      random weights (the baseline every comparison needs);
  from_params      the live parameters of a training run;
  load             exactly one of the first three, as command flags give them.

Each loader that is told an `encoder` checks it against the weights and
fails with one message naming both, whatever the entry point.

The features are computed in float32 in inference mode (BatchNorm with its
moving statistics), whatever the precision the backbone was trained in.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from detcon import networks

DEFAULT_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A frozen encoder and everything its network needs.

  `params` and `state` are Haiku trees holding the encoder's modules
  ('encoder/...') and possibly others (heads, classifier), which the
  feature functions ignore.
  """
  encoder: str  # One of networks.ENCODERS.
  width_multiplier: float
  bn_eps: float
  params: hk.Params
  state: hk.State
  source: str  # The checkpoint folder, the .npy path, or 'random weights'.
  step: int | None = None  # The pretraining step, when known.
  seed: int | None = None  # Of random weights.
  # The pretraining run's config (from a checkpoint), else None.
  config: Mapping[str, Any] | None = None

  def describe(self) -> str:
    """One line for logs and reports, e.g. 'ResNet50 from /ckpt (step 9)'."""
    if self.seed is not None:
      return f'{self.encoder} with random weights (seed {self.seed})'
    step = '' if self.step is None else f' (step {self.step})'
    return f'{self.encoder} from {self.source}{step}'

  @property
  def num_features(self) -> int:
    """Channels C of the final feature map."""
    return networks.scaled_channels(networks.ENCODERS[self.encoder][2][-1],
                                   self.width_multiplier)


def encoder_mismatch(encoder: str, found: str, where: str) -> ValueError:
  """The one error for an `--encoder` that the weights do not hold."""
  return ValueError(f'--encoder={encoder} does not match {where}, which '
                    f'holds a {found}; drop --encoder or pass '
                    f'--encoder={found}')


def from_checkpoint(checkpoint_dir: str,
                    encoder: str | None = None) -> Backbone:
  """The online network of the newest checkpoint of a pretraining run.

  Raises:
    FileNotFoundError: no checkpoint.
    ValueError: `encoder` is given and is not the checkpoint's.
  """
  from detcon import checkpoint  # pylint: disable=g-import-not-at-top
  restored = checkpoint.restore_latest(checkpoint_dir)
  m = restored['config']['model']
  if encoder and encoder != m['encoder']:
    raise encoder_mismatch(encoder, m['encoder'],
                           f'the checkpoint in {checkpoint_dir}')
  return Backbone(m['encoder'], float(m['width_multiplier']),
                  float(m['bn_eps']), restored['params'], restored['state'],
                  checkpoint_dir, step=restored['step'],
                  config=restored['config'])


def from_npy(npy: str, encoder: str | None = None) -> Backbone:
  """A released or exported `.npy` file (`pretrained.load_pretrained`).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file does not fit `encoder` (or any encoder).
  """
  from detcon import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  pretrained = pretrained_lib.load_pretrained(npy, encoder)
  return Backbone(pretrained.encoder, pretrained.width_multiplier,
                  pretrained.bn_eps, pretrained.params, pretrained.state, npy)


def from_random(encoder: str = 'ResNet50', width_multiplier: float = 1,
                seed: int = 0) -> Backbone:
  """Randomly initialised weights (BatchNorm statistics 0 and 1)."""
  networks.check_encoder_name(encoder)
  params, state = networks.init_encoder(encoder, width_multiplier,
                                        jax.random.key(seed))
  return Backbone(encoder, width_multiplier, DEFAULT_BN_EPS, params, state,
                  'random weights', seed=seed)


def from_params(params: hk.Params, state: hk.State, model: Mapping[str, Any],
                source: str, step: int | None = None,
                config: Mapping[str, Any] | None = None) -> Backbone:
  """The weights of a (live) network built with the config's `model`."""
  return Backbone(model['encoder'], float(model['width_multiplier']),
                  float(model['bn_eps']), params, state, source, step=step,
                  config=config)


def load(*, checkpoint_dir: str | None = None, npy: str | None = None,
         init: str | None = None, encoder: str | None = None,
         width_multiplier: float = 1, seed: int = 0) -> Backbone:
  """The backbone from exactly one of the three sources of the commands.

  Args:
    checkpoint_dir: a pretraining run's folder (`from_checkpoint`).
    npy: a `.npy` file (`from_npy`).
    init: 'random' (`from_random`).
    encoder: checked against the checkpoint or file; the encoder of random
      weights (default ResNet50).
    width_multiplier: of random weights.
    seed: of random weights.

  Raises:
    ValueError: not exactly one source, an unknown encoder or one that does
      not match the weights.
  """
  sources = [s for s in (checkpoint_dir, npy, init) if s]
  if len(sources) != 1:
    raise ValueError('give exactly one backbone: --checkpoint_dir (a '
                     'pretraining run), --npy (a NumPy dict) or --init=random')
  if checkpoint_dir:
    return from_checkpoint(checkpoint_dir, encoder)
  if npy:
    return from_npy(npy, encoder)
  if init != 'random':
    raise ValueError(f'--init={init}: the only initialisation is random')
  return from_random(encoder or 'ResNet50', width_multiplier, seed)


@functools.cache
def _encode_fn(encoder: str, width_multiplier: float, bn_eps: float,
               pooled: bool):
  """Jitted `(params, state, images) -> float32 features`, one per network.

  The feature map `[B, h, w, C]`, or with `pooled` its mean over space.
  """
  bn = networks.bn_config(0.9, bn_eps, None)  # The decay is unused here.
  model = hk.without_apply_rng(hk.transform_with_state(
      lambda images: networks.ResNetEncoder(encoder, width_multiplier, bn)(
          images, is_training=False)))

  @jax.jit
  def encode(params, state, images):
    features, _ = model.apply(params, state, images.astype(jnp.float32))
    features = features.astype(jnp.float32)
    return jnp.mean(features, axis=(1, 2)) if pooled else features

  return encode


def _encoder_only(tree: Mapping[str, Any]) -> dict[str, Any]:
  """The 'encoder' modules of a Haiku tree, on the default device."""
  return jax.device_put({m: d for m, d in tree.items()
                         if m == 'encoder' or m.startswith('encoder/')})


def feature_map_fn(backbone: Backbone) -> Callable[[Any], jax.Array]:
  """The frozen encoder as a function of images alone.

  The encoder's weights go to the device once, here.

  Returns:
    `f(images)`: float images `[B, S, S, 3]` in [0, 1] -> float32 final
    feature maps `[B, S/32, S/32, C]`, BatchNorm on its moving statistics.
  """
  return _bound(backbone, pooled=False)


def pooled_features_fn(backbone: Backbone) -> Callable[[Any], jax.Array]:
  """As `feature_map_fn`, features averaged over space: float32 `[B, C]`.

  What the linear and k-NN classifiers see.
  """
  return _bound(backbone, pooled=True)


def _bound(backbone: Backbone, pooled: bool) -> Callable[[Any], jax.Array]:
  encode = _encode_fn(backbone.encoder, backbone.width_multiplier,
                      backbone.bn_eps, pooled)
  params, state = _encoder_only(backbone.params), _encoder_only(backbone.state)
  return functools.partial(encode, params, state)
