"""Event files as TensorFlow's own protocol buffers and reader see them."""

import glob
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from detcon import tensorboard_events


@pytest.mark.parametrize('step', [0, 1, 127, 128, 300, 2**40 + 5])
def test_an_event_is_what_protobuf_serializes(step):
  for fields in (dict(file_version='brain.Event:2'),
                 dict(scalar=('repr_loss', 0.1234)),
                 dict(session_start=True)):
    ours = tensorboard_events.event(step, **fields)
    parsed = event_pb2.Event.FromString(ours)
    # protobuf writes the fields it parsed back in the same canonical form.
    assert parsed.SerializeToString() == ours
    assert parsed.step == step
    assert time.time() - 5 < parsed.wall_time <= time.time()
  assert parsed.session_log.status == event_pb2.SessionLog.START
  scalar = event_pb2.Event.FromString(tensorboard_events.event(
      step, scalar=('repr_loss', 0.1234)))
  (value,) = scalar.summary.value
  assert value.tag == 'repr_loss'
  assert value.simple_value == np.float32(0.1234)
  # Beyond float32's range (a diverging loss): infinite, as protobuf stores it.
  inf = float('inf')
  for big, stored in ((1e39, inf), (-1e39, -inf), (inf, inf),
                      (float('nan'), float('nan'))):
    (value,) = event_pb2.Event.FromString(tensorboard_events.event(
        3, scalar=('loss', big))).summary.value
    np.testing.assert_array_equal(value.simple_value, stored)


def test_a_resumed_writer_purges_and_tensorflow_reads_the_scalars(tmp_path):
  first = tensorboard_events.ScalarWriter(str(tmp_path / 'tb'))
  first.write(1, {'loss': 3.5, 'lr': 0.25})
  first.write(2, {'loss': 2.5, 'lr': 0.125})
  first.close()
  time.sleep(1.1)  # File names hold the second they were made in.
  resumed = tensorboard_events.ScalarWriter(str(tmp_path / 'tb'),
                                            purge_step=2)
  resumed.write(2, {'loss': 2.0})
  resumed.close()
  files = sorted(glob.glob(str(tmp_path / 'tb' / 'events.out.tfevents.*')))
  assert len(files) == 2
  events = [list(tf.compat.v1.train.summary_iterator(f)) for f in files]
  assert [e.file_version for e in events[0][:1]] == ['brain.Event:2']
  assert [(e.step, v.tag, v.simple_value) for e in events[0]
          for v in e.summary.value] == [(1, 'loss', 3.5), (1, 'lr', 0.25),
                                        (2, 'loss', 2.5), (2, 'lr', 0.125)]
  # The resumed file: its version, then TensorBoard's purge marker (the
  # version again and a session start at the purge step), then the scalars.
  header = [(e.step, e.file_version, e.session_log.status)
            for e in events[1][:3]]
  assert header == [(0, 'brain.Event:2', 0), (2, 'brain.Event:2', 0),
                    (2, '', event_pb2.SessionLog.START)]
  assert [(e.step, v.tag, v.simple_value) for e in events[1]
          for v in e.summary.value] == [(2, 'loss', 2.0)]
