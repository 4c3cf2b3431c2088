"""The evidence studies: their statistics by hand, and a resumed toy study."""

import json
import math

import pytest

from bench import dense_study

# Student t, 97.5th percentile, 2 degrees of freedom (a printed table's).
T_975_DF2 = 4.302653


def _runs():
  """A made-up study: steps 8 (curve at 1, 2, 4, 8), seeds 0-2."""
  runs = []

  def add(arm, step, linear, nn):
    for seed, (lin, n) in enumerate(zip(linear, nn, strict=True)):
      runs.append(dict(arm=arm, seed=seed, step=step, linear_miou=lin,
                       nn_miou=n))

  add('random', 0, [0.20, 0.22, 0.18], [0.10, 0.12, 0.11])
  for step in (1, 2, 4):
    add('byol', step, [0.25] * 3, [0.15] * 3)
  add('byol', 8, [0.30, 0.31, 0.29], [0.20, 0.16, 0.21])
  add('detcon_b', 1, [0.25] * 3, [0.15] * 3)
  add('detcon_b', 2, [0.29, 0.31, 0.31], [0.195] * 3)
  add('detcon_b', 4, [0.33] * 3, [0.20, 0.21, 0.20])
  add('detcon_b', 8, [0.33, 0.32, 0.35], [0.24, 0.22, 0.26])
  return runs


def _results():
  return dict(settings=dict(title='toy', scale=dict(steps=8)),
              names={'random': 'random weights', 'byol': 'BYOL',
                     'detcon_b': 'DetCon-B'},
              comparisons=[['detcon_b', 'byol'], ['byol', 'detcon_b']],
              runs=_runs())


def test_statistics_match_a_hand_calculation():
  report = dense_study.summarize(_results(), seeds=[0, 1, 2, 3])
  # DetCon-B - BYOL, linear: 0.03, 0.01, 0.06.
  d = report['differences']['DetCon-B - BYOL']['linear']
  mean = (0.03 + 0.01 + 0.06) / 3
  std = math.sqrt(sum((x - mean)**2 for x in (0.03, 0.01, 0.06)) / 2)
  half = T_975_DF2 * std / math.sqrt(3)
  assert d['mean'] == pytest.approx(mean)
  assert d['std'] == pytest.approx(std)
  assert (d['low'], d['high']) == pytest.approx((mean - half, mean + half),
                                                abs=1e-6)
  assert (d['wins'], d['seeds']) == (3, 3)
  # nn: 0.04, 0.06, 0.05; and the reverse comparison wins nowhere.
  assert report['differences']['DetCon-B - BYOL']['nn']['mean'] == (
      pytest.approx(0.05))
  assert report['differences']['BYOL - DetCon-B']['nn']['wins'] == 0
  # Gains over the same seed's random weights.
  g = report['gains']['detcon_b']['linear']
  assert (g['mean'], g['min']) == pytest.approx((0.4 / 3, 0.10))
  assert g['learned'] == 3
  assert report['gains']['byol']['nn']['learned'] == 2  # 0.10, 0.04, 0.10.
  # BYOL's final means: linear 0.30, nn 0.19. DetCon-B's curve: linear
  # 0.20 (step 0, random), 0.25, 0.3033 at step 2; nn 0.11, 0.15, 0.195.
  assert report['steps_to_reach']['DetCon-B - BYOL'] == {'linear': 2,
                                                         'nn': 2}
  assert report['steps_to_reach']['BYOL - DetCon-B'] == {'linear': None,
                                                         'nn': None}
  curve = report['curves']['detcon_b']['nn']
  assert [c[0] for c in curve] == [0, 1, 2, 4, 8]
  assert curve[3][1:] == pytest.approx([0.61 / 3, math.sqrt(1 / 3) / 100, 3])
  assert report['missing'] == ['random weights seed 3', 'BYOL seed 3',
                               'DetCon-B seed 3']
  text = dense_study.format_report(report)
  assert '| DetCon-B - BYOL | +0.0333 [' in text
  assert 'Missing: random weights seed 3, BYOL seed 3' in text


def test_a_seed_without_its_pair_is_left_out_of_the_differences():
  results = _results()
  results['runs'] = [r for r in results['runs']
                     if not (r['arm'] == 'byol' and r['seed'] == 2)]
  report = dense_study.summarize(results, seeds=[0, 1, 2])
  d = report['differences']['DetCon-B - BYOL']['linear']
  assert d['seeds'] == 2 and d['mean'] == pytest.approx(0.02)
  assert report['missing'] == ['BYOL seed 2']


TOY = dense_study.Scale(
    num_train=8, num_val=4, scene_size=64, num_classes=3,
    objects_per_image='1,2', object_size='0.3,0.6', encoder='ResNet18',
    width_multiplier=0.25, image_size=64, batch_size=4, steps=2,
    base_learning_rate=1.0, base_target_ema=0.99, head_size=32,
    fh_scale=100, fh_min_size=20, eval_image_size=64,
    eval_crops_per_image=1, eval_linear_steps=5)


def test_a_finished_toy_study_reruns_nothing_and_rebuilds_its_report(
    tmp_path, monkeypatch):
  arms = [dense_study.Arm('BYOL', 'fh', flags=('--config.objective=byol',))]
  results = str(tmp_path / 'results' / 'toy.json')
  args = (str(tmp_path / 'study'), results, TOY, arms, [0], [], 'toy')
  first = dense_study.run_study(*args)
  with open(results) as f:
    written = json.load(f)
  assert sorted((r['arm'], r['step']) for r in written['runs']) == [
      ('byol', 1), ('byol', 2), ('random', 0)]
  assert all(0 <= r[f'{p}_miou'] <= 1 for r in written['runs']
             for p in ('linear', 'nn'))
  with open(tmp_path / 'results' / 'toy.md') as f:
    report_text = f.read()
  assert 'Missing: none.' in report_text
  for figure in ('toy.png', 'toy_curves_linear.png', 'toy_curves_nn.png'):
    assert (tmp_path / 'results' / figure).stat().st_size > 1000

  def no_command(*unused):
    raise AssertionError('a finished study ran a command')

  monkeypatch.setattr(dense_study, 'run_command', no_command)
  (tmp_path / 'results' / 'toy.md').unlink()
  again = dense_study.run_study(*args)
  with open(tmp_path / 'results' / 'toy.md') as f:
    assert f.read() == report_text
  assert again == first


def test_a_results_file_of_other_settings_is_refused(tmp_path):
  path = tmp_path / 'r.json'
  path.write_text(json.dumps(dict(settings=dict(title='other'), runs=[])))
  with pytest.raises(SystemExit, match='holds a study with other settings'):
    dense_study.run_study(str(tmp_path / 'study'), str(path), TOY, [], [0],
                          [], 'toy')


def test_one_seed_has_no_interval():
  report = dense_study.summarize(_results(), seeds=[0])
  d = report['differences']['DetCon-B - BYOL']['linear']
  assert d['mean'] == pytest.approx(0.03) and math.isnan(d['low'])
  assert '[one seed: no interval] (1/1)' in dense_study.format_report(report)
