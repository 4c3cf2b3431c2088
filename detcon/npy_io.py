"""Haiku weights as flat NumPy dicts, and the `.npy` files that hold them.

A Haiku tree is module -> {name: array}, parameters and state (BatchNorm
statistics) apart. The flat form is one dict '<module>/<name>' -> array of
both; `save_npy` pickles it in a `.npy` file, as the released
`resnet50_detcon_b_imagenet_1k.npy` is (that one nested module -> {name:
array}; `read_npy` reads both layouts). State entries are those of modules
whose last component is 'mean_ema' or 'var_ema'.
"""

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

Tree = Mapping[str, Mapping[str, Any]]
EMA_NAMES = ('mean_ema', 'var_ema')
# The BatchNorm epsilon the weights were trained with, in our `.npy` files
# (the released files have none: they use 1e-5).
BN_EPS_KEY = 'network/bn_eps'
DEFAULT_BN_EPS = 1e-5


def select(tree: Tree, name: str) -> dict[str, Mapping[str, Any]]:
  """The modules of a Haiku tree named `name` or under it (`name/...`)."""
  return {m: d for m, d in tree.items()
          if m == name or m.startswith(name + '/')}


def subtree(trees, name: str) -> dict[str, Any]:
  """Flat '<module>/<leaf>' entries of the modules `name` and `name/...`."""
  return {f'{m}/{k}': v for tree in trees
          for m, d in select(tree, name).items() for k, v in d.items()}


def encoder_params_from(params: Tree, state: Tree, prefix: str = 'encoder'
                        ) -> tuple[dict[str, dict[str, np.ndarray]],
                                   dict[str, dict[str, np.ndarray]]]:
  """Keeps the encoder's parameters and BatchNorm state, as NumPy arrays.

  Args:
    params: Haiku parameters of the whole (online) network, modules
      'encoder/...', 'projector/...', 'classifier/...' and so on.
    state: its Haiku state (BatchNorm moving statistics).
    prefix: the encoder's module name.

  Returns:
    `(params, state)` restricted to modules under `prefix`, names unchanged,
    so they plug into `networks.ResNetEncoder(name=prefix)`.
  """
  def keep(tree):
    return {m: {k: np.asarray(v) for k, v in d.items()}
            for m, d in select(tree, prefix).items()}
  kept = keep(params)
  if not kept:
    raise ValueError(f'no module named {prefix!r} in the parameters; modules: '
                     f'{sorted(params)[:10]}')
  return kept, keep(state)


def flatten(params: Tree, state: Tree) -> dict[str, np.ndarray]:
  """Merges Haiku params and state into one dict '<module>/<name>' -> array."""
  flat = {}
  for tree in (params, state):
    for module, entries in tree.items():
      for name, value in entries.items():
        flat[f'{module}/{name}'] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]],
                                                dict[str, dict[str, Any]]]:
  """Splits a flat dict back into Haiku `(params, state)` trees.

  State entries are those of the BatchNorm moving averages, i.e. modules whose
  last component is 'mean_ema' or 'var_ema'.
  """
  params, state = {}, {}
  for key, value in flat.items():
    module, sep, name = key.rpartition('/')
    if not sep:
      raise ValueError(f'key {key!r} is not of the form <module>/<name>')
    tree = state if module.rpartition('/')[2] in EMA_NAMES else params
    tree.setdefault(module, {})[name] = np.asarray(value)
  return params, state


def save_npy(path: str, params: Tree, state: Tree,
             bn_eps: float | None = None) -> None:
  """Writes `flatten(params, state)` as a pickled `.npy` dict.

  With `bn_eps`, the dict also records the network's BatchNorm epsilon
  (key `BN_EPS_KEY`, a float64 scalar), which `load_pretrained` reads back.
  """
  flat = flatten(params, state)
  if bn_eps is not None:
    flat[BN_EPS_KEY] = np.float64(bn_eps)
  with open(path, 'wb') as f:
    np.save(f, np.array(flat, dtype=object), allow_pickle=True)
  logging.info('Wrote %s (NumPy dict of Haiku names).', path)


def read_npy(path: str) -> dict[str, np.ndarray]:
  """Reads a pickled `.npy` dict, in our flat or the released nested layout.

  Args:
    path: a file written by `np.save` of a dict: ours ('<module>/<name>' ->
      array, `save_npy`) or the released one (module -> {name: array}, e.g.
      `resnet50_detcon_b_imagenet_1k.npy`).

  Returns:
    '<module>/<name>' -> array; names as in the file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a `.npy` file, or not a pickled dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such .npy file: {path}')
  fix = ('give a pickled dict such as resnet50_detcon_b_imagenet_1k.npy or '
         'the output of python -m detcon.export --format=npy')
  try:
    loaded = np.load(path, allow_pickle=True)
  except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f'{path} is not a readable .npy file ({e}); {fix}'
                     ) from None
  if not (isinstance(loaded, np.ndarray) and loaded.dtype == object
          and loaded.shape == () and isinstance(loaded.item(), Mapping)):
    raise ValueError(f'{path} holds no pickled dict (got '
                     f'{type(loaded).__name__} {np.shape(loaded)}); {fix}')
  return flat_dict(loaded.item())


def flat_dict(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flat '<module>/<name>' -> array from either layout.

  Released files nest module -> {name: array}; ours are flat already.
  """
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update({f'{key}/{name}': np.asarray(v) for name, v in value.items()})
    else:
      flat[str(key)] = np.asarray(value)
  return flat


def load_npy(path: str) -> tuple[dict[str, dict[str, np.ndarray]],
                                 dict[str, dict[str, np.ndarray]]]:
  """Reads a pickled `.npy` dict into `(params, state)`, names unchanged.

  The recorded BatchNorm epsilon (`BN_EPS_KEY`), if any, is left out.
  """
  flat = read_npy(path)
  flat.pop(BN_EPS_KEY, None)
  return unflatten(flat)
