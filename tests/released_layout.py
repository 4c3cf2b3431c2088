"""Files in the layout of DeepMind's released DetCon checkpoints, for tests.

Written from the description of the format (docs/records.md), not from our code:
`np.load(path, allow_pickle=True).item()` is a dict Haiku module name ->
{array name -> array}, parameters and BatchNorm state together:

  <prefix>initial_conv {w [7, 7, 3, 64]}
  <prefix>initial_batchnorm {scale, offset [1, 1, 1, 64]}
  <prefix>initial_batchnorm/~/mean_ema, .../~/var_ema
      {average, hidden [1, 1, 1, 64], counter []}
  <prefix>block_group_G/~/block_B/~/conv_I, .../batchnorm_I (+ EMAs)
  <prefix>block_group_G/~/block_0/~/shortcut_conv, .../shortcut_batchnorm
  projector/..., predictor/...  Linear(bias) -> BatchNorm -> ReLU -> Linear
  classifier {w [C, K], b [K]}

with the prefix 'res_net50/~/' or 'res_net200/~/'. The heads use Haiku's
default names of the original's MLP (linear, batch_norm, linear_1) and
BatchNorm arrays of shape [1, 1, H]. Never import this from library code.
"""

import numpy as np

RESNET50 = (3, 4, 6, 3)
RESNET200 = (3, 24, 36, 3)


def released_dict(blocks=RESNET50, bottleneck=True, prefix='res_net50/~/',
                  seed=0, heads=(4096, 256, 4096), num_classes=1000,
                  random=True):
  """A dict in the released layout.

  Args:
    blocks: blocks per group.
    bottleneck: 1x1-3x3-1x1 blocks (ResNet-50 and deeper); else 3x3-3x3,
      whose first group has no projection shortcut.
    prefix: the encoder's module prefix.
    seed: seeds the arrays.
    heads: (projector hidden, projection size, predictor hidden), or None
      for a file without projector and predictor.
    num_classes: classes of the classifier; 0 for none.
    random: random weights and BatchNorm statistics (conv weights of unit
      output variance); False: zeros that take no memory (shapes only).

  Returns:
    module name -> {array name -> array}.
  """
  rng = np.random.default_rng(seed)
  tree = {}

  def array(shape, low=None, high=None):
    if not random:
      return np.broadcast_to(np.float32(0), shape)
    if low is None:  # Zero mean, unit output variance for a weight.
      return rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape).astype(
          np.float32)
    return rng.uniform(low, high, shape).astype(np.float32)

  def batchnorm(name, channels, shape=(1, 1, 1)):
    shape = (*shape, channels)
    tree[name] = {'scale': array(shape, 0.5, 1.5),
                  'offset': array(shape, -0.3, 0.3)}
    tree[f'{name}/~/mean_ema'] = {'average': array(shape, -0.3, 0.3),
                                  'hidden': array(shape, -0.3, 0.3),
                                  'counter': np.asarray(1234, np.int32)}
    tree[f'{name}/~/var_ema'] = {'average': array(shape, 0.5, 1.5),
                                 'hidden': array(shape, 0.5, 1.5),
                                 'counter': np.asarray(1234, np.int32)}

  def conv(name, kernel, inputs, outputs):
    tree[prefix + name] = {'w': array((kernel, kernel, inputs, outputs))}
    batchnorm(prefix + name.replace('conv', 'batchnorm'), outputs)

  conv('initial_conv', 7, 3, 64)
  inputs = 64
  for g, num_blocks in enumerate(blocks):
    outputs = (256 if bottleneck else 64) * 2**g
    for b in range(num_blocks):
      block = f'block_group_{g}/~/block_{b}/~/'
      if bottleneck:
        kernels = [(1, inputs, outputs // 4), (3, outputs // 4, outputs // 4),
                   (1, outputs // 4, outputs)]
      else:
        kernels = [(3, inputs, outputs), (3, outputs, outputs)]
      for i, kernel in enumerate(kernels):
        conv(f'{block}conv_{i}', *kernel)
      if b == 0 and (bottleneck or g > 0):
        conv(f'{block}shortcut_conv', 1, inputs, outputs)
      inputs = outputs
  if heads:
    projector_hidden, projection, predictor_hidden = heads
    for head, sizes in (('projector', (inputs, projector_hidden, projection)),
                        ('predictor', (projection, predictor_hidden,
                                       projection))):
      tree[f'{head}/linear'] = {'w': array(sizes[:2]),
                                'b': array(sizes[1:2], -0.1, 0.1)}
      batchnorm(f'{head}/batch_norm', sizes[1], shape=(1, 1))
      tree[f'{head}/linear_1'] = {'w': array(sizes[1:])}
  if num_classes:
    tree['classifier'] = {'w': array((inputs, num_classes)),
                          'b': array((num_classes,), -0.1, 0.1)}
  return tree


def save(path, tree):
  """Writes `tree` as the released files are written (a pickled dict)."""
  np.save(path, np.array(tree, dtype=object), allow_pickle=True)
  return str(path)


def torchvision_state_dict(tree, prefix='res_net50/~/'):
  """torchvision ResNet names -> arrays, mapped here from the released names.

  conv1/bn1 <- initial_conv/initial_batchnorm; layer{G+1}.{B}.conv{I+1},
  .bn{I+1} <- block_group_G/~/block_B/~/conv_I, batchnorm_I;
  downsample.0/.1 <- shortcut_conv/shortcut_batchnorm; fc <- classifier.
  Convolutions HWIO -> OIHW; BatchNorm scale, offset, moving mean, moving
  variance, counter -> weight, bias, running_mean, running_var,
  num_batches_tracked.
  """
  out = {}

  def batchnorm(src, dst):
    out[f'{dst}.weight'] = tree[src]['scale'].reshape(-1)
    out[f'{dst}.bias'] = tree[src]['offset'].reshape(-1)
    out[f'{dst}.running_mean'] = tree[f'{src}/~/mean_ema']['average'].reshape(
        -1)
    out[f'{dst}.running_var'] = tree[f'{src}/~/var_ema']['average'].reshape(-1)
    out[f'{dst}.num_batches_tracked'] = np.asarray(
        tree[f'{src}/~/mean_ema']['counter'], np.int64)

  def conv(src, dst):
    out[dst] = np.ascontiguousarray(tree[src]['w'].transpose(3, 2, 0, 1))

  conv(prefix + 'initial_conv', 'conv1.weight')
  batchnorm(prefix + 'initial_batchnorm', 'bn1')
  for module in tree:
    if not module.startswith(prefix + 'block_group_'):
      continue
    parts = module[len(prefix):].split('/~/')
    if len(parts) != 3:  # An EMA module.
      continue
    g, b, name = int(parts[0][12:]), int(parts[1][6:]), parts[2]
    dst = f'layer{g + 1}.{b}.'
    if name.startswith('conv_'):
      conv(module, f'{dst}conv{int(name[5:]) + 1}.weight')
    elif name.startswith('batchnorm_'):
      batchnorm(module, f'{dst}bn{int(name[10:]) + 1}')
    elif name == 'shortcut_conv':
      conv(module, f'{dst}downsample.0.weight')
    else:
      batchnorm(module, f'{dst}downsample.1')
  out['fc.weight'] = np.ascontiguousarray(tree['classifier']['w'].T)
  out['fc.bias'] = tree['classifier']['b']
  return out
