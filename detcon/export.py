"""Pretrained weights in and out: released `.npy`, torchvision, detectron2.

Reading (`load_pretrained`, `import_npy`, every `--npy` flag) takes both
  ours      the flat dict `save_npy` writes (below);
  released  DeepMind's `resnet50_detcon_b_imagenet_1k.npy`,
            `resnet200_detcon_b_imagenet_1k.npy` and the COCO-pretrained
            ResNet-50s: `np.load(path, allow_pickle=True).item()` is a dict
            Haiku module -> {array name -> array}, parameters and BatchNorm
            statistics together, the encoder under 'res_net50/~/' (or any
            prefix) with our module names below it, and the heads
            'projector/...', 'predictor/...' (Linear -> BatchNorm -> ReLU ->
            Linear, mapped by structure to our `networks.MLP` names) and
            'classifier' {w [2048, 1000], b [1000]} (the online ImageNet
            classifier, sorted-synset order, 0-based).
The encoder (block counts per group, bottleneck or not) and its width
multiplier are inferred from the shapes, or checked when given; a file that
does not fit gets a list of its missing, unexpected and mis-shaped names.
`init_from_pretrained` puts the weights into a freshly initialised network
(`python -m detcon.main_loop --config.init_from=<npy>`).

Formats written
  npy          A pickled dict (read it with `np.load(path, allow_pickle=True)
               .item()`, like the released `resnet50_detcon_b_imagenet_1k.npy`)
               of flat keys '<module>/<name>' -> array, Haiku names, e.g.
               'encoder/initial_conv/w' [7, 7, 3, 64] and the BatchNorm
               statistics 'encoder/initial_batchnorm/~/mean_ema/average'
               [1, 1, 1, 64] (and its 'counter', 'hidden'), and
               'network/bn_eps' (a float: the BatchNorm epsilon the weights
               were trained with; files without it, as the released ones,
               mean 1e-5). From a
               checkpoint it holds the online encoder; converted from a
               released file, also its heads ('projector/linear_0/w', ...,
               'classifier/w'). `load_npy` reads it back into Haiku trees
               that plug into `networks.ResNetEncoder`; `load_pretrained`
               also checks the names and shapes.
  torchvision  A `torchvision.models.resnet*` `state_dict` (`.pth` of torch
               tensors, or `.npz` of the same keys without torch): convolutions
               HWIO -> OIHW, BatchNorm scale/offset/moving mean/moving variance
               [1, 1, 1, C] -> weight/bias/running_mean/running_var [C],
               num_batches_tracked = the EMA update counter. `fc.weight`
               [num_classes, C] / `fc.bias` hold the online classifier
               (trained on stop-gradient features during pretraining) when the
               tree has one, otherwise zeros of shape [1000, C] / [1000], so
               that `load_state_dict(..., strict=True)` works on
               `resnet50(num_classes=K)` (K = classifier classes, or 1000).
  detectron2   The torchvision dict renamed as detectron2's
               `tools/convert-torchvision-to-d2.py` does (conv1 -> stem.conv1,
               bn1 -> stem.conv1.norm, layerN -> res{N+1}, bnI -> convI.norm,
               downsample.0/1 -> shortcut/shortcut.norm), without fc and
               num_batches_tracked, pickled as {'model': ..., '__author__':
               'torchvision', 'matching_heuristics': True}. Use it like any
               torchvision backbone in detectron2: RESNETS.STRIDE_IN_1X1=False,
               INPUT.FORMAT='RGB', PIXEL_MEAN=[123.675, 116.28, 103.53],
               PIXEL_STD=[58.395, 57.12, 57.375].

Both the Haiku encoder and torchvision's ResNet put the stride of a bottleneck
block on its 3x3 convolution ("ResNet v1.5"); torchvision models expect images
normalised by the ImageNet mean and std, which our encoder does internally, so
the usual torchvision preprocessing applies unchanged.

The one known difference is padding. Haiku uses TF 'SAME' padding, which for a
stride-2 layer pads asymmetrically, more on the bottom/right: on an even input
the 7x7 stride-2 stem convolution pads 2 top/left and 3 bottom/right, a 3x3
stride-2 convolution and the 3x3 stride-2 max-pool pad 0 top/left and 1
bottom/right. PyTorch pads symmetrically (3 and 1 on every side). Stride-1
layers and the 1x1 stride-2 shortcuts are identical. The exported weights
therefore give slightly different features in an unmodified torchvision model
(fine for fine-tuning); `patch_tf_same_padding` makes a torchvision model pad
like Haiku, after which the features match to float precision.

Encoders whose names torchvision lacks are mapped with the same scheme
(`make_torchvision_model` builds ResNet-200 as `ResNet(Bottleneck, [3, 24, 36,
3])`). A width multiplier > 1 widens every layer, stem included, which
torchvision's `wide_resnet*` models do not: those state dicts keep torchvision
names but fit no torchvision constructor.

Usage:
  python -m detcon.export --checkpoint_dir=/tmp/detcon_ckpt \\
      --output=/tmp/resnet50_detcon_b.pth --format=torchvision
  python -m detcon.export --npy=resnet50_detcon_b_imagenet_1k.npy \\
      --output=resnet50_detcon_b.pth --format=torchvision
"""

import collections
import functools
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from detcon import backbone, log_setup, networks

Tree = Mapping[str, Mapping[str, Any]]

# Torchvision constructor of each encoder (None: none in torchvision).
TORCHVISION_NAMES = {
    'ResNet18': 'resnet18',
    'ResNet34': 'resnet34',
    'ResNet50': 'resnet50',
    'ResNet101': 'resnet101',
    'ResNet152': 'resnet152',
    'ResNet200': None,  # Built from torchvision's ResNet class.
}
_EMA_NAMES = ('mean_ema', 'var_ema')
_BN_LEAVES = ('scale', 'offset', 'average', 'hidden')
_HEADS = ('projector', 'predictor')
# The BatchNorm epsilon the weights were trained with, in our `.npy` files
# (the released files have none: they use 1e-5).
BN_EPS_KEY = 'network/bn_eps'
DEFAULT_BN_EPS = 1e-5
# One leaf of the encoder: '<prefix><module>[/~/<ema>]/<name>', the prefix
# 'encoder/' in ours, 'res_net50/~/' or 'res_net200/~/' in the released files.
_ENCODER_KEY_RE = re.compile(
    r'(?P<prefix>|.*?/)(?:initial_conv|initial_batchnorm|'
    r'block_group_(?P<group>\d+)/~/block_(?P<block>\d+)/~/'
    r'(?:conv_(?P<conv>\d+)|batchnorm_\d+|shortcut_conv|shortcut_batchnorm))'
    r'(?:/~/(?:mean_ema|var_ema))?/[^/]+')
_BLOCK_RE = re.compile(
    r'block_group_(\d+)/~/block_(\d+)/~/'
    r'(conv_\d|batchnorm_\d|shortcut_conv|shortcut_batchnorm)$')


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
    return {m: {k: np.asarray(v) for k, v in d.items()} for m, d in tree.items()
            if m == prefix or m.startswith(prefix + '/')}
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
    tree = state if module.rpartition('/')[2] in _EMA_NAMES else params
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
  return _flat(loaded.item())


def _flat(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def encoder_shapes(encoder: str, width_multiplier: float = 1
                   ) -> tuple[Tree, Tree]:
  """`(params, state)` trees of `jax.ShapeDtypeStruct` of our encoder.

  Cached: treat the trees as read-only.
  """
  return _encoder_shapes(encoder, width_multiplier)


@functools.cache
def _encoder_shapes(encoder: str, width_multiplier: float) -> tuple[Tree, Tree]:
  bn = networks.bn_config(0.9, 1e-5, None)  # Shapes depend on neither.
  model = hk.transform_with_state(
      lambda x: networks.ResNetEncoder(encoder, width_multiplier, bn)(x, True))
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def _specs(trees) -> dict[str, jax.ShapeDtypeStruct]:
  """'<module>/<name>' -> shape and dtype of the leaves of Haiku trees."""
  return _flat_specs({f'{m}/{k}': v for tree in trees
                      for m, d in tree.items() for k, v in d.items()})


def _flat_specs(flat: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  """name -> shape and dtype of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype)
          for k, v in flat.items()}


def _conform(got: Mapping[str, np.ndarray],
             want: Mapping[str, jax.ShapeDtypeStruct],
             label=lambda key: key) -> tuple[dict[str, np.ndarray], list[str],
                                             list[str], list[str]]:
  """Matches arrays to the names, shapes and dtypes a network expects.

  A BatchNorm array (scale, offset, average, hidden) of another shape but the
  same size is reshaped, e.g. a head's [1, 1, C] to our [1, C].

  Args:
    got: name -> array.
    want: name -> expected shape and dtype.
    label: how a name is shown in the lists.

  Returns:
    (name -> array cast to its dtype, for the names that fit; the missing,
    unexpected and mis-shaped names as shown to the user).
  """
  arrays, misshaped = {}, []
  for key in sorted(set(got) & set(want)):
    value, shape = np.asarray(got[key]), tuple(want[key].shape)
    if (value.shape != shape and value.size == math.prod(shape)
        and key.rpartition('/')[2] in _BN_LEAVES):
      value = value.reshape(shape)
    if value.shape == shape:
      arrays[key] = value.astype(want[key].dtype, copy=False)
    else:
      misshaped.append(f'{label(key)}: {value.shape} (expected {shape})')
  return (arrays, [label(k) for k in sorted(set(want) - set(got))],
          [label(k) for k in sorted(set(got) - set(want))], misshaped)


def _listing(header: str, missing: Sequence[str], unexpected: Sequence[str],
             misshaped: Sequence[str], limit: int = 20) -> str:
  """The error text: a header, then each non-empty list (first `limit`)."""
  lines = [header]
  for title, items in (('missing', missing), ('unexpected', unexpected),
                       ('wrong shape', misshaped)):
    if items:
      lines.append(f'  {len(items)} {title}:')
      lines.extend(f'    {item}' for item in items[:limit])
      if len(items) > limit:
        lines.append(f'    ... and {len(items) - limit} more')
  return '\n'.join(lines)


def check_names(params: Tree, state: Tree, reference: tuple[Tree, Tree],
                what: str = 'checkpoint') -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped entries."""
  _, missing, unexpected, misshaped = _conform(flatten(params, state),
                                               _specs(reference))
  if missing or unexpected or misshaped:
    raise ValueError(_listing(f'{what} does not match the encoder:', missing,
                              unexpected, misshaped))


class Pretrained(NamedTuple):
  """Pretrained weights keyed by our Haiku module names.

  `params` holds 'encoder/...' (as `networks.ResNetEncoder(name='encoder')`
  names it) and, when the file has them, 'projector/...' and
  'predictor/...' (`networks.MLP`: linear_0, batchnorm, linear_1) and
  'classifier' {w [C, K], b [K]}; `state` their BatchNorm statistics
  ('<batchnorm>/~/mean_ema', '.../~/var_ema'). Arrays are NumPy, float32
  (counters int32), in our shapes.
  """
  encoder: str  # One of networks.ENCODERS.
  width_multiplier: float
  params: dict[str, dict[str, np.ndarray]]
  state: dict[str, dict[str, np.ndarray]]
  bn_eps: float = DEFAULT_BN_EPS  # BatchNorm epsilon the file records.


@functools.cache
def _mlp_specs(head: str, inputs: int, hidden: int, outputs: int
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """Leaves of `networks.MLP(hidden, outputs, name=head)` on `inputs`."""
  bn = networks.bn_config(0.9, 1e-5, None)
  model = hk.transform_with_state(
      lambda x: networks.MLP(hidden, outputs, bn, name=head)(x, True))
  return _specs(jax.eval_shape(model.init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, inputs), np.float32)))


def _closest_encoder(rel: Mapping[str, Any]) -> str:
  """The encoder whose convolutions (group, block, index) best fit `rel`.

  Exact for a complete file; for a truncated one, the nearest, so that the
  error lists only what differs.
  """
  found = set()
  for key in rel:
    m = _ENCODER_KEY_RE.fullmatch(key)
    if m['conv'] is not None:
      found.add((int(m['group']), int(m['block']), int(m['conv'])))

  def distance(name):
    blocks, bottleneck, _ = networks.ENCODERS[name]
    want = {(g, b, i) for g, n in enumerate(blocks) for b in range(n)
            for i in range(3 if bottleneck else 2)}
    return len(want ^ found)

  return min(networks.ENCODERS, key=distance)


def _width(rel: Mapping[str, np.ndarray]) -> float:
  """The width multiplier: the stem's output channels / 64 (1 if unknown)."""
  for key in ('initial_conv/w', 'initial_batchnorm/scale',
              'block_group_0/~/block_0/~/conv_0/w'):
    if key in rel and np.ndim(rel[key]):
      channels = np.shape(rel[key])[-1]
      if channels:
        return channels // 64 if channels % 64 == 0 else channels / 64
  return 1


def _head_by_structure(head: str, entries: Mapping[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Renames one MLP head's entries to ours from their structure alone.

  Within '<head>/...': the module with a 2-D `w` and a `b` is the first
  Linear (linear_0), the one with a 2-D `w` only the second (linear_1), the
  one with scale/offset the BatchNorm, and its '~/mean_ema', '~/var_ema'
  modules its statistics.

  Returns:
    (our '<head>/...' name -> array, the file's names that fit no role).

  Raises:
    ValueError: two modules fit the same role.
  """
  modules = collections.defaultdict(dict)
  for key, value in entries.items():
    module, _, name = key.rpartition('/')
    modules[module][name] = value
  roles, unplaced = {}, []
  for module, leaves in sorted(modules.items()):
    if module.rpartition('/~/')[2] in _EMA_NAMES:
      continue
    if 'scale' in leaves or 'offset' in leaves:
      role = 'batchnorm'
    elif np.ndim(leaves.get('w')) == 2:
      role = 'linear_0' if 'b' in leaves else 'linear_1'
    else:
      unplaced.extend(f'{module}/{name}' for name in sorted(leaves))
      continue
    if role in roles:
      raise ValueError(f'{head}: both {roles[role]} and {module} look like '
                       f'its {role} (a {head} is Linear with bias -> '
                       'BatchNorm -> ReLU -> Linear without bias)')
    roles[role] = module
  out = {f'{head}/{role}/{name}': value for role, module in roles.items()
         for name, value in modules[module].items()}
  for module, leaves in sorted(modules.items()):
    parent, _, ema = module.rpartition('/~/')
    if ema not in _EMA_NAMES:
      continue
    if parent == roles.get('batchnorm'):
      out.update({f'{head}/batchnorm/~/{ema}/{name}': value
                  for name, value in leaves.items()})
    else:
      unplaced.extend(f'{module}/{name}' for name in sorted(leaves))
  return out, unplaced


def _head_sizes(flat: Mapping[str, Any], head: str) -> tuple[int, int, int]:
  """(inputs, hidden, outputs) of a head from its Linear weights (0: none)."""
  first = np.shape(flat.get(f'{head}/linear_0/w', ()))
  second = np.shape(flat.get(f'{head}/linear_1/w', ()))
  scale = flat.get(f'{head}/batchnorm/scale')
  hidden = (first[1] if len(first) == 2 else second[0] if len(second) == 2
            else np.size(scale) if scale is not None else 0)
  return (first[0] if len(first) == 2 else 0, hidden,
          second[1] if len(second) == 2 else 0)


def pretrained_from_dict(tree: Mapping[str, Any], encoder: str | None = None,
                         width_multiplier: float | None = None,
                         what: str = 'the weights') -> Pretrained:
  """Reads pretrained weights of our flat or the released nested layout.

  The encoder's modules are found under any prefix ('encoder/' in ours,
  'res_net50/~/' or 'res_net200/~/' in the released files) by their names
  (initial_conv, initial_batchnorm, block_group_G/~/block_B/~/...). The
  heads 'projector/...' and 'predictor/...' are mapped by structure
  (`_head_by_structure`), 'classifier' {w, b} as it is.

  Args:
    tree: '<module>/<name>' -> array, or module -> {name: array}, parameters
      and BatchNorm statistics together.
    encoder: one of `networks.ENCODERS` to check against; None or '': the
      one whose block structure the file has.
    width_multiplier: to check against; None or 0: the stem's width / 64.
    what: the source, as named in errors (e.g. its path).

  Returns:
    The `Pretrained` weights, under our names and in our shapes.

  Raises:
    ValueError: an unknown encoder, or the arrays do not fit it: lists the
      missing, unexpected and mis-shaped names.
  """
  if encoder:
    networks.check_encoder_name(encoder)
  flat = _flat(tree)
  bn_eps = float(flat.pop(BN_EPS_KEY, DEFAULT_BN_EPS))
  prefixes = collections.Counter(
      m['prefix'] for m in map(_ENCODER_KEY_RE.fullmatch, flat) if m)
  prefix = prefixes.most_common(1)[0][0] if prefixes else 'encoder/'
  rel, parts, others = {}, collections.defaultdict(dict), []
  for key, value in flat.items():
    m = _ENCODER_KEY_RE.fullmatch(key)
    top = key.split('/')[0]
    if m and m['prefix'] == prefix:
      rel[key.removeprefix(prefix)] = value
    elif top in (*_HEADS, 'classifier'):
      parts[top][key] = value
    else:
      others.append(key)
  inferred = not encoder
  encoder = encoder or (_closest_encoder(rel) if rel else 'ResNet50')
  width = width_multiplier or _width(rel)
  results = [
      _conform({f'encoder/{k}': v for k, v in rel.items()},
               _specs(encoder_shapes(encoder, width)),
               label=lambda k: prefix + k.removeprefix('encoder/')),
      ({}, [], others, [])]
  features = inputs = networks.scaled_channels(
      networks.ENCODERS[encoder][2][-1], width)
  for head in _HEADS:
    if head in parts:
      mapped, unplaced = _head_by_structure(head, parts[head])
      own_inputs, hidden, outputs = _head_sizes(mapped, head)
      specs = _mlp_specs(head, inputs or own_inputs or 1, hidden or 1,
                         outputs or 1)
      results += [_conform(mapped, specs), ({}, [], unplaced, [])]
      inputs = outputs  # The predictor reads the projector's output.
  if 'classifier' in parts:
    classes = (np.shape(parts['classifier'].get('classifier/w')) or (0,))[-1]
    results.append(_conform(parts['classifier'], {
        'classifier/w': jax.ShapeDtypeStruct((features, classes), np.float32),
        'classifier/b': jax.ShapeDtypeStruct((classes,), np.float32)}))
  missing, unexpected, misshaped = (sorted(sum((r[i] for r in results), []))
                                    for i in (1, 2, 3))
  if missing or unexpected or misshaped:
    how = 'inferred from its shapes' if inferred else 'as asked'
    header = (f'{what} does not fit {encoder} (width multiplier {width}, '
              f'{how}; encoder prefix {prefix!r}):')
    if not rel:
      header = (f'{what} holds no ResNet encoder of Haiku names (such as '
                "'res_net50/~/initial_conv/w' or 'encoder/initial_conv/w'); "
                f'against {encoder}:')
    raise ValueError(_listing(header, missing, unexpected, misshaped))
  params, state = unflatten({k: v for r in results for k, v in r[0].items()})
  logging.info('Read %s: %s, width multiplier %d (prefix %r)%s.', what,
               encoder, width, prefix,
               ''.join(f', {p}' for p in (*_HEADS, 'classifier')
                       if p in parts))
  return Pretrained(encoder, width, params, state, bn_eps)


def load_pretrained(path: str, encoder: str | None = None,
                    width_multiplier: float | None = None) -> Pretrained:
  """Reads a released or exported `.npy` file (`pretrained_from_dict`).

  Args:
    path: e.g. `resnet50_detcon_b_imagenet_1k.npy`, or `save_npy`'s output.
    encoder: the encoder to check against; None: inferred from the shapes.
    width_multiplier: to check against; None: inferred.

  Returns:
    `Pretrained(encoder, width_multiplier, params, state)` under our names.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unreadable file, or one that does not fit: lists the
      missing, unexpected and mis-shaped names.
  """
  return pretrained_from_dict(read_npy(path), encoder, width_multiplier,
                              what=path)


def import_npy(path: str, encoder: str | None = None,
               width_multiplier: float | None = None
               ) -> tuple[dict[str, dict[str, np.ndarray]],
                          dict[str, dict[str, np.ndarray]]]:
  """`load_pretrained`'s `(params, state)`: our encoder, heads if present.

  They plug into `networks.ResNetEncoder(encoder, width_multiplier, bn)`
  applied through `hk.transform_with_state` (unused head modules are
  ignored).
  """
  pretrained = load_pretrained(path, encoder, width_multiplier)
  return pretrained.params, pretrained.state


def _subtree(trees, name: str) -> dict[str, Any]:
  """Flat '<module>/<leaf>' entries of the modules `name` and `name/...`."""
  return {f'{m}/{k}': v for tree in trees for m, d in tree.items()
          if m == name or m.startswith(name + '/') for k, v in d.items()}


def init_from_pretrained(params: Tree, state: Tree, pretrained: Pretrained
                         ) -> tuple[dict[str, dict[str, Any]],
                                    dict[str, dict[str, Any]]]:
  """Puts pretrained weights into a freshly initialised online network.

  Args:
    params: the online network's Haiku parameters (`train.make_network`).
    state: its Haiku state.
    pretrained: from `load_pretrained`.

  Returns:
    New `(params, state)`: the encoder replaced; the projector and predictor
    replaced when the file has them; the classifier replaced when its shape
    fits, else kept as initialised (logged, e.g. another num_classes).
    Replaced leaves are jax arrays of the dtype they replace. The target
    network starts as a copy of the online encoder and projector
    (`train.target_subset`).

  Raises:
    ValueError: the encoder, or a head the file has, does not fit: names the
      config fields to set and lists the mismatched names.
  """
  trees = (params, state)
  got = pretrained.params, pretrained.state
  replace = {}
  fixes = {'encoder': (
      f'the file holds {pretrained.encoder} with width multiplier '
      f'{pretrained.width_multiplier}: set --config.model.encoder='
      f'{pretrained.encoder} --config.model.width_multiplier='
      f'{pretrained.width_multiplier}')}
  for head, hidden_field in (('projector', 'projector_hidden_size'),
                             ('predictor', 'predictor_hidden_size')):
    flat = _subtree(got, head)
    if not flat:
      logging.info('%s: not in the file, kept as initialised.', head)
      continue
    inputs, hidden, outputs = _head_sizes(flat, head)
    size = inputs if head == 'predictor' else outputs
    fixes[head] = (f'the file\'s {head} is {inputs} -> {hidden} -> {outputs}:'
                   f' set --config.model.{hidden_field}={hidden} '
                   f'--config.model.projector_output_size={size}')
  for part, fix in fixes.items():
    arrays, missing, unexpected, misshaped = _conform(
        _subtree(got, part), _flat_specs(_subtree(trees, part)))
    if missing or unexpected or misshaped:
      raise ValueError(_listing(f'the pretrained {part} does not fit the '
                                f'network; {fix}', missing, unexpected,
                                misshaped))
    replace.update(arrays)
  classifier = _subtree(got, 'classifier')
  if classifier:
    own = _subtree(trees, 'classifier')
    arrays, *problems = _conform(classifier, _flat_specs(own))
    if any(problems):
      classes = np.shape(classifier['classifier/b'])[-1]
      logging.warning(
          'The file\'s classifier has %d classes, the network\'s classifier '
          'w has shape %s (config.num_classes): it stays as initialised (set '
          '--config.num_classes=%d to start from the file\'s).', classes,
          np.shape(own.get('classifier/w')), classes)
    else:
      replace.update(arrays)
  out = tuple({m: dict(d) for m, d in tree.items()} for tree in trees)
  for tree in out:
    for module, leaves in tree.items():
      for name, old in leaves.items():
        key = f'{module}/{name}'
        if key in replace:
          leaves[name] = jnp.asarray(replace[key], old.dtype)
  return out


def _conv(w: np.ndarray) -> np.ndarray:
  """HWIO [kh, kw, in, out] -> OIHW [out, in, kh, kw]."""
  return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _relative(tree: Tree, prefix: str) -> dict[str, Mapping[str, Any]]:
  """Modules under `prefix`, keyed by their name relative to it.

  Haiku names a submodule made in `__call__` '<prefix>/name' and one made in
  `__init__` '<prefix>/~/name'; both give 'name'.
  """
  out = {}
  for module, entries in tree.items():
    if module.startswith(prefix + '/'):
      rel = module[len(prefix) + 1:]
      out[rel.removeprefix('~/')] = entries
  return out


def _bn(params: Tree, state: Tree, module: str) -> dict[str, np.ndarray]:
  mean = state[f'{module}/~/mean_ema']
  var = state[f'{module}/~/var_ema']
  return {
      'weight': np.asarray(params[module]['scale'], np.float32).reshape(-1),
      'bias': np.asarray(params[module]['offset'], np.float32).reshape(-1),
      'running_mean': np.asarray(mean['average'], np.float32).reshape(-1),
      'running_var': np.asarray(var['average'], np.float32).reshape(-1),
      'num_batches_tracked': np.asarray(mean['counter'], np.int64).reshape(()),
  }


def _classifier(params: Tree) -> Mapping[str, Any] | None:
  """The online classifier's linear layer: module 'classifier[/...]' with w."""
  found = [d for m, d in params.items()
           if (m == 'classifier' or m.startswith('classifier/')) and 'w' in d]
  if len(found) > 1:
    raise ValueError('more than one classifier linear layer in the params')
  return found[0] if found else None


def to_torchvision(params: Tree, state: Tree, encoder: str = 'ResNet50',
                   prefix: str = 'encoder') -> dict[str, np.ndarray]:
  """Maps Haiku encoder params/state to a torchvision ResNet `state_dict`.

  Args:
    params: Haiku parameters holding the encoder (modules '<prefix>/...'),
      and optionally the online classifier (a module 'classifier/...' with
      w [C, K] and b [K]), which becomes fc.weight [K, C] and fc.bias [K].
    state: the Haiku state with the encoder's BatchNorm moving statistics.
    encoder: the encoder name, checked against the tree's block structure.
    prefix: the encoder's module name.

  Returns:
    torchvision names -> NumPy arrays (float32, num_batches_tracked int64),
    in torchvision's order; fc is zeros [1000, C] without a classifier.
  """
  networks.check_encoder_name(encoder)
  blocks, bottleneck, _ = networks.ENCODERS[encoder]
  convs = 3 if bottleneck else 2
  classifier = _classifier(params)
  params, state = _relative(params, prefix), _relative(state, prefix)
  if 'initial_conv' not in params:
    raise ValueError(f'no {prefix}/initial_conv in the parameters')
  found = set()
  for module in params:
    m = _BLOCK_RE.fullmatch(module)
    if m:
      found.add((int(m.group(1)), int(m.group(2))))
    elif module not in ('initial_conv', 'initial_batchnorm'):
      raise ValueError(f'unexpected encoder module {prefix}/{module}')
  expected = {(g, b) for g, n in enumerate(blocks) for b in range(n)}
  if found != expected:
    raise ValueError(f'{encoder} has blocks (group, block) '
                     f'{sorted(expected)}, the parameters {sorted(found)}')
  out = {'conv1.weight': _conv(params['initial_conv']['w'])}
  out.update({f'bn1.{k}': v for k, v in
              _bn(params, state, 'initial_batchnorm').items()})
  for g, num_blocks in enumerate(blocks):
    for b in range(num_blocks):
      src = f'block_group_{g}/~/block_{b}/~/'
      dst = f'layer{g + 1}.{b}.'
      for i in range(convs):
        out[f'{dst}conv{i + 1}.weight'] = _conv(params[f'{src}conv_{i}']['w'])
        out.update({f'{dst}bn{i + 1}.{k}': v for k, v in
                    _bn(params, state, f'{src}batchnorm_{i}').items()})
      if src + 'shortcut_conv' in params:
        out[f'{dst}downsample.0.weight'] = _conv(
            params[src + 'shortcut_conv']['w'])
        out.update({f'{dst}downsample.1.{k}': v for k, v in
                    _bn(params, state, src + 'shortcut_batchnorm').items()})
  features = out[f'layer4.{blocks[3] - 1}.bn{convs}.weight'].shape[0]
  if classifier is None:
    out['fc.weight'] = np.zeros((1000, features), np.float32)
    out['fc.bias'] = np.zeros((1000,), np.float32)
  else:
    out['fc.weight'] = np.ascontiguousarray(
        np.asarray(classifier['w'], np.float32).T)
    out['fc.bias'] = np.asarray(classifier['b'], np.float32)
  return out


def to_detectron2(state_dict: Mapping[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
  """Renames a torchvision ResNet state dict to detectron2 backbone names.

  Follows detectron2's `tools/convert-torchvision-to-d2.py`: conv1 ->
  stem.conv1, bn1 -> stem.conv1.norm, layerN -> res{N+1}, bnI -> convI.norm,
  downsample.0 -> shortcut, downsample.1 -> shortcut.norm. fc and
  num_batches_tracked, which detectron2's backbone has no use for, are dropped.
  """
  out = {}
  for key, value in state_dict.items():
    if key.startswith('fc.') or key.endswith('num_batches_tracked'):
      continue
    if not key.startswith('layer'):
      key = 'stem.' + key
    key = re.sub(r'layer(\d)', lambda m: f'res{int(m.group(1)) + 1}', key)
    key = re.sub(r'bn(\d)', r'conv\1.norm', key)
    key = key.replace('downsample.0', 'shortcut')
    key = key.replace('downsample.1', 'shortcut.norm')
    out[key] = np.asarray(value)
  return out


def save_torch(path: str, state_dict: Mapping[str, np.ndarray]) -> str:
  """Saves a state dict: `.pth` of torch tensors if torch imports, else `.npz`.

  Returns:
    The path written; '.npz' replaces the extension without torch.
  """
  try:
    import torch
  except ImportError:
    path = re.sub(r'\.[^./]*$', '', path) + '.npz'
    np.savez(path, **state_dict)
    logging.info('torch is not installed: wrote %s (NumPy arrays, torchvision '
                 'names; load with np.load and torch.from_numpy).', path)
    return path
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
             path)
  logging.info('Wrote %s (torch state_dict, torchvision names).', path)
  return path


def save_detectron2(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
  """Pickles `to_detectron2(state_dict)` as detectron2 reads a `.pkl`."""
  with open(path, 'wb') as f:
    pickle.dump({'model': to_detectron2(state_dict),
                 '__author__': 'torchvision',
                 'matching_heuristics': True}, f)
  logging.info('Wrote %s (detectron2 names).', path)


def make_torchvision_model(encoder: str,
                           state_dict: Mapping[str, Any] | None = None,
                           tf_same_padding: bool = False):
  """Builds a torchvision ResNet for `encoder`, optionally loading weights.

  Args:
    encoder: one of `networks.ENCODERS` (width multiplier 1).
    state_dict: from `to_torchvision`; loaded with strict=True. The number of
      classes is taken from its fc.weight.
    tf_same_padding: pad stride-2 layers like Haiku (`patch_tf_same_padding`).

  Returns:
    A `torchvision.models.ResNet` in eval mode.
  """
  import torch
  from torchvision.models import resnet

  networks.check_encoder_name(encoder)
  num_classes = 1000
  if state_dict is not None:
    num_classes = int(np.shape(state_dict['fc.weight'])[0])
  name = TORCHVISION_NAMES[encoder]
  if name is None:
    blocks, _, _ = networks.ENCODERS[encoder]
    model = resnet.ResNet(resnet.Bottleneck, list(blocks),
                          num_classes=num_classes)
  else:
    model = getattr(resnet, name)(weights=None, num_classes=num_classes)
  if state_dict is not None:
    model.load_state_dict(
        {k: torch.as_tensor(np.array(v)) for k, v in state_dict.items()},
        strict=True)
  if tf_same_padding:
    patch_tf_same_padding(model)
  return model.eval()


def _tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of TF 'SAME' along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def patch_tf_same_padding(model):
  """Makes a torch model's stride-2 convs and max-pools pad like TF 'SAME'.

  Each such layer gets padding 0 and a forward pre-hook that pads its input
  asymmetrically (zeros for convolutions, -inf for max-pooling), as Haiku
  does. Parameter names are unchanged. Modifies `model` in place.

  Args:
    model: a `torch.nn.Module`, e.g. a torchvision ResNet.

  Returns:
    `model`.
  """
  from torch import nn
  from torch.nn import functional as F

  def pair(v):
    return tuple(v) if isinstance(v, tuple | list) else (v, v)

  def hook(module, args):
    (x,) = args
    (kh, kw), (sh, sw) = pair(module.kernel_size), pair(module.stride)
    top, bottom = _tf_same_pads(x.shape[-2], kh, sh)
    left, right = _tf_same_pads(x.shape[-1], kw, sw)
    value = float('-inf') if isinstance(module, nn.MaxPool2d) else 0.0
    return (F.pad(x, (left, right, top, bottom), value=value),)

  for module in model.modules():
    if (isinstance(module, nn.Conv2d | nn.MaxPool2d)
        and max(pair(module.stride)) > 1):
      module.padding = 0 if isinstance(module, nn.MaxPool2d) else (0, 0)
      module.register_forward_pre_hook(hook)
  return model


def write(output: str, fmt: str, params: Tree, state: Tree, encoder: str,
          bn_eps: float | None = None) -> str:
  """Writes Haiku weights (our names) to `output` in format `fmt`.

  Args:
    output: the file to write.
    fmt: 'npy' (`save_npy` of the trees as given), 'torchvision' or
      'detectron2' (the encoder, and the classifier as fc).
    params: Haiku parameters with modules 'encoder/...' (and optionally the
      heads and 'classifier').
    state: their BatchNorm statistics.
    encoder: the encoder name.
    bn_eps: with 'npy', the BatchNorm epsilon to record in the file.

  Returns:
    The path written (`save_torch` may change the extension).
  """
  if fmt == 'npy':
    save_npy(output, params, state, bn_eps)
    return output
  state_dict = to_torchvision(params, state, encoder)
  if fmt == 'torchvision':
    return save_torch(output, state_dict)
  if fmt == 'detectron2':
    save_detectron2(output, state_dict)
    return output
  raise ValueError(f'unknown format {fmt!r}; use npy, torchvision or '
                   'detectron2')


def export_checkpoint(checkpoint_dir: str, output: str, fmt: str,
                      encoder: str = '') -> str:
  """Exports the latest checkpoint of `checkpoint_dir` to `output`.

  Args:
    checkpoint_dir: the pretraining checkpoint directory.
    output: the file to write.
    fmt: 'npy' (the encoder only), 'torchvision' or 'detectron2'.
    encoder: checked against the checkpoint's config.model.encoder (the
      mismatch error of every entry point, `backbone.from_checkpoint`); ''
      takes the checkpoint's.

  Returns:
    The path written (`save_torch` may change the extension).
  """
  frozen = backbone.from_checkpoint(checkpoint_dir, encoder or None)
  params, state = frozen.params, frozen.state
  logging.info('Exporting %s from step %d of %s.', frozen.encoder,
               frozen.step, checkpoint_dir)
  if fmt == 'npy':
    params, state = encoder_params_from(params, state)
  return write(output, fmt, params, state, frozen.encoder, frozen.bn_eps)


def convert_npy(npy: str, output: str, fmt: str, encoder: str = '') -> str:
  """Converts a released or exported `.npy` file, no training run needed.

  Args:
    npy: e.g. `resnet50_detcon_b_imagenet_1k.npy` (`load_pretrained`).
    output: the file to write.
    fmt: 'npy' (encoder and heads under our names), 'torchvision' or
      'detectron2' (encoder; the classifier as fc).
    encoder: the encoder to check the file against; '': inferred.

  Returns:
    The path written (`save_torch` may change the extension).
  """
  frozen = backbone.from_npy(npy, encoder or None)
  return write(output, fmt, frozen.params, frozen.state, frozen.encoder,
               frozen.bn_eps)


def main(argv):
  log_setup.apply()
  import sys

  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if bool(f.checkpoint_dir) == bool(f.npy):
    raise app.UsageError('give exactly one of --checkpoint_dir (a pretraining '
                         'run) and --npy (a released or exported .npy file)')
  try:
    if f.npy:
      convert_npy(f.npy, f.output, f.format, f.encoder)
    else:
      export_checkpoint(f.checkpoint_dir, f.output, f.format, f.encoder)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'detcon.export: error: {e}')


if __name__ == '__main__':
  from absl import app, flags

  flags.adopt_module_key_flags(log_setup)  # --library_logs in --help.
  flags.DEFINE_string('checkpoint_dir', None,
                      'Directory of the pretraining checkpoints; the latest is '
                      'exported. Give this or --npy.')
  flags.DEFINE_string('npy', None,
                      'A released checkpoint (e.g. resnet50_detcon_b_imagenet_'
                      '1k.npy, any res_net50/~/ or res_net200/~/ prefix) or a '
                      '--format=npy export, converted without a training run. '
                      'Give this or --checkpoint_dir.')
  flags.DEFINE_string('output', None,
                      'File to write: .npy (npy), .pth (torchvision; .npz '
                      'without torch), .pkl (detectron2).', required=True)
  flags.DEFINE_enum('format', 'npy', ['npy', 'torchvision', 'detectron2'],
                    'npy: NumPy dict of our Haiku names (encoder with its '
                    'BatchNorm statistics; from --npy also its projector, '
                    'predictor and classifier); torchvision: ResNet '
                    'state_dict with the online classifier as fc; '
                    'detectron2: backbone renamed for detectron2.')
  flags.DEFINE_string('encoder', '',
                      'Encoder name (ResNet18 ... ResNet200); empty: the '
                      'checkpoint config model.encoder, or for --npy the one '
                      'its shapes give (checked when set).')
  app.run(main)
