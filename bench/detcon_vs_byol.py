r"""DetCon-B vs BYOL at small scale, scored by dense evaluation (SPEC 9, 11).

  python -m bench.detcon_vs_byol --output_dir=/tmp/detcon_vs_byol

The paper's claim in miniature: with the same encoder, image size, batch,
steps, learning rate and seed, pretraining with the contrastive detection
objective on FH masks gives better dense features than BYOL's image-level
objective. Both pretrain with the real mask script and main loop on the
generated multi-object scenes (`detcon.scenes`), then `detcon.dense_eval`
scores them and random weights (linear probe and nearest-neighbour mIoU on
the scenes' val split). Prints a table of mean ± spread over seeds and the
DetCon-B minus BYOL difference paired by seed; writes report.{json,md,png}
in --output_dir. See `bench.dense_study` for the phases; a rerun resumes.
"""

from absl import app, flags

from bench import dense_study, machine

_OUTPUT_DIR = flags.DEFINE_string('output_dir', '/tmp/detcon_vs_byol',
                                  'Everything the study writes.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'One pretraining run '
                           'per objective and seed.')
_SCALE = dense_study.define_scale_flags()


def main(argv):
  del argv
  print(machine.describe(), flush=True)
  arms = [dense_study.Arm('BYOL', 'fh', ('--config.objective=byol',)),
          dense_study.Arm('DetCon-B', 'fh', ('--config.objective=detcon_b',))]
  dense_study.run_study(
      _OUTPUT_DIR.value, dense_study.scale_from_flags(_SCALE), arms,
      [int(s) for s in _SEEDS.value], [('DetCon-B', 'BYOL')],
      'DetCon-B vs BYOL on generated scenes')


if __name__ == '__main__':
  app.run(main)
