r"""The paper's variants at small scale: mask sources, and DetCon-S vs SimCLR.

  python -m bench.mask_sources --output_dir=/tmp/mask_sources

Equal pretraining on the generated scenes (`detcon.scenes`), scored by
`detcon.dense_eval` (SPEC 10, 11):
  * DetCon-B with each mask source: the spatial grid heuristic (no image
    content), FH, SLIC and the scenes' ground-truth objects (the upper
    reference); the paper finds that better masks transfer better;
  * DetCon-S and its image-level baseline SimCLR (`configs/detcon_s.py`),
    with FH masks.
Every arm shares the encoder, image size, batch, steps, learning rate and
seeds (the learning rate overrides DetCon-S's config, so that only the
objective differs). Prints the table and writes report.{json,md,png} in
--output_dir; see `bench.dense_study` for the phases; a rerun resumes.
"""

from absl import app, flags

from bench import dense_study, machine

_OUTPUT_DIR = flags.DEFINE_string('output_dir', '/tmp/mask_sources',
                                  'Everything the study writes.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'One pretraining run '
                           'per arm and seed.')
_SCALE = dense_study.define_scale_flags()

_DETCON_S = ('--config=detcon/configs/detcon_s.py',)
ARMS = (
    dense_study.Arm('DetCon-B grid', 'grid'),
    dense_study.Arm('DetCon-B FH', 'fh'),
    dense_study.Arm('DetCon-B SLIC', 'slic'),
    dense_study.Arm('DetCon-B ground truth', 'ground_truth'),
    dense_study.Arm('SimCLR', 'fh', (*_DETCON_S, '--config.objective=simclr')),
    dense_study.Arm('DetCon-S', 'fh', _DETCON_S),
)
COMPARISONS = (('DetCon-B FH', 'DetCon-B grid'),
               ('DetCon-B ground truth', 'DetCon-B FH'),
               ('DetCon-S', 'SimCLR'))


def main(argv):
  del argv
  print(machine.describe(), flush=True)
  dense_study.run_study(
      _OUTPUT_DIR.value, dense_study.scale_from_flags(_SCALE), ARMS,
      [int(s) for s in _SEEDS.value], COMPARISONS,
      'Mask sources and DetCon-S vs SimCLR on generated scenes')


if __name__ == '__main__':
  app.run(main)
