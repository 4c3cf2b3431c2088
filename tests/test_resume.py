"""What a resumed run may change (`detcon.resume`), on the real config."""

import json

import pytest

from detcon import resume
from detcon.configs import detcon_b, detcon_s


def _saved():
  """The config as a checkpoint holds it (JSON: tuples become lists)."""
  config = detcon_b.get_config()
  config.checkpoint_dir = '/ckpt'
  return json.loads(json.dumps(config.to_dict()))


@pytest.mark.parametrize('field,value,shown', [
    ('objective', 'byol', "--config.objective: 'detcon_b' in the checkpoint, "
     "'byol' now"),
    ('model.encoder', 'ResNet34', "--config.model.encoder: 'ResNet50' in the "
     "checkpoint, 'ResNet34' now"),
    ('model.bn_eps', 1e-3, '--config.model.bn_eps: 1e-05 in the checkpoint, '
     '0.001 now'),
    ('num_classes', 10, '--config.num_classes: 1000 in the checkpoint, 10 '
     'now'),
    ('detcon.temperature', 0.2, '--config.detcon.temperature: 0.1 in the '
     'checkpoint, 0.2 now'),
])
def test_a_changed_network_or_objective_stops(field, value, shown):
  config = detcon_b.get_config()
  config.checkpoint_dir = '/ckpt'
  *parents, name = field.split('.')
  target = config
  for parent in parents:
    target = target[parent]
  target[name] = value
  with pytest.raises(ValueError) as error:
    resume.check(_saved(), config, step=7)
  message = str(error.value)
  assert message.startswith("'/ckpt' holds step 7 of a run with other "
                            'settings that change the network or the '
                            'objective')
  assert shown in message
  assert 'another --checkpoint_dir' in message
  assert '--config.init_from' in message


def test_detcon_s_config_names_every_changed_field():
  config = detcon_s.get_config()
  config.checkpoint_dir = '/ckpt'
  fixed, _ = resume.changed_settings(_saved(), config)
  names = [name for name, _, _ in fixed]
  assert 'objective' in names
  with pytest.raises(ValueError, match="'detcon_b' in the checkpoint, "
                     "'detcon_s' now"):
    resume.check(_saved(), config, step=1)


def test_other_changes_are_listed_in_one_line():
  config = detcon_b.get_config()
  config.checkpoint_dir = '/ckpt'
  config.max_steps, config.batch_size = 900, 512
  config.optimizer.base_learning_rate = 0.0
  config.augment.color_jitter_prob = (0.5, 0.5)  # A tuple, saved as a list.
  assert resume.check(_saved(), config, step=3) == (
      'augment.color_jitter_prob: [0.8, 0.8] -> (0.5, 0.5), batch_size: '
      '4096 -> 512, max_steps: 0 -> 900, optimizer.base_learning_rate: 0.2 '
      '-> 0.0')
  same = detcon_b.get_config()
  same.checkpoint_dir = '/ckpt'
  saved = _saved()
  assert saved['augment']['color_jitter_prob'] == [0.8, 0.8]
  assert resume.check(saved, same, step=3) == ''
  del saved['model']['bn_eps']  # A checkpoint of an older version.
  assert resume.check(saved, same, step=3) == ''
