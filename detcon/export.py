"""Exports a backbone: `.npy`, torchvision or detectron2 weights.

Reading released and exported files is `detcon.pretrained`; the torch
conversions are `detcon.torch_export`; this module is the command and
the writers.

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
               'classifier/w'). `npy_io.load_npy` reads it back into Haiku
               trees that plug into `networks.ResNetEncoder`;
               `pretrained.load_pretrained` also checks the names and shapes.
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
(fine for fine-tuning); `torch_export.patch_tf_same_padding` makes a
torchvision model pad like Haiku, after which the features match to float
precision.

Encoders whose names torchvision lacks are mapped with the same scheme
(`torch_export.make_torchvision_model` builds ResNet-200 as
`ResNet(Bottleneck, [3, 24, 36, 3])`). A width multiplier > 1 widens every
layer, stem included, which torchvision's `wide_resnet*` models do not:
those state dicts keep torchvision names but fit no torchvision constructor.

Usage:
  python -m detcon.export --checkpoint_dir=/tmp/detcon_ckpt \\
      --output=/tmp/resnet50_detcon_b.pth --format=torchvision
  python -m detcon.export --npy=resnet50_detcon_b_imagenet_1k.npy \\
      --output=resnet50_detcon_b.pth --format=torchvision
"""

import logging

from detcon import backbone, cli, log_setup, npy_io, torch_export
from detcon.npy_io import Tree


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
    npy_io.save_npy(output, params, state, bn_eps)
    return output
  state_dict = torch_export.to_torchvision(params, state, encoder)
  if fmt == 'torchvision':
    return torch_export.save_torch(output, state_dict)
  if fmt == 'detectron2':
    torch_export.save_detectron2(output, state_dict)
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
    params, state = npy_io.encoder_params_from(params, state)
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
  from absl import flags

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
  cli.run(main)
