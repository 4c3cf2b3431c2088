"""Exports the pretrained encoder: NumPy `.npy`, torchvision, detectron2.

Formats
  npy          A pickled dict (read it with `np.load(path, allow_pickle=True)
               .item()`, like the released `resnet50_detcon_b_imagenet_1k.npy`)
               of flat keys '<module>/<name>' -> array, Haiku names, e.g.
               'encoder/initial_conv/w' [7, 7, 3, 64] and the BatchNorm
               statistics 'encoder/initial_batchnorm/~/mean_ema/average'
               [1, 1, 1, 64] (and its 'counter', 'hidden'). `load_npy` reads
               it back into Haiku trees that plug into `networks.ResNetEncoder`;
               `import_npy` also checks the names and shapes against it.
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
"""

import logging
import pickle
import re
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import numpy as np

from detcon import networks

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


def save_npy(path: str, params: Tree, state: Tree) -> None:
  """Writes `flatten(params, state)` as a pickled `.npy` dict."""
  with open(path, 'wb') as f:
    np.save(f, np.array(flatten(params, state), dtype=object),
            allow_pickle=True)
  logging.info('Wrote %s (NumPy dict of Haiku names).', path)


def load_npy(path: str) -> tuple[dict[str, dict[str, np.ndarray]],
                                 dict[str, dict[str, np.ndarray]]]:
  """Reads a pickled `.npy` dict of flat Haiku names into `(params, state)`."""
  flat = np.load(path, allow_pickle=True).item()
  if not isinstance(flat, Mapping):
    raise ValueError(f'{path} holds a {type(flat).__name__}, not a dict')
  return unflatten(flat)


def encoder_shapes(encoder: str, width_multiplier: int = 1,
                   bn_decay: float = 0.9, bn_eps: float = 1e-5
                   ) -> tuple[Tree, Tree]:
  """`(params, state)` trees of `jax.ShapeDtypeStruct` of our encoder."""
  bn = networks.bn_config(bn_decay, bn_eps, None)
  model = hk.transform_with_state(
      lambda x: networks.ResNetEncoder(encoder, width_multiplier, bn)(x, True))
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def check_names(params: Tree, state: Tree, reference: tuple[Tree, Tree],
                what: str = 'checkpoint') -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped entries."""
  got = flatten(params, state)
  want = {f'{m}/{k}': tuple(v.shape) for tree in reference
          for m, d in tree.items() for k, v in d.items()}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  misshaped = sorted(f'{k}: {np.shape(got[k])} (expected {want[k]})'
                     for k in set(got) & set(want)
                     if np.shape(got[k]) != want[k])
  if missing or unexpected or misshaped:
    lines = [f'{what} does not match the encoder:']
    for title, items in (('missing', missing), ('unexpected', unexpected),
                         ('wrong shape', misshaped)):
      if items:
        lines.append(f'  {len(items)} {title}:')
        lines.extend(f'    {item}' for item in items)
    raise ValueError('\n'.join(lines))


def import_npy(path: str, encoder: str = 'ResNet50', width_multiplier: int = 1
               ) -> tuple[dict[str, dict[str, np.ndarray]],
                          dict[str, dict[str, np.ndarray]]]:
  """Loads a released-style `.npy` dict and checks it fits our encoder.

  Args:
    path: a pickled dict of flat Haiku names, as written by `save_npy`.
    encoder: one of `networks.ENCODERS`.
    width_multiplier: the encoder's width multiplier.

  Returns:
    `(params, state)` ready for `networks.ResNetEncoder(encoder,
    width_multiplier, bn)` applied through `hk.transform_with_state`.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped key.
  """
  params, state = load_npy(path)
  check_names(params, state, encoder_shapes(encoder, width_multiplier),
              what=path)
  return params, state


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


def export_checkpoint(checkpoint_dir: str, output: str, fmt: str,
                      encoder: str = '') -> str:
  """Exports the latest checkpoint of `checkpoint_dir` to `output`.

  Args:
    checkpoint_dir: the pretraining checkpoint directory.
    output: the file to write.
    fmt: 'npy', 'torchvision' or 'detectron2'.
    encoder: the encoder name; '' takes the checkpoint's config.model.encoder.

  Returns:
    The path written (`save_torch` may change the extension).
  """
  from detcon import checkpoint

  restored = checkpoint.restore_latest(checkpoint_dir)
  params, state = restored['params'], restored['state']
  encoder = encoder or restored['config']['model']['encoder']
  logging.info('Exporting %s from step %d of %s.', encoder, restored['step'],
               checkpoint_dir)
  if fmt == 'npy':
    save_npy(output, *encoder_params_from(params, state))
    return output
  state_dict = to_torchvision(params, state, encoder)
  if fmt == 'torchvision':
    return save_torch(output, state_dict)
  if fmt == 'detectron2':
    save_detectron2(output, state_dict)
    return output
  raise ValueError(f'unknown format {fmt!r}')


def main(argv):
  del argv
  import sys

  from absl import flags

  f = flags.FLAGS
  try:
    export_checkpoint(f.checkpoint_dir, f.output, f.format, f.encoder)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'detcon.export: error: {e}')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('checkpoint_dir', None,
                      'Directory of the pretraining checkpoints; the latest is '
                      'exported.', required=True)
  flags.DEFINE_string('output', None,
                      'File to write: .npy (npy), .pth (torchvision; .npz '
                      'without torch), .pkl (detectron2).', required=True)
  flags.DEFINE_enum('format', 'npy', ['npy', 'torchvision', 'detectron2'],
                    'npy: NumPy dict of Haiku encoder names and BatchNorm '
                    'statistics; torchvision: ResNet state_dict with the '
                    'online classifier as fc; detectron2: backbone renamed '
                    'for detectron2.')
  flags.DEFINE_string('encoder', '',
                      'Encoder name (ResNet18 ... ResNet200); empty: the '
                      'checkpoint config model.encoder.')
  app.run(main)
