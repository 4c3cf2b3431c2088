"""Our encoder as torchvision and detectron2 weights, and TF 'SAME' padding.

`to_torchvision` maps the Haiku encoder (and the online classifier, as fc)
to a `torchvision.models.resnet*` `state_dict`; `to_detectron2` renames that
as detectron2's converter does; `make_torchvision_model` builds the model and
`patch_tf_same_padding` makes it pad stride-2 layers as Haiku does (the
formats and the padding difference are described in `detcon.export`).
"""

import logging
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from detcon import networks, npy_io
from detcon.npy_io import Tree

# Torchvision constructor of each encoder (None: none in torchvision).
TORCHVISION_NAMES = {
    'ResNet18': 'resnet18',
    'ResNet34': 'resnet34',
    'ResNet50': 'resnet50',
    'ResNet101': 'resnet101',
    'ResNet152': 'resnet152',
    'ResNet200': None,  # Built from torchvision's ResNet class.
}
_BLOCK_RE = re.compile(
    r'block_group_(\d+)/~/block_(\d+)/~/'
    r'(conv_\d|batchnorm_\d|shortcut_conv|shortcut_batchnorm)$')


def _conv(w: np.ndarray) -> np.ndarray:
  """HWIO [kh, kw, in, out] -> OIHW [out, in, kh, kw]."""
  return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _relative(tree: Tree, prefix: str) -> dict[str, Mapping[str, Any]]:
  """Modules under `prefix`, keyed by their name relative to it.

  Haiku names a submodule made in `__call__` '<prefix>/name' and one made in
  `__init__` '<prefix>/~/name'; both give 'name'.
  """
  return {m[len(prefix) + 1:].removeprefix('~/'): entries
          for m, entries in npy_io.select(tree, prefix).items() if m != prefix}


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
  found = [d for d in npy_io.select(params, 'classifier').values()
           if 'w' in d]
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
