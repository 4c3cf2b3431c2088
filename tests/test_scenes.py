"""The scene generator (`detcon.scenes`): files on disk, read back and checked.

One moderate dataset (all 9 classes, 96 px) is written and read back with
`detcon.voc`; the ignore band is checked on small datasets written twice,
with a band and without (same seed: the same scenes). What the checks need
they recompute with plain NumPy.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detcon import scenes, voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODERATE = dict(num_train=96, num_val=24, image_size=96, num_classes=9,
                seed=3)
LUMA = np.array([0.299, 0.587, 0.114])


def write(path, **kwargs):
  return scenes.write_dataset(str(path), **kwargs)


@pytest.fixture(scope='module')
def moderate(tmp_path_factory):
  """(summary, VOC root) of MODERATE (default 2-px band)."""
  out = tmp_path_factory.mktemp('scenes') / 'moderate'
  return write(out, **MODERATE), str(out / 'voc')


def rendered(root, split, image_id, labels, objects):
  """The scene of a MODERATE image, checked against its files: (scene, class
  labels without band)."""
  scene = scenes.render_scene(
      scenes.image_rng(MODERATE['seed'], split, int(image_id[-6:])),
      image_size=MODERATE['image_size'],
      num_classes=MODERATE['num_classes'])
  with open(voc.image_path(root, image_id), 'rb') as f:
    assert scenes.encode_jpeg(scene.image) == f.read()
  plain_labels = np.array([0] + [o.class_id for o in scene.objects])[
      scene.instances]
  labelled = objects != 255
  assert np.array_equal(scene.instances[labelled], objects[labelled])
  assert np.array_equal(plain_labels[labelled], labels[labelled])
  return scene, plain_labels


def read_split(root, split, num_classes=MODERATE['num_classes']):
  """[(id, image, class labels, instance labels)] of a split, via voc."""
  out = []
  for image_id in voc.read_split(root, split):
    image, labels = voc.load_example(root, image_id, num_classes)
    objects = voc.read_label_png(
        os.path.join(root, voc.OBJECT_DIR, f'{image_id}.png'))
    out.append((image_id, image, labels, objects))
  return out


def files(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def label_changes(labels):
  """bool [H, W]: pixels with an 8-neighbour of another label."""
  h, w = labels.shape
  padded = np.pad(labels, 1, mode='edge')
  return np.any([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != labels
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def dilate(mask, radius):
  """bool [H, W]: pixels within `radius` (Chebyshev) of a True pixel."""
  h, w = mask.shape
  padded = np.pad(mask, radius)
  return np.any([padded[dy:dy + h, dx:dx + w]
                 for dy in range(2 * radius + 1)
                 for dx in range(2 * radius + 1)], axis=0)


def assert_band(root, plain_root, border):
  """The 255 pixels of `root` are a `border`-wide band along the boundaries
  of the instances of `plain_root` (the same scenes, written without band).
  """
  for split in scenes.SPLITS:
    for banded, plain in zip(read_split(root, split),
                             read_split(plain_root, split), strict=True):
      image_id, _, labels, objects = banded
      _, _, plain_labels, plain_objects = plain
      with open(voc.image_path(root, image_id), 'rb') as a, open(
          voc.image_path(plain_root, image_id), 'rb') as b:
        assert a.read() == b.read()
      assert 255 not in plain_objects
      ignore = objects == 255
      assert np.array_equal(objects[~ignore], plain_objects[~ignore])
      assert np.array_equal(labels[~ignore], plain_labels[~ignore])
      # At most ceil(border / 2) pixels deep on either side of a boundary.
      near = dilate(label_changes(plain_objects), (border - 1) // 2)
      assert not np.any(ignore & ~near), image_id
      # No boundary is left without 255; from 2 px on, both sides have it.
      across = plain_objects[:, 1:] != plain_objects[:, :-1]
      down = plain_objects[1:] != plain_objects[:-1]
      for first, second, change in ((ignore[:, 1:], ignore[:, :-1], across),
                                    (ignore[1:], ignore[:-1], down)):
        covered = first & second if border >= 2 else first | second
        assert np.all(covered[change]), image_id


def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path):
  small = dict(num_train=4, num_val=2, image_size=64, num_classes=4)
  first = write(tmp_path / 'a', **small)
  write(tmp_path / 'b', **small)
  write(tmp_path / 'c', seed=1, **small)
  a, b, c = (files(tmp_path / n) for n in 'abc')
  assert len(a) == 4 + 3 * 6 + 2 + 1  # ImageNet copies, VOC, scenes.json.
  assert a == b
  images = [p for p in a if p.endswith(('.jpg', '.png'))]  # VOC's.
  assert len(images) == 18 and all(a[p] != c[p] for p in images)
  # A rerun with the same arguments writes the same files again.
  os.remove(tmp_path / 'a' / 'voc' / 'JPEGImages' / 'val_000001.jpg')
  with open(tmp_path / 'a' / 'voc' / 'JPEGImages' / 'train_000000.jpg',
            'wb') as f:
    f.write(b'damaged')
  rerun = write(tmp_path / 'a', **small)
  assert files(tmp_path / 'a') == b
  assert rerun == first


def test_more_images_keep_the_first_ones(tmp_path):
  write(tmp_path / 'few', num_train=2, num_val=1, image_size=64)
  write(tmp_path / 'more', num_train=3, num_val=2, image_size=64)
  few, more = files(tmp_path / 'few'), files(tmp_path / 'more')
  shared = [p for p in few if p.endswith(('.jpg', '.png'))]
  assert len(shared) == 9
  assert all(few[p] == more[p] for p in shared)


def test_refuses_foreign_folders_and_other_arguments(tmp_path):
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not empty and holds no scenes'):
    write(foreign, num_train=1, num_val=1, image_size=64)
  assert os.listdir(foreign) == ['notes.txt']
  write(tmp_path / 'out', num_train=1, num_val=1, image_size=64)
  before = files(tmp_path / 'out')
  with pytest.raises(ValueError, match=r'other arguments \(seed: 0 -> 5'):
    write(tmp_path / 'out', num_train=1, num_val=1, image_size=64, seed=5)
  assert files(tmp_path / 'out') == before
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError, match='is a file'):
    write(tmp_path / 'file', num_train=1, num_val=1)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_train=0), 'num_train must be an integer >= 1'),
    (dict(num_val=1.5), 'num_val must be an integer'),
    (dict(image_size=16), 'image_size must be an integer >= 32'),
    (dict(num_classes=1), r'num_classes must be .* <= 9'),
    (dict(num_classes=10), r'num_classes must be .* <= 9'),
    (dict(border=-1), 'border must be'),
    (dict(seed=-1), 'seed must be'),
    (dict(objects_per_image=(3, 2)), 'low <= high'),
    (dict(objects_per_image=(0, 2)), 'must lie in 1..20'),
    (dict(objects_per_image=(2,)), 'must be two ints'),
    (dict(object_size=(0.2, 1.5)), r'0 < low <= high <= 1'),
    (dict(object_size=(0.05, 0.3)), 'smallest objects would span 4.8'),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
  args = {**dict(num_train=1, num_val=1, image_size=96), **kwargs}
  with pytest.raises(ValueError, match=message):
    write(tmp_path / 'out', **args)
  assert not os.path.exists(tmp_path / 'out')


def test_voc_layout_reads_back_with_consistent_labels(moderate):
  summary, root = moderate
  size, num_classes = MODERATE['image_size'], MODERATE['num_classes']
  assert summary['class_names'] == list(scenes.CLASS_NAMES)
  for split in scenes.SPLITS:
    examples = read_split(root, split)
    assert [e[0] for e in examples] == [
        f'{split}_{k:06d}' for k in range(MODERATE[f'num_{split}'])]
    for image_id, image, labels, objects in examples:
      with Image.open(voc.image_path(root, image_id)) as jpeg:
        assert (jpeg.format, jpeg.mode) == ('JPEG', 'RGB')
      for path in (voc.label_path(root, image_id),
                   os.path.join(root, voc.OBJECT_DIR, f'{image_id}.png')):
        with Image.open(path) as png:
          assert (png.format, png.mode) == ('PNG', 'P')
      assert image.shape == (size, size, 3)
      assert labels.shape == objects.shape == (size, size)
      assert set(np.unique(labels)) <= set(range(num_classes)) | {255}
      assert np.array_equal(labels == 255, objects == 255)
      assert np.array_equal(labels == 0, objects == 0)
      present = sorted(set(np.unique(objects)) - {0, 255})
      assert present == list(range(1, len(present) + 1))  # None hidden.
      for k in present:
        assert len(np.unique(labels[objects == k])) == 1, (image_id, k)


@pytest.mark.parametrize('border', [1, 2, 3])
def test_ignore_band_lies_exactly_on_boundaries(tmp_path, border):
  small = dict(num_train=3, num_val=1, image_size=64, seed=2)
  write(tmp_path / 'plain', border=0, **small)
  write(tmp_path / 'banded', border=border, **small)
  assert_band(str(tmp_path / 'banded' / 'voc'), str(tmp_path / 'plain' / 'voc'),
              border)


def test_objects_occlude_each_other_but_stay_visible(moderate):
  _, root = moderate
  occluded_discs = occluded_images = 0
  for image_id, _, labels, objects in read_split(root, 'train'):
    scene, _ = rendered(root, 'train', image_id, labels, objects)
    instances = scene.instances  # As written, without the band.
    visible = np.bincount(instances.ravel(),
                          minlength=len(scene.objects) + 1)
    hidden = False
    for k, placed in enumerate(scene.objects, 1):
      assert visible[k] <= placed.drawn_area
      assert visible[k] >= scenes.MIN_VISIBLE * placed.drawn_area
      hidden |= visible[k] < placed.drawn_area
      ys, xs = np.nonzero(instances == k)
      x, y = placed.centre
      assert np.all(np.hypot(xs + 0.5 - x, ys + 0.5 - y) <= placed.radius)
      if placed.class_id == 1:  # A disc.
        area = np.pi * placed.radius**2
        assert abs(placed.drawn_area - area) <= 0.05 * area
        occluded_discs += visible[k] < 0.9 * area
    occluded_images += hidden
  assert occluded_discs >= 3
  assert occluded_images >= 0.6 * MODERATE['num_train']


def test_every_class_appears_and_the_summary_counts_right(moderate):
  summary, root = moderate
  names = list(scenes.CLASS_NAMES)
  for split in scenes.SPLITS:
    examples = read_split(root, split)
    counts = np.bincount(np.concatenate([e[2].ravel() for e in examples]),
                         minlength=256)
    assert np.all(counts[:len(names)] > 0), split
    fractions = summary[split]['class_pixel_fractions']
    for k, name in enumerate(names):
      assert fractions[name] == pytest.approx(counts[k] / counts.sum())
    assert fractions['ignore'] == pytest.approx(counts[255] / counts.sum())
    per_image = [int(e[3][e[3] != 255].max()) for e in examples]
    assert summary[split]['objects_per_image'] == dict(
        min=min(per_image), mean=pytest.approx(np.mean(per_image)),
        max=max(per_image))
    assert 2 <= min(per_image) and max(per_image) <= 5
    assert summary[split]['images'] == len(examples)


def test_imagenet_folder_holds_the_train_jpegs_by_largest_class(moderate):
  summary, root = moderate
  imagenet = summary['imagenet_dir']
  assert imagenet == os.path.join(os.path.dirname(root), 'imagenet', 'train')
  folders = sorted(os.listdir(imagenet))
  assert folders == [f'n{k:08d}_{name}' for k, name in
                     enumerate(scenes.CLASS_NAMES[1:], 1)]
  where = {name: folder for folder in folders
           for name in os.listdir(os.path.join(imagenet, folder))}
  assert sorted(where) == [f'{i}.JPEG' for i in voc.read_split(root, 'train')]
  for image_id, _, labels, objects in read_split(root, 'train'):
    folder = where[f'{image_id}.JPEG']
    _, plain_labels = rendered(root, 'train', image_id, labels, objects)
    counts = np.bincount(plain_labels.ravel(), minlength=9)
    largest = np.argmax(counts[1:]) + 1
    assert folder.startswith(f'n{largest:08d}_')
    with open(os.path.join(imagenet, folder, f'{image_id}.JPEG'), 'rb') as a:
      with open(voc.image_path(root, image_id), 'rb') as b:
        assert a.read() == b.read()
  assert summary['imagenet_images'] == {
      f: len(os.listdir(os.path.join(imagenet, f))) for f in folders}


def instance_pixels(root):
  """[(class, uint8 [n, 3] JPEG pixels)] of every instance, band excluded."""
  out = []
  for split in scenes.SPLITS:
    for _, image, labels, objects in read_split(root, split):
      for k in set(np.unique(objects)) - {0, 255}:
        inside = objects == k
        out.append((int(labels[inside][0]), image[inside]))
  return out


def test_colour_does_not_give_the_class_away(moderate):
  _, root = moderate
  means = {}
  for class_id, pixels in instance_pixels(root):
    means.setdefault(class_id, []).append(pixels.mean(axis=0))
  assert sorted(means) == list(range(1, MODERATE['num_classes']))
  assert min(len(m) for m in means.values()) >= 30
  overall = np.concatenate(list(means.values())).mean(axis=0)
  spread = np.mean([np.std(m, axis=0) for m in means.values()], axis=0)
  assert np.all(spread > 30)  # Instances vary a lot in colour...
  for class_id, m in means.items():  # ...but not with their class.
    assert np.all(abs(np.mean(m, axis=0) - overall) < 0.5 * spread), class_id


def test_texture_survives_jpeg(moderate):
  _, root = moderate
  stds = [np.std(pixels @ LUMA) for _, pixels in instance_pixels(root)
          if len(pixels) >= 100]
  assert len(stds) >= 200
  assert np.mean(np.array(stds) > 15) > 0.9


def python(*args):
  return subprocess.run([sys.executable, '-m', 'detcon.scenes', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_help_lists_every_flag():
  result = python('--help')  # absl exits with 1.
  parameters = inspect.signature(scenes.write_dataset).parameters
  assert len(parameters) == 9
  for name in parameters:
    assert f'--{name}:' in result.stdout, name


def test_command_line_writes_what_the_function_writes(tmp_path):
  args = dict(num_train=3, num_val=2, image_size=64, num_classes=3,
              objects_per_image=(1, 2), object_size=(0.3, 0.5), border=1,
              seed=7)
  assert all(args[k] != v for k, v in scenes.DEFAULTS.items())
  out = tmp_path / 'cli'
  result = python(f'--output_dir={out}', '--num_train=3', '--num_val=2',
                  '--image_size=64', '--num_classes=3',
                  '--objects_per_image=1,2', '--object_size=0.3,0.5',
                  '--border=1', '--seed=7')
  assert result.returncode == 0, result.stderr
  summary = write(tmp_path / 'api', **args)
  assert files(out) == files(tmp_path / 'api')
  root = str(out / 'voc')
  assert f'VOC 2012 layout: {root}' in result.stdout
  assert f'(ImageNet layout): {out / "imagenet" / "train"}' in result.stdout
  train, val = (summary[s]['class_pixel_fractions']['square']
                for s in scenes.SPLITS)
  assert re.search(rf'\n  square +{train:.1%} +{val:.1%}\n', result.stdout)
  with open(out / scenes.SETTINGS_FILE) as f:
    assert json.load(f) == dict(args, objects_per_image=[1, 2],
                                object_size=[0.3, 0.5])
  assert sorted(os.listdir(out / 'imagenet' / 'train')) == [
      'n00000001_disc', 'n00000002_square']
  examples = read_split(root, 'train', 3) + read_split(root, 'val', 3)
  assert len(examples) == 5
  for _, image, labels, objects in examples:
    assert image.shape == (64, 64, 3)
    assert set(np.unique(objects)) <= {0, 1, 2, 255}
    assert set(np.unique(labels)) <= {0, 1, 2, 255}
    for k in set(np.unique(objects)) - {0, 255}:
      ys, xs = np.nonzero(objects == k)
      assert max(np.ptp(ys), np.ptp(xs)) < 0.5 * 64  # object_size <= 0.5.


def test_command_line_refusals(tmp_path):
  out = tmp_path / 'out'
  write(out, num_train=1, num_val=1, image_size=64)
  result = python(f'--output_dir={out}', '--num_train=1', '--num_val=1')
  assert result.returncode != 0
  assert ('detcon.scenes: error: ' + f'{out} holds scenes written with other '
          'arguments (image_size: 64 -> 160)') in result.stderr
  result = python(f'--output_dir={tmp_path / "bad"}', '--num_train=3',
                  '--num_val=2', '--objects_per_image=5,2')
  assert result.returncode != 0
  assert 'objects_per_image must be (low, high)' in result.stderr
