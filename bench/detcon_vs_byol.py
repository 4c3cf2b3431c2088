r"""DetCon-B vs BYOL at small scale, scored by dense evaluation.

  python -m bench.detcon_vs_byol --output_dir=/tmp/detcon_vs_byol

The paper's claim in miniature: with the same encoder, image size, batch,
steps, learning rate and seed, pretraining with the contrastive detection
objective on FH masks gives better dense features than BYOL's image-level
objective, and sooner. Both pretrain with the real mask script and main loop
on the generated multi-object scenes (`detcon.scenes`); each run is scored
during pretraining (the learning curve) and random weights of the same seed
are scored as the floor (linear probe and nearest-neighbour mIoU on the
scenes' val split, `detcon.dense_eval`). The results file (default
bench/results/detcon_vs_byol.json) gets one entry per scored checkpoint,
and the report beside it (tables, bar chart, curves) is rebuilt after every
run; a rerun skips what is finished. See `bench.dense_study` and
docs/studies.md.
"""

from absl import app, flags

from bench import dense_study, machine

_OUTPUT_DIR = flags.DEFINE_string('output_dir', '/tmp/detcon_vs_byol',
                                  'Scenes, records, checkpoints and logs.')
_RESULTS = dense_study.define_results_flag('detcon_vs_byol')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'],
                           'One pretraining run per objective and seed.')
_SCALE = dense_study.define_scale_flags()

ARMS = (dense_study.Arm('BYOL', 'fh', flags=('--config.objective=byol',)),
        dense_study.Arm('DetCon-B', 'fh'))


def main(argv):
  del argv
  print(machine.describe(), flush=True)
  dense_study.run_study(
      _OUTPUT_DIR.value, _RESULTS.value,
      dense_study.scale_from_flags(_SCALE), ARMS,
      [int(s) for s in _SEEDS.value], [('DetCon-B', 'BYOL')],
      'DetCon-B vs BYOL on generated scenes')


if __name__ == '__main__':
  app.run(main)
