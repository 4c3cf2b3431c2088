"""Pretrained weights into our names: released and exported `.npy` files.

Reading (`load_pretrained`, `import_npy`, every `--npy` flag) takes both
  ours      the flat dict `npy_io.save_npy` writes (`detcon.export`);
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
"""

import collections
import functools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from detcon import networks, npy_io
from detcon.npy_io import Tree

_BN_LEAVES = ('scale', 'offset', 'average', 'hidden')
_HEADS = ('projector', 'predictor')
# One leaf of the encoder: '<prefix><module>[/~/<ema>]/<name>', the prefix
# 'encoder/' in ours, 'res_net50/~/' or 'res_net200/~/' in the released files.
_ENCODER_KEY_RE = re.compile(
    r'(?P<prefix>|.*?/)(?:initial_conv|initial_batchnorm|'
    r'block_group_(?P<group>\d+)/~/block_(?P<block>\d+)/~/'
    r'(?:conv_(?P<conv>\d+)|batchnorm_\d+|shortcut_conv|shortcut_batchnorm))'
    r'(?:/~/(?:mean_ema|var_ema))?/[^/]+')


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
  _, missing, unexpected, misshaped = _conform(npy_io.flatten(params, state),
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
  bn_eps: float = npy_io.DEFAULT_BN_EPS  # BatchNorm epsilon the file records.


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
    if module.rpartition('/~/')[2] in npy_io.EMA_NAMES:
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
    if ema not in npy_io.EMA_NAMES:
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
  flat = npy_io.flat_dict(tree)
  bn_eps = float(flat.pop(npy_io.BN_EPS_KEY, npy_io.DEFAULT_BN_EPS))
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
  params, state = npy_io.unflatten(
      {k: v for r in results for k, v in r[0].items()})
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
  return pretrained_from_dict(npy_io.read_npy(path), encoder, width_multiplier,
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
    flat = npy_io.subtree(got, head)
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
        npy_io.subtree(got, part), _flat_specs(npy_io.subtree(trees, part)))
    if missing or unexpected or misshaped:
      raise ValueError(_listing(f'the pretrained {part} does not fit the '
                                f'network; {fix}', missing, unexpected,
                                misshaped))
    replace.update(arrays)
  classifier = npy_io.subtree(got, 'classifier')
  if classifier:
    own = npy_io.subtree(trees, 'classifier')
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
