"""End-to-end tests of generate_fh_masks_for_imagenet.py (docs/records.md).

The real script runs in a subprocess on small ImageNet-layout folders of
real photos (`detcon.sample_data`); its shards are read back and checked
against an independent run of FH (or SLIC) on the decoded stored images, or
against the label PNGs the tests wrote.
"""

import collections
import io
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import segmentation

from detcon import record_writer, records, sample_data, voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'generate_fh_masks_for_imagenet.py')
SHARD_ARGS = ('--train_shards=4', '--validation_shards=2')
ONE_PAIR = ('--fh_scales=100', '--fh_min_sizes=50')
TWO_PAIRS = ('--fh_scales=100,300', '--fh_min_sizes=50,100')


def run_script(*args, cwd, env=None):
  """Runs the script; `env`: variables to add (SLURM's array ones dropped)."""
  base = {k: v for k, v in os.environ.items()
          if not k.startswith('SLURM_ARRAY_')}
  return subprocess.run(
      [sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True,
      text=True, timeout=300,
      env=dict(base, TF_CPP_MIN_LOG_LEVEL='3', **(env or {})))


def read_records(path):
  """The records of one shard, each a dict of feature name -> value."""
  parsed = []
  for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
    example = tf.train.Example.FromString(raw)
    parsed.append({k: getattr(f, f.WhichOneof('kind')).value[0]
                   for k, f in example.features.feature.items()})
  return parsed


def final_names(directory):
  return sorted(n for n in os.listdir(directory) if not n.startswith('.'))


def read_output(directory):
  """{shard name: [record dict]} for every final shard of `directory`."""
  return {n: read_records(os.path.join(directory, n))
          for n in final_names(directory)}


def by_split(shards, split):
  return [r for name, recs in sorted(shards.items())
          if name.startswith(split + '-') for r in recs]


class Data:
  """The input folders of the module and what they should give."""

  def __init__(self, root):
    self.root = root
    self.train = os.path.join(root, 'train')
    self.val = os.path.join(root, 'val')
    self.synsets = sample_data.make_imagenet_folder(
        self.train, num_classes=3, images_per_class=8, seed=0)
    sample_data.make_imagenet_folder(self.val, num_classes=3,
                                     images_per_class=3, seed=1)
    self.bad_dir = os.path.join(self.train, self.synsets[1])
    self.bad = sample_data.make_bad_files(self.bad_dir)

  def files(self, directory):
    """{(synset, file name): path} of every file under `directory`."""
    return {(s, n): os.path.join(directory, s, n)
            for s in sorted(os.listdir(directory))
            for n in os.listdir(os.path.join(directory, s))}

  def expected(self, directory):
    """The (synset, file name) pairs that must each appear once."""
    return {key for key in self.files(directory)
            if key[0] != self.synsets[1] or self.bad.get(key[1]) != 'skipped'}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return Data(str(tmp_path_factory.mktemp('inputs')))


@pytest.fixture(scope='module')
def png_run(data):
  """One FH pair, PNG masks, labels from the folders, 2 workers."""
  out = os.path.join(data.root, 'out', 'png')  # Parent missing too.
  proc = run_script(f'--train_directory={data.train}',
                    f'--validation_directory={data.val}',
                    f'--output_directory={out}', *SHARD_ARGS, *ONE_PAIR,
                    '--num_threads=2', cwd=data.root)
  assert proc.returncode == 0, proc.stderr
  return proc, out, read_output(out)


@pytest.fixture(scope='module')
def raw_run(data):
  """Two FH pairs, raw masks, labels and texts from the metadata files."""
  labels = ['n09999999'] + data.synsets[::-1]  # Not the folder order.
  labels_file = os.path.join(data.root, 'synsets.txt')
  with open(labels_file, 'w') as f:
    f.write('\n'.join(labels) + '\n')
  texts = {s: f'class {s[-1]}, a test' for s in labels}
  metadata_file = os.path.join(data.root, 'metadata.txt')
  with open(metadata_file, 'w') as f:
    f.writelines(f'{s}\t{t}\n' for s, t in texts.items())
  out = os.path.join(data.root, 'out', 'raw')
  proc = run_script(f'--train_directory={data.train}',
                    f'--validation_directory={data.val}',
                    f'--output_directory={out}', *SHARD_ARGS, *TWO_PAIRS,
                    '--mask_encoding=raw', '--num_threads=2',
                    f'--labels_file={labels_file}',
                    f'--imagenet_metadata_file={metadata_file}',
                    cwd=data.root)
  assert proc.returncode == 0, proc.stderr
  return proc, out, read_output(out), labels, texts


def test_help_documents_every_flag(tmp_path):
  proc = run_script('--helpshort', cwd=tmp_path)
  for flag in ('train_directory', 'validation_directory', 'output_directory',
               'train_shards', 'validation_shards', 'num_threads', 'fh_scales',
               'fh_min_sizes', 'labels_file', 'imagenet_metadata_file',
               'mask_encoding', 'seed', 'num_tasks', 'task_index',
               'segmentation', 'slic_n_segments', 'slic_compactness',
               'ground_truth_directory', 'ground_truth_ignore',
               'mask_memory_gb'):
    assert f'--{flag}:' in proc.stdout + proc.stderr, flag


def test_summary_counts_the_run(data, png_run):
  proc, _, shards = png_run
  written = sum(len(records) for records in shards.values())
  assert f'images written: {written} (' in proc.stdout
  share = re.search(r'per image written, (\d+)% of it in FH', proc.stdout)
  assert share and 0 < int(share.group(1)) <= 100, proc.stdout
  assert 'segments per image (scale=100, min_size=50): min ' in proc.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_keep_freed_memory_spares_fh_its_page_faults():
  code = """if True:
    import resource, sys
    from skimage import data, segmentation
    from detcon import record_writer
    if sys.argv[1] == 'keep':
      record_writer.keep_freed_memory()
    image = data.astronaut()
    segmentation.felzenszwalb(image, scale=100, min_size=50)  # Peak memory.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
      segmentation.felzenszwalb(image, scale=100, min_size=50)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  """
  faults = {
      mode: int(subprocess.run(
          [sys.executable, '-c', code, mode], cwd=REPO, capture_output=True,
          text=True, check=True).stdout)
      for mode in ('default', 'keep')}
  # FH's temporaries are about 2 MB-12 MB each: thousands of 4 KiB pages an
  # image when glibc unmaps them, none once they are kept.
  assert faults['default'] > 3000, faults
  assert faults['keep'] < 300, faults


def test_shard_names_and_every_good_file_once(data, png_run):
  _, out, shards = png_run
  assert list(shards) == [f'train-{i:05d}-of-00004' for i in range(4)] + [
      f'validation-{i:05d}-of-00002' for i in range(2)]
  for split, directory in (('train', data.train), ('validation', data.val)):
    seen = collections.Counter(
        (r['image/class/synset'].decode(), r['image/filename'].decode())
        for r in by_split(shards, split))
    assert set(seen) == data.expected(directory)
    assert set(seen.values()) == {1}


@pytest.mark.parametrize('which', ['png_run', 'raw_run'])
def test_masks_equal_fh_on_decoded_stored_image(which, request):
  run = request.getfixturevalue(which)
  pairs = [(100, 50)] if which == 'png_run' else [(100, 50), (300, 100)]
  records_seen = 0
  for record in by_split(run[2], 'train') + by_split(run[2], 'validation'):
    image = tf.io.decode_image(record['image/encoded'], channels=3).numpy()
    height, width = record['image/height'], record['image/width']
    assert image.shape == (height, width, 3)
    masks = records.decode_masks(record[records.MASK_KEY], height, width)
    expected = np.stack([segmentation.felzenszwalb(image, scale=s, min_size=m)
                         for s, m in pairs])
    np.testing.assert_array_equal(masks, expected)
    masks_tf = records.decode_masks_tf(record[records.MASK_KEY], height, width)
    np.testing.assert_array_equal(masks_tf.numpy(), expected.transpose(1, 2, 0))
    records_seen += 1
  assert records_seen > 30


def test_read_example_gives_the_fields_of_a_real_record(png_run):
  shard = os.path.join(png_run[1], final_names(png_run[1])[0])
  raw = next(tf.data.TFRecordDataset(shard).as_numpy_iterator())
  want = read_records(shard)[0]
  got = records.read_example(raw)
  assert got['image'] == want['image/encoded']
  assert (got['height'], got['width'], got['label']) == (
      want['image/height'], want['image/width'], want['image/class/label'])
  assert got['filename'] == want['image/filename'].decode()
  assert got['synset'] == want['image/class/synset'].decode()
  assert got['mask_source'] == want[records.MASK_SOURCE_KEY].decode()
  np.testing.assert_array_equal(got['masks'], records.decode_masks(
      want[records.MASK_KEY], got['height'], got['width']))


def test_labels_from_sorted_folders(data, png_run):
  for split, directory in (('train', data.train), ('validation', data.val)):
    for record in by_split(png_run[2], split):
      synset = record['image/class/synset'].decode()
      assert record['image/filename'].decode() in os.listdir(
          os.path.join(directory, synset))
      label = sorted(data.synsets).index(synset) + 1
      assert record['image/class/label'] == label
      assert record['image/class/text'].decode() == synset
      assert record['image/colorspace'] == b'RGB'
      assert record['image/format'] == b'JPEG'
      assert record['image/channels'] == 3
      assert record[records.MASK_SOURCE_KEY] == b'fh'
  assert 'No labels file' in png_run[0].stderr


def test_labels_from_labels_and_metadata_files(raw_run):
  _, _, shards, labels, texts = raw_run
  records_seen = by_split(shards, 'train') + by_split(shards, 'validation')
  for record in records_seen:
    synset = record['image/class/synset'].decode()
    assert record['image/class/label'] == labels.index(synset) + 1
    assert record['image/class/text'].decode() == texts[synset]
  assert {r['image/class/label'] for r in records_seen} == {2, 3, 4}


def test_classes_are_mixed_across_shards(png_run):
  for name, shard in png_run[2].items():
    if name.startswith('train-'):
      assert len({r['image/class/synset'] for r in shard}) >= 2, name


def test_raw_and_png_give_the_same_masks_and_shards(png_run, raw_run):
  png_shards, raw_shards = png_run[2], raw_run[2]
  assert list(png_shards) == list(raw_shards)
  for name in png_shards:
    assert ([r['image/filename'] for r in png_shards[name]] ==
            [r['image/filename'] for r in raw_shards[name]])
    for png, raw in zip(png_shards[name], raw_shards[name], strict=True):
      h, w = png['image/height'], png['image/width']
      assert png[records.MASK_KEY].startswith(records.PNG_SIGNATURE)
      assert len(raw[records.MASK_KEY]) == 2 * h * w  # Two uint8 masks.
      np.testing.assert_array_equal(
          records.decode_masks(png[records.MASK_KEY], h, w)[0],
          records.decode_masks(raw[records.MASK_KEY], h, w)[0])


def test_bad_files_converted_or_skipped(data, png_run):
  proc, _, shards = png_run
  stored = {r['image/filename'].decode(): r['image/encoded']
            for r in by_split(shards, 'train')
            if r['image/class/synset'].decode() == data.synsets[1]}
  skipped = [n for n, outcome in data.bad.items() if outcome == 'skipped']
  for name, outcome in data.bad.items():
    if outcome == 'converted':
      image = Image.open(io.BytesIO(stored[name]))
      assert (image.format, image.mode) == ('JPEG', 'RGB'), name
    else:
      assert name not in stored
      assert f'{os.path.join(data.bad_dir, name)} (' in proc.stdout, name
  with open(os.path.join(data.bad_dir, 'exif.JPEG'), 'rb') as f:
    assert stored['exif.JPEG'] == f.read()  # RGB JPEGs are kept as they are.
  for name in ('png_data.JPEG', 'cmyk.JPEG', 'grayscale.JPEG'):
    with open(os.path.join(data.bad_dir, name), 'rb') as f:
      assert stored[name] != f.read()
  assert f'files skipped: {len(skipped)}\n' in proc.stdout
  for reason in ('too small', 'not an image', 'corrupt or truncated'):
    assert reason in proc.stdout


def test_rerun_skips_complete_shards_and_refuses_other_settings(data,
                                                                 png_run):
  _, out, shards = png_run
  args = [f'--train_directory={data.train}',
          f'--validation_directory={data.val}', f'--output_directory={out}',
          *SHARD_ARGS, *ONE_PAIR, '--num_threads=2']
  mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in shards}
  proc = run_script(*args, cwd=data.root)
  assert proc.returncode == 0, proc.stderr
  assert '0 written, 6 already complete' in proc.stdout
  slic = [a for a in args if a not in ONE_PAIR] + ['--segmentation=slic']
  for changed in ([*args, '--seed=7'], slic):
    proc = run_script(*changed, cwd=data.root)
    assert proc.returncode != 0, changed
    assert 'other input files or settings' in proc.stderr, changed
  assert mtimes == {n: os.stat(os.path.join(out, n)).st_mtime_ns
                    for n in shards}


def test_a_tiny_memory_budget_runs_each_image_alone_with_the_same_shards(
    data, png_run):
  reference = png_run[2]
  out = os.path.join(data.root, 'out', 'tiny-budget')
  proc = run_script(f'--train_directory={data.train}',
                    f'--validation_directory={data.val}',
                    f'--output_directory={out}', *SHARD_ARGS, *ONE_PAIR,
                    '--num_threads=2', '--mask_memory_gb=1e-6', cwd=data.root)
  assert proc.returncode == 0, proc.stderr
  # Every image that reached its masks was over the 1 kB budget (a file
  # found corrupt while decoding as well).
  alone = [line for line in proc.stderr.splitlines() if 'runs alone' in line]
  assert f'images over the memory budget, run alone: {len(alone)}\n' in (
      proc.stdout)
  for record in (r for records_ in reference.values() for r in records_):
    name = record['image/filename'].decode()
    assert any(f'{os.sep}{name} is ' in line for line in alone), name
  assert 'may take 0.0 GB at once for the masks' in proc.stderr
  # The records of the default budget, in the same order. (Not the bytes:
  # protobuf writes a map's entries in no fixed order.)
  assert read_output(out) == reference


def test_more_shards_than_files_is_said_and_the_extra_shards_are_empty(
    data, tmp_path):
  out = str(tmp_path / 'out')
  files = len(data.files(data.val))
  args = (f'--train_directory={data.val}', f'--output_directory={out}',
          f'--train_shards={files + 3}', *ONE_PAIR, '--num_threads=2')
  proc = run_script(*args, '--mask_memory_gb=-1', cwd=tmp_path)
  assert proc.returncode != 0
  assert '--mask_memory_gb must be 0' in proc.stderr
  proc = run_script(*args, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert (f'--train_shards={files + 3} is more than the {files} files of '
          f'train: 3 shards will be empty') in proc.stderr
  assert f'--train_shards={files} or fewer' in proc.stderr
  counts = [len(read_records(os.path.join(out, n))) for n in final_names(out)
            if n.startswith('train-')]
  assert len(counts) == files + 3 and sorted(counts)[:3] == [0, 0, 0]


def _children(pid):
  children = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          fields = f.read().rsplit(')', 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid:
        children.append(int(entry))
  return children


def test_interrupted_run_resumes_to_the_same_records(data, png_run):
  reference = png_run[2]
  out = os.path.join(data.root, 'out', 'killed')
  args = [f'--train_directory={data.train}',
          f'--validation_directory={data.val}', f'--output_directory={out}',
          *SHARD_ARGS, *ONE_PAIR]
  proc = subprocess.Popen(
      [sys.executable, SCRIPT, *args, '--num_threads=1'], cwd=data.root,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  deadline = time.time() + 240
  while not (os.path.isdir(out) and final_names(out)):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.01)
  workers = _children(proc.pid)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = read_output(out)
  assert 1 <= len(done) < len(reference), 'not killed between shards'
  for name, shard in done.items():  # Complete, never partial.
    assert shard == reference[name], name
  deadline = time.time() + 30
  while any(os.path.exists(f'/proc/{p}') for p in workers):
    assert time.time() < deadline, 'workers outlived the killed job'
    time.sleep(0.1)
  mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in done}
  rerun = run_script(*args, '--num_threads=2', cwd=data.root)
  assert rerun.returncode == 0, rerun.stderr
  assert read_output(out) == reference
  assert mtimes == {n: os.stat(os.path.join(out, n)).st_mtime_ns
                    for n in done}
  assert not [n for n in os.listdir(out) if '.tmp-' in n]


def test_mask_ids_above_255_skip_the_image_in_raw_mode(tmp_path):
  class_dir = tmp_path / 'in' / 'n00000001'
  class_dir.mkdir(parents=True)
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(noise).save(class_dir / 'noise.JPEG', quality=95)
  Image.new('RGB', (32, 32), (40, 90, 200)).save(class_dir / 'flat.JPEG')
  decoded = tf.io.decode_image((class_dir / 'noise.JPEG').read_bytes(),
                               channels=3).numpy()
  assert segmentation.felzenszwalb(decoded, scale=1, min_size=1).max() > 255
  out = tmp_path / 'out'
  proc = run_script(f'--train_directory={tmp_path / "in"}',
                    f'--output_directory={out}', '--train_shards=1',
                    '--num_threads=1', '--fh_scales=1', '--fh_min_sizes=1',
                    '--mask_encoding=raw', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  written = read_records(str(out / 'train-00000-of-00001'))
  assert [r['image/filename'] for r in written] == [b'flat.JPEG']
  assert written[0][records.MASK_KEY] == bytes(32 * 32)  # One segment, id 0.
  assert 'mask ids above 255' in proc.stdout
  assert 'noise.JPEG' in proc.stdout


def test_input_and_output_errors_are_clear(tmp_path):
  good = tmp_path / 'good'
  sample_data.make_imagenet_folder(str(good), num_classes=1,
                                   images_per_class=1)
  empty = tmp_path / 'empty'
  (empty / 'n00000001').mkdir(parents=True)
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a directory')
  cases = [
      (tmp_path / 'missing', tmp_path / 'out1', 'does not exist'),
      (empty, tmp_path / 'out2', 'holds no image files'),
      (good, a_file / 'out', 'cannot create --output_directory'),
  ]
  if os.geteuid() != 0:  # Root writes anywhere.
    read_only = tmp_path / 'read_only'
    read_only.mkdir(mode=0o555)
    cases.append((good, read_only, 'is not writable'))
  for train, out, message in cases:
    proc = run_script(f'--train_directory={train}', f'--output_directory={out}',
                      cwd=tmp_path)
    assert proc.returncode != 0, message
    assert message in proc.stderr, proc.stderr
    assert not os.path.isdir(out) or not os.listdir(out)  # No work started.


def test_tasks_split_the_shards_and_together_equal_one_job(data, png_run):
  """Two tasks (a job array) write disjoint shards that make the whole set."""
  _, _, whole = png_run
  out = os.path.join(data.root, 'out', 'tasks')
  written = []
  for task in range(2):
    proc = run_script(f'--train_directory={data.train}',
                      f'--validation_directory={data.val}',
                      f'--output_directory={out}', *SHARD_ARGS, *ONE_PAIR,
                      '--num_threads=1', '--num_tasks=2',
                      f'--task_index={task}', cwd=data.root)
    assert proc.returncode == 0, proc.stderr
    names = set(final_names(out))
    written.append(names - set().union(*written))
  assert written[0] and written[1]
  assert all(int(n.split('-')[1]) % 2 == 0 for n in written[0])
  assert all(int(n.split('-')[1]) % 2 == 1 for n in written[1])
  split = read_output(out)
  assert list(split) == list(whole)
  for name in whole:
    assert ([r['image/filename'] for r in split[name]] ==
            [r['image/filename'] for r in whole[name]])


def test_job_array_task_writes_exactly_its_shards(data, png_run):
  """`sbatch --array=4-5`, task 5: index 1 of 2, the odd shards, no flags."""
  _, _, whole = png_run
  out = os.path.join(data.root, 'out', 'array')
  proc = run_script(f'--train_directory={data.train}',
                    f'--validation_directory={data.val}',
                    f'--output_directory={out}', *SHARD_ARGS, *ONE_PAIR,
                    '--num_threads=1', cwd=data.root,
                    env=dict(SLURM_ARRAY_TASK_COUNT='2',
                             SLURM_ARRAY_TASK_ID='5', SLURM_ARRAY_TASK_MIN='4',
                             SLURM_ARRAY_JOB_ID='7'))
  assert proc.returncode == 0, proc.stderr
  assert ('Task 1 of 2, from the SLURM job array (SLURM_ARRAY_TASK_COUNT=2, '
          'SLURM_ARRAY_TASK_ID=5, SLURM_ARRAY_TASK_MIN=4)') in proc.stderr
  odd = [n for n in whole if int(n.split('-')[1]) % 2 == 1]
  assert final_names(out) == odd
  for name, recs in read_output(out).items():
    assert ([r['image/filename'] for r in recs] ==
            [r['image/filename'] for r in whole[name]])


def test_job_array_that_is_not_a_range_is_an_error(data, tmp_path):
  proc = run_script(f'--train_directory={data.train}',
                    f'--output_directory={tmp_path}', cwd=data.root,
                    env=dict(SLURM_ARRAY_TASK_COUNT='3',
                             SLURM_ARRAY_TASK_ID='9', SLURM_ARRAY_TASK_MIN='1'))
  assert proc.returncode != 0
  assert 'gives no task index in [0, 3)' in proc.stderr
  assert '--num_tasks and --task_index' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_task_index_out_of_range_is_an_error(data, tmp_path):
  proc = run_script(f'--train_directory={data.train}',
                    f'--output_directory={tmp_path}', '--num_tasks=2',
                    '--task_index=2', cwd=data.root)
  assert proc.returncode != 0
  assert '--task_index must be in [0, --num_tasks=2)' in proc.stderr


# Mask sources (SLIC, ground truth) and flat or nested folders: tiny images,
# one shard per run.


def _move(src, dst):
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  os.replace(src, dst)


class Layouts:
  """A flat folder, a mixed flat + nested one, and label PNGs for both."""

  def __init__(self, root):
    self.root = root
    self.flat = os.path.join(root, 'flat')
    self.mixed = m = os.path.join(root, 'mixed')
    sample_data.make_imagenet_folder(self.flat, num_classes=1,
                                     images_per_class=4, seed=2, min_side=24,
                                     max_side=64)
    for name in os.listdir(os.path.join(self.flat, 'n00000001')):
      _move(os.path.join(self.flat, 'n00000001', name),
            os.path.join(self.flat, name.replace('n00000001', 'flat')))
    os.rmdir(os.path.join(self.flat, 'n00000001'))
    sample_data.make_imagenet_folder(m, num_classes=2, images_per_class=3,
                                     seed=3, min_side=24, max_side=64)
    _move(f'{m}/n00000001/n00000001_1.JPEG',
          f'{m}/n00000001/sub/deeper/nested.JPEG')
    _move(f'{m}/n00000002/n00000002_1.JPEG', f'{m}/top_a.JPEG')
    _move(f'{m}/n00000002/n00000002_2.JPEG', f'{m}/top_b.JPEG')
    shutil.copy(f'{m}/top_a.JPEG', f'{m}/.hidden.JPEG')
    os.makedirs(f'{m}/n00000002/.cache')
    shutil.copy(f'{m}/top_a.JPEG', f'{m}/n00000002/.cache/cached.JPEG')
    # File name -> (label, synset) of each file of `mixed` to write once.
    self.labels = {
        'top_a.JPEG': (0, ''), 'top_b.JPEG': (0, ''),
        'n00000001_0.JPEG': (1, 'n00000001'),
        'n00000001_2.JPEG': (1, 'n00000001'),
        'nested.JPEG': (1, 'n00000001'),
        'n00000002_0.JPEG': (2, 'n00000002')}
    # File name -> the ids written to its label PNG (255: ignore).
    self.ground_truth = {}
    self.gt_mixed = g = os.path.join(root, 'gt_mixed')
    self._label(f'{m}/n00000001/sub/deeper/nested.JPEG',
                f'{g}/n00000001/sub/deeper/nested.png')
    self._label(f'{m}/top_a.JPEG', f'{g}/nested.png', keep=False)  # Decoy.
    self._label(f'{m}/top_a.JPEG', f'{g}/top_a.png')
    self._label(f'{m}/n00000001/n00000001_0.JPEG', f'{g}/n00000001_0.png',
                palette=False)  # Flat VOC layout, grayscale.
    self._label(f'{m}/n00000002/n00000002_0.JPEG',
                f'{g}/n00000002/n00000002_0.png')
    self._label(f'{m}/n00000001/n00000001_2.JPEG',
                f'{g}/n00000001/n00000001_2.png', extra_width=1)
    self.gt_flat = os.path.join(root, 'gt_flat')
    for i, name in enumerate(sorted(os.listdir(self.flat))):
      self._label(os.path.join(self.flat, name),
                  os.path.join(self.gt_flat, name.replace('.JPEG', '.png')),
                  palette=i % 2 == 0)

  def _label(self, image, png, palette=True, extra_width=0, keep=True):
    """Writes random ids of the image's size as a palette or gray PNG."""
    width, height = Image.open(image).size
    rng = np.random.default_rng(len(self.ground_truth) + 10 * keep)
    ids = rng.choice(np.array([0, 2, 5, 17, 255], np.uint8),
                     (height, width + extra_width))
    os.makedirs(os.path.dirname(png), exist_ok=True)
    if palette:
      voc.write_label_png(png, ids)
    else:
      Image.fromarray(ids).save(png)
    if keep:
      self.ground_truth[os.path.basename(image)] = ids


@pytest.fixture(scope='module')
def layouts(data):
  return Layouts(os.path.join(data.root, 'layouts'))


def _run_one_shard(layouts, directory, name, *args):
  """(process, records) of the script on `directory`, into one shard."""
  out = os.path.join(layouts.root, name)
  proc = run_script(f'--train_directory={directory}',
                    f'--output_directory={out}', '--train_shards=1',
                    '--num_threads=2', *args, cwd=layouts.root)
  assert proc.returncode == 0, proc.stderr
  return proc, read_records(os.path.join(out, 'train-00000-of-00001'))


@pytest.fixture(scope='module')
def slic_run(layouts):
  return _run_one_shard(layouts, layouts.mixed, 'slic', '--segmentation=slic',
                        '--slic_n_segments=12', '--slic_compactness=5')


@pytest.fixture(scope='module')
def gt_mixed_run(layouts):
  return _run_one_shard(layouts, layouts.mixed, 'gt_mixed',
                        '--segmentation=ground_truth',
                        f'--ground_truth_directory={layouts.gt_mixed}')


@pytest.fixture(scope='module')
def gt_flat_run(layouts):
  return _run_one_shard(layouts, layouts.flat, 'gt_flat',
                        '--segmentation=ground_truth',
                        f'--ground_truth_directory={layouts.gt_flat}',
                        '--ground_truth_ignore=own_id')


def test_slic_masks_equal_slic_on_decoded_stored_image(slic_run):
  _, written = slic_run
  assert written
  for record in written:
    image = tf.io.decode_image(record['image/encoded'], channels=3).numpy()
    masks = records.decode_masks(record[records.MASK_KEY],
                                 record['image/height'], record['image/width'])
    expected = segmentation.slic(image, n_segments=12, compactness=5,
                                 start_label=0)
    np.testing.assert_array_equal(masks, expected[None])
    assert record[records.MASK_SOURCE_KEY] == b'slic'


def test_mixed_folder_gives_unlabelled_and_nested_class_files(layouts,
                                                              slic_run):
  proc, written = slic_run
  seen = collections.Counter(r['image/filename'].decode() for r in written)
  assert seen == dict.fromkeys(layouts.labels, 1)  # Hidden ones left out.
  for record in written:
    label, synset = layouts.labels[record['image/filename'].decode()]
    assert record['image/class/label'] == label
    assert record['image/class/synset'].decode() == synset
    assert record['image/class/text'].decode() == synset
  assert 'unlabelled images written (label 0): 2\n' in proc.stdout


def test_flat_folder_writes_every_image_once_with_label_0(layouts,
                                                          gt_flat_run):
  proc, written = gt_flat_run
  names = sorted(r['image/filename'].decode() for r in written)
  assert names == sorted(os.listdir(layouts.flat))
  for record in written:
    assert record['image/class/label'] == 0
    assert record['image/class/synset'] == record['image/class/text'] == b''
  assert f'unlabelled images written (label 0): {len(names)}\n' in proc.stdout


@pytest.mark.parametrize('run, ignore', [('gt_mixed_run', 'background'),
                                         ('gt_flat_run', 'own_id')])
def test_ground_truth_masks_round_trip(layouts, run, ignore, request):
  _, written = request.getfixturevalue(run)
  assert len(written) >= 4
  for record in written:
    ids = layouts.ground_truth[record['image/filename'].decode()]
    ignored = ids == 255
    fill = 0 if ignore == 'background' else int(ids[~ignored].max()) + 1
    masks = records.decode_masks(record[records.MASK_KEY],
                                 record['image/height'], record['image/width'])
    np.testing.assert_array_equal(masks, np.where(ignored, fill, ids)[None])
    assert record[records.MASK_SOURCE_KEY] == b'ground_truth'


def test_missing_or_wrong_size_label_png_skips_the_image(layouts,
                                                         gt_mixed_run):
  proc, written = gt_mixed_run
  assert {r['image/filename'].decode() for r in written} == set(
      layouts.labels) - {'top_b.JPEG', 'n00000001_2.JPEG'}
  assert 'files skipped: 2\n' in proc.stdout
  assert 'no ground-truth label: 1\n' in proc.stdout
  assert 'ground-truth size differs from the image: 1\n' in proc.stdout
  assert f'{os.path.join(layouts.mixed, "top_b.JPEG")} (' in proc.stdout


def test_mask_source_flag_errors_are_clear(data, tmp_path):
  no_pngs = tmp_path / 'no_pngs'
  no_pngs.mkdir()
  (no_pngs / 'notes.txt').write_text('labels go here')
  cases = [
      (['--segmentation=ground_truth'], 'needs --ground_truth_directory'),
      (['--segmentation=ground_truth',
        f'--ground_truth_directory={tmp_path / "missing"}'], 'does not exist'),
      (['--segmentation=ground_truth', f'--ground_truth_directory={no_pngs}'],
       'holds no .png files'),
      (['--segmentation=slic', '--fh_scales=100'],
       '--fh_scales is for --segmentation=fh'),
  ]
  for extra, message in cases:
    out = tmp_path / 'out'
    proc = run_script(f'--train_directory={data.val}',
                      f'--output_directory={out}', *extra, cwd=tmp_path)
    assert proc.returncode != 0, message
    assert message in proc.stderr, proc.stderr
    assert not out.exists()  # No work started.


def test_unknown_mask_source_or_settings_are_refused():
  with pytest.raises(ValueError, match='unknown mask source'):
    records.make_example(image=b'', height=1, width=1, filename='a.jpg',
                         label=0, synset='', text='', masks=b'',
                         mask_source='felzenszwalb')
  with pytest.raises(ValueError, match='unknown ground_truth_ignore'):
    record_writer.Settings(((1000.0, 1000),), 'png',
                           ground_truth_ignore='drop')


def test_deep_images_are_stored_scaled_to_8_bits(data, png_run):
  """16-bit and float inputs: the stored JPEG is the photo, not a flat square
  (PIL's own conversion clips them to 255 and 0)."""
  _, _, shards = png_run
  stored = {r['image/filename'].decode(): r['image/encoded']
            for r in by_split(shards, 'train')}
  gray = sample_data.deep_gray()[2].astype(int)
  for name in ('16bit.JPEG', 'float.JPEG'):
    pixels = np.asarray(Image.open(io.BytesIO(stored[name])).convert('L'))
    assert pixels.shape == gray.shape
    error = np.abs(pixels.astype(int) - gray)
    assert error.mean() < 1.5 and error.max() < 24, name  # JPEG q95 only.
