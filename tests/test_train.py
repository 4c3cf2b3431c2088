"""The train step: data-parallel equivalence, learning, and clear errors."""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from detcon import augment, optim, records, train
from detcon import main_loop as loop
from detcon.configs import coco, detcon_b, detcon_s
from tests.common import fixed_batch, tiny_config, two_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_augment_view_takes_the_pipelines_uint8_views_to_unit_floats():
  images = fixed_batch(3, image_size=32)['view1'][0]  # uint8 [3, 32, 32, 3].
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  cfg = detcon_b.get_config().augment.to_dict()
  as_float = images.astype(np.float32) / 255
  for view in (0, 1):
    out = augment.augment_view(keys, images, cfg, view)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(
        out, augment.augment_view(keys, as_float, cfg, view))
  nothing = {**cfg, **{k: (0., 0.) for k in cfg if k.endswith('_prob')}}
  np.testing.assert_array_equal(
      augment.augment_view(keys, images, nothing, 0), as_float)


def run_subprocess(code, env=None, args=()):
  env = dict(env or os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, *args] if not code else
                        [sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def test_two_devices_equal_one_device():
  """One step on a global batch: same loss and parameters on 1 and 2 devices.

  DetCon-B (independent target init: the EMA draws the target towards the
  online network) and DetCon-S (gradient through the gathered candidates;
  unlabelled images spread unevenly over the devices).
  """
  code = textwrap.dedent('''
      import jax, numpy as np
      from jax.sharding import Mesh
      from detcon import train
      from tests import reference
      from tests.common import fixed_batch, tiny_config
      assert jax.device_count() == 2
      for objective in ('detcon_b', 'detcon_s'):
        config = tiny_config(objective)
        config.batch_size = 4
        optimizer, schedule = train.make_optimizer(config, 10, 0)
        init = train.init_state(config, jax.random.PRNGKey(0), optimizer)
        batch = fixed_batch(4)
        if objective == 'detcon_s':  # 1 labelled image on device 0, 0 on 1.
          batch['labels'][0] = [-1, 2, -1, -1]
        out = {}
        for n in (1, 2):
          mesh = Mesh(np.array(jax.devices()[:n]), (train.AXIS,))
          step = train.make_train_step(config, mesh, optimizer, schedule, 10)
          local = {k: v.reshape(n, 4 // n, *v.shape[2:])
                   for k, v in batch.items()}
          state = train.replicate(jax.tree.map(np.array, init), mesh)
          state, metrics = step(state, train.shard_batch(local, mesh))
          out[n] = (jax.device_get(metrics), jax.device_get(state))
        (m1, s1), (m2, s2) = out[1], out[2]
        for k in ('loss', 'repr_loss', 'classif_loss', 'top1'):
          np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5)
        # Float32 reduction order only: norm-relative error, with an absolute
        # floor for leaves that are noise around 0 (a Linear bias before a
        # BatchNorm has an exactly-zero gradient).
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
          a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
          err = np.linalg.norm(a - b)
          assert err <= 1e-4 * np.linalg.norm(a) + 1e-6 * np.sqrt(a.size), err
        np.testing.assert_raises(AssertionError, np.testing.assert_allclose,
                                 s1.params['encoder/initial_conv']['w'],
                                 init.params['encoder/initial_conv']['w'])
        if objective == 'detcon_s':
          assert s1.target_params == s1.target_state == {} and 'tau' not in m1
          assert 'predictor' not in {k.split('/')[0] for k in s1.params}
          continue
        # Independent target: not the online network at step 0; after the
        # step, tau x target + (1 - tau) x online, tau from docs/method.md.
        tau = reference.target_ema(0, 10)
        np.testing.assert_allclose(m1['tau'], tau, rtol=1e-6)
        for name, p in init.target_params.items():
          for k, w in p.items():
            if k == 'w':  # Weights are random; BatchNorm starts at 1 and 0.
              assert not np.allclose(w, init.params[name][k]), name
            np.testing.assert_allclose(
                s1.target_params[name][k],
                tau * np.asarray(w) + (1 - tau) * s1.params[name][k],
                rtol=1e-5, atol=1e-7)
      print('EQUAL')
  ''')
  result = run_subprocess(code, two_devices_env())
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'EQUAL' in result.stdout


@pytest.mark.parametrize('objective,num_classes', [
    ('detcon_b', 4), ('byol', 4), ('detcon_s', 4),
    ('simclr', 0),  # Also: no classifier, unlabelled images.
])
def test_steps_on_fixed_batch_lower_the_loss(objective, num_classes):
  config = tiny_config(objective)
  config.batch_size, config.num_classes = 4, num_classes
  config.optimizer.base_learning_rate = 20.0
  for name in ('color_jitter_prob', 'grayscale_prob', 'blur_prob',
               'solarize_prob'):
    config.augment[name] = (0.0, 0.0)
  optimizer, schedule = train.make_optimizer(config, 100, 0)
  mesh = train.make_mesh()
  state = train.replicate(
      train.init_state(config, jax.random.PRNGKey(0), optimizer), mesh)
  step = train.make_train_step(config, mesh, optimizer, schedule, 100)
  batch = fixed_batch(4, num_ids=2)
  if not num_classes:
    batch['labels'][:] = -1
  batch = train.shard_batch(batch, mesh)
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  assert int(state.step) == 10
  modules = {name.split('/')[0] for name in state.params}
  assert ('classifier' in modules) == bool(num_classes)
  assert ('top1' in metrics) == bool(num_classes)
  if not num_classes:
    assert float(metrics['classif_loss']) == 0.0
  assert ('predictor' in modules) == train.has_target(config)


def test_train_state_holds_target_subset():
  """`target_init='copy'`; 'independent' is checked with the EMA above."""
  config = tiny_config()
  config.target_init = 'copy'
  optimizer, _ = train.make_optimizer(config, 10, 1)
  state = train.init_state(config, jax.random.PRNGKey(0), optimizer)
  tops = {name.split('/')[0] for name in state.target_params}
  assert tops == {'encoder', 'projector'}
  assert {'predictor', 'classifier'} <= {n.split('/')[0] for n in state.params}
  for name, p in state.target_params.items():  # Target starts as online.
    for k in p:
      np.testing.assert_array_equal(p[k], state.params[name][k])
  assert state.target_state.keys() == train.target_subset(state.state).keys()
  # What a resume restores into: the same tree, shapes and dtypes, placed on
  # the mesh, without computing a state.
  like = train.state_like(config, optimizer, train.make_mesh())
  assert jax.tree.structure(like) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(like), jax.tree.leaves(state),
                       strict=True):
    assert isinstance(got, jax.ShapeDtypeStruct)
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert got.sharding.mesh.devices.size == jax.device_count()


def test_classifier_metrics_ignore_unlabelled_images():
  """Cross-entropy and top-1 over the labelled images of all devices."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)  # [device, B, C]
  labels = np.array([[4, -1, 0], [-1, -1, 2]], np.int32)
  got = jax.vmap(train._classifier_metrics, axis_name=train.AXIS)(
      logits, labels)  # pylint: disable=protected-access
  cross_entropy, correct = [], []
  for d, b in zip(*np.nonzero(labels >= 0), strict=True):
    z = logits[d, b].astype(np.float64)
    log_softmax = z - z.max() - np.log(np.exp(z - z.max()).sum())
    cross_entropy.append(-log_softmax[labels[d, b]])
    correct.append(np.argmax(z) == labels[d, b])
  np.testing.assert_allclose(got['classif_loss'], np.mean(cross_entropy),
                             rtol=1e-5)
  np.testing.assert_allclose(got['top1'], np.mean(correct))
  none = jax.vmap(train._classifier_metrics, axis_name=train.AXIS)(
      logits, np.full((2, 3), -1, np.int32))  # pylint: disable=protected-access
  np.testing.assert_array_equal(none['classif_loss'], 0.0)


def main_loop(*args, env=None):
  return run_subprocess(None, env, ('-m', 'detcon.main_loop', *args))


def test_missing_dataset_directory_says_how_to_make_it(tmp_path):
  result = main_loop(f'--dataset_directory={tmp_path / "nope"}',
                     '--encoder=ResNet18', '--image_size=64', '--batch_size=2')
  assert result.returncode != 0
  assert 'generate_fh_masks_for_imagenet.py' in result.stderr
  assert 'Traceback' not in result.stderr


def test_batch_size_must_divide_over_devices():
  result = main_loop('--config.mock_data=True', '--batch_size=3',
                     '--encoder=ResNet18', '--image_size=64',
                     env=two_devices_env())
  assert result.returncode != 0
  assert 'does not divide over the 2 devices' in result.stderr


@pytest.mark.parametrize('flag,message', [
    ('--encoder=ResNet999', 'unknown encoder'),
    ('--image_size=100', 'multiple of 32'),
])
def test_bad_settings_fail_clearly(flag, message):
  result = main_loop('--config.mock_data=True', '--batch_size=2', flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_mock_run_flags_bfloat16_epochs_and_periodic_saves(tmp_path):
  """Steps come from epochs x images / batch; a save every step; bf16."""
  ckpt = tmp_path / 'ckpt'
  result = main_loop('--config.mock_data=True', '--batch_size=2',
                     '--pretrain_epochs=1', '--num_train_images=4',
                     '--encoder=ResNet18', '--image_size=64',
                     '--dtype=bfloat16',
                     f'--checkpoint_dir={ckpt}', '--save_checkpoint_interval=0',
                     '--config.model.projector_hidden_size=64',
                     '--config.model.predictor_hidden_size=64')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'for 2 steps' in result.stderr
  assert 'Done: steps 0 -> 2' in result.stderr
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('loss', 'repr_loss', 'classif_loss', 'lr', 'tau', 'top1',
              'images_per_s', 'step_time_s'):
    assert np.isfinite(metrics[key]), key
  assert sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) == [1, 2]


@pytest.mark.parametrize('field,value,message', [
    ('objective', 'moco', 'use one of detcon_b, byol, detcon_s, simclr'),
    ('target_init', 'zeros', 'use independent'),
    ('masks', 'mcg', r'grid \(no masks needed\)'),
    ('grid_size', 17, 'max_mask_id=256'),
    ('grid_size', 0, 'use n >= 1'),
    ('num_classes', -1, '0 for no online classifier'),
])
def test_validate_refuses_bad_variant_settings(field, value, message):
  config = tiny_config()
  config.batch_size, config.masks = 2, 'grid'
  loop.validate(config)
  config[field] = value
  with pytest.raises(ValueError, match=message):
    loop.validate(config)


def test_config_files_detcon_s_simclr_and_coco(monkeypatch):
  """`--config=detcon/configs/detcon_s.py`: SimCLR's recipe; and COCO."""
  argv = ['main_loop', '--config=detcon/configs/detcon_s.py',
          '--config.objective=simclr', '--batch_size=512']
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads the overrides.
  try:
    flags.FLAGS(argv)
    config = loop.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  loop.validate(config)
  assert (config.objective, config.batch_size) == ('simclr', 512)
  assert config.detcon.temperature == 0.1
  assert config.optimizer.weight_decay == 1e-6
  # SimCLR's 4.8 peak at batch 4096 after 10 warm-up epochs (of 1000).
  c = detcon_s.get_config()
  assert c.objective == 'detcon_s'
  images = detcon_b.IMAGENET_TRAIN_IMAGES
  warmup, total = optim.warmup_and_total_steps(c.pretrain_epochs,
                                               c.batch_size, images)
  assert warmup == 10 * images // 4096
  _, schedule = train.make_optimizer(c, total, warmup)
  np.testing.assert_allclose(float(schedule(warmup)), 4.8, rtol=1e-6)
  c = coco.get_config()
  assert (c.objective, c.masks, c.num_classes) == ('detcon_b', 'fh', 0)
  loop.validate(c)


def _unlabelled_records(directory, masks):
  """Two real JPEGs with label 0 (no class), FH-style masks or none."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  path = os.path.join(directory, 'train-00000-of-00001')
  with tf.io.TFRecordWriter(path) as writer:
    for i, (h, w) in enumerate(((80, 120), (96, 72))):
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
          buf, format='JPEG')
      fh = np.kron(rng.integers(0, 3, (1, 4, 4)), np.ones((h // 4, w // 4)))
      writer.write(records.make_example(
          image=buf.getvalue(), height=h, width=w, filename=f'{i}.jpg',
          label=0, synset='', text='',
          masks=records.encode_masks(fh) if masks else b'',
      ).SerializeToString())


@pytest.mark.parametrize('masks', ['fh', 'grid'])
def test_main_loop_unlabelled_records_turn_the_classifier_off(
    tmp_path, caplog, masks):
  _unlabelled_records(str(tmp_path), masks=masks == 'fh')
  config = tiny_config()
  config.dataset_directory, config.masks, config.grid_size = (
      str(tmp_path), masks, 3)
  with caplog.at_level(logging.INFO, logger='absl'):
    train_records = loop.inspect_records(config)
    batch = next(loop.real_batches(config, train_records, 1, 2, 0))
  assert not train_records.has_classes
  assert 'the online classifier is off' in caplog.text
  # Records without image/mask_source: a note, unless their masks are unused.
  assert ('does not say which method made its masks' in caplog.text) == (
      masks == 'fh')
  np.testing.assert_array_equal(batch['labels'], [[-1, -1]])
  ids = set(np.unique(batch['fh_segmentations1']))
  assert batch['fh_segmentations1'].shape == (1, 2, 64, 64, 1)
  assert ids <= (set(range(3)) if masks == 'fh' else set(range(9)))
  if masks == 'grid':  # The records hold no masks: 'fh' cannot read them.
    config.masks = 'fh'
    with pytest.raises(ValueError, match='without FH masks'):
      loop.inspect_records(config)


def test_input_facts_complete_a_copy_of_the_config(tmp_path):
  _unlabelled_records(str(tmp_path), masks=True)
  config = tiny_config()
  config.dataset_directory, config.num_classes = str(tmp_path), 7
  resolved = loop.with_input_facts(config, loop.inspect_records(config))
  assert (resolved.num_train_images, resolved.num_classes) == (2, 0)
  assert (config.num_train_images, config.num_classes) == (0, 7)
  mock = loop.with_input_facts(config, None)  # The global batch, classes kept.
  assert (mock.num_train_images, mock.num_classes) == (config.batch_size, 7)
  config.num_train_images = 5  # A given epoch size wins over the count.
  assert loop.with_input_facts(
      config, loop.inspect_records(config)).num_train_images == 5
