r"""The paper's variants at small scale: mask sources, and DetCon-S vs SimCLR.

  python -m bench.mask_sources --output_dir=/tmp/mask_sources

Equal pretraining on the generated scenes (`detcon.scenes`), scored by
dense evaluation during pretraining, as `bench.detcon_vs_byol` does:
  * DetCon-B with each mask source: the spatial grid heuristic (no image
    content), FH, SLIC and the scenes' ground-truth objects (the upper
    reference); the paper finds that better masks transfer better;
  * DetCon-S and its image-level baseline SimCLR (`configs/detcon_s.py`),
    with FH masks.
Every arm shares the encoder, image size, batch, steps, learning rate and
seeds (the learning rate overrides DetCon-S's config, so that only the
objective differs). The results file (default
bench/results/mask_sources.json) and the report beside it are written as
runs finish; a rerun skips what is finished. See `bench.dense_study` and
docs/studies.md.
"""

from absl import app, flags

from bench import dense_study, machine

_OUTPUT_DIR = flags.DEFINE_string('output_dir', '/tmp/mask_sources',
                                  'Scenes, records, checkpoints and logs.')
_RESULTS = dense_study.define_results_flag('mask_sources')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'One pretraining run '
                           'per arm and seed.')
_SCALE = dense_study.define_scale_flags()

ARMS = (
    dense_study.Arm('DetCon-B grid', 'grid'),
    dense_study.Arm('DetCon-B FH', 'fh'),
    dense_study.Arm('DetCon-B SLIC', 'slic'),
    dense_study.Arm('DetCon-B ground truth', 'ground_truth'),
    dense_study.Arm('SimCLR', 'fh', 'detcon_s', ('--config.objective=simclr',)),
    dense_study.Arm('DetCon-S', 'fh', 'detcon_s'),
)
COMPARISONS = (('DetCon-B FH', 'DetCon-B grid'),
               ('DetCon-B SLIC', 'DetCon-B FH'),
               ('DetCon-B ground truth', 'DetCon-B FH'),
               ('DetCon-S', 'SimCLR'))


def main(argv):
  del argv
  print(machine.describe(), flush=True)
  dense_study.run_study(
      _OUTPUT_DIR.value, _RESULTS.value,
      dense_study.scale_from_flags(_SCALE), ARMS,
      [int(s) for s in _SEEDS.value], COMPARISONS,
      'Mask sources and DetCon-S vs SimCLR on generated scenes')


if __name__ == '__main__':
  app.run(main)
