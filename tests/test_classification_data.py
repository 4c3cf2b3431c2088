"""detcon.classification_data on real JPEGs: records, a folder, a TFDS dataset.

The TFDS dataset is built on disk at test time from the image folder (as
ImageNet's is built from files put in its manual_dir); nothing is downloaded.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from detcon import classification_data
from tests import common

IMAGE_SIZE = 32
# The photos of test_data, each its own class named after it; the classes are
# numbered by sorted name: astronaut 0, camera 1, chelsea 2, coffee 3,
# immunohistochemistry 4, rocket 5.
CLASSES = sorted(name for name, *_ in common.PHOTOS)
LABELS = {name: i for i, name in enumerate(CLASSES)}
TEST_CLASSES = ('chelsea', 'rocket')  # The folder's and TFDS's 'test' split.


class DetconTinyPhotos(tfds.core.GeneratorBasedBuilder):
  """The image folder in `manual_dir` as a TFDS dataset (splits train, test).

  Its images are the folder's files, stored as they are (not re-encoded).
  """

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'The image folder of the test.'
  # No download checksums to find. TFDS looks for them next to the code with
  # `importlib_resources`, which tensorflow-datasets 4.9.10 uses but only
  # declares for Python < 3.9 (tensorflow/datasets#11212).
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=CLASSES),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(dl_manager.manual_dir / split)
            for split in ('train', 'test')}

  def _generate_examples(self, folder):
    for name in sorted(os.listdir(folder)):
      for file in sorted(os.listdir(folder / name)):
        yield f'{name}/{file}', {'image': os.fspath(folder / name / file),
                                 'label': name}


def _encoded_photos():
  """{class name: (encoded bytes, file extension)} of common.PHOTOS."""
  photos = {}
  for name, height, width, fmt, _ in common.PHOTOS:
    image, _ = common.photo(name, height, width)
    photos[name] = (common.encode_image(image, fmt),
                    '.JPEG' if fmt == 'jpeg' else '.png')
  return photos


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """The same photos as records, an ImageNet-layout folder and TFDS data."""
  root = tmp_path_factory.mktemp('classification')
  photos = _encoded_photos()
  for split, names in (('train', CLASSES), ('test', TEST_CLASSES)):
    for name in names:
      encoded, extension = photos[name]
      os.makedirs(root / 'folder' / split / name)
      (root / 'folder' / split / name / f'{name}{extension}').write_bytes(
          encoded)
  os.makedirs(root / 'records')
  with tf.io.TFRecordWriter(
      str(root / 'records' / 'train-00000-of-00001')) as writer:
    for name, height, width, fmt, _ in common.PHOTOS:
      image, masks = common.photo(name, height, width)
      # The record's label is 1-based; its image bytes are the folder's.
      example = common.photo_example(image, masks, LABELS[name] + 1, fmt=fmt)
      assert example.features.feature['image/encoded'].bytes_list.value[
          0] == photos[name][0]
      writer.write(example.SerializeToString())
  DetconTinyPhotos(data_dir=str(root / 'tfds')).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=str(root / 'folder')))
  return {'folder': f'folder:{root / "folder"}',
          'records': f'records:{root / "records"}',
          'tfds': 'tfds:detcon_tiny_photos', 'data_dir': str(root / 'tfds'),
          'root': root}


def _dataset(source, sources, split='train', **kwargs):
  kwargs = dict(dict(image_size=IMAGE_SIZE, train=False, batch_size=4,
                     data_dir=sources['data_dir'], process_index=0,
                     process_count=1), **kwargs)
  return classification_data.make_dataset(sources[source], split=split,
                                          **kwargs)


def _by_label(ds):
  """{label: image} of one pass of a dataset (each label once)."""
  images = {}
  for batch in ds.as_numpy_iterator():
    for image, label in zip(batch['images'], batch['labels'], strict=True):
      assert label not in images
      images[int(label)] = image
  return images


def test_three_sources_give_the_same_centre_crops(sources):
  records = _by_label(_dataset('records', sources))
  folder = _by_label(_dataset('folder', sources))
  tfds_images = _by_label(_dataset('tfds', sources))
  assert sorted(records) == sorted(folder) == sorted(tfds_images) == list(
      range(len(CLASSES)))
  for label, image in records.items():
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1
    np.testing.assert_array_equal(folder[label], image)
    np.testing.assert_array_equal(tfds_images[label], image)


def test_centre_mode_is_one_pass_with_a_smaller_last_batch(sources):
  for source in ('folder', 'tfds'):
    batches = list(_dataset(source, sources, batch_size=4)
                   .as_numpy_iterator())
    assert [len(b['labels']) for b in batches] == [4, 2]
    assert batches[0]['labels'].dtype == np.int32


def test_folder_labels_follow_the_sorted_class_folders(sources):
  # The labels are those of the folder's own classes: chelsea 0, rocket 1
  # (not their train labels 2 and 5; hence the same folders in every split).
  ds = _dataset('folder', sources, split='test')
  images = _by_label(ds)
  train = _by_label(_dataset('folder', sources))
  np.testing.assert_array_equal(images[0], train[LABELS['chelsea']])
  np.testing.assert_array_equal(images[1], train[LABELS['rocket']])
  assert classification_data.num_classes(sources['folder'],
                                         split='test') == 2
  assert classification_data.num_classes(sources['folder'],
                                         split='train') == len(CLASSES)


def test_folder_itself_holds_the_classes_without_a_split(sources):
  source = f'folder:{sources["root"] / "folder" / "test"}'
  ds = classification_data.make_dataset(
      source, split=None, image_size=IMAGE_SIZE, train=False, batch_size=8,
      process_index=0, process_count=1)
  assert sorted(_by_label(ds)) == [0, 1]


def test_tfds_split_slice_and_classes(sources):
  half = list(_dataset('tfds', sources, split='train[:50%]', batch_size=8)
              .as_numpy_iterator())
  assert len(half[0]['labels']) == len(CLASSES) // 2
  test = _by_label(_dataset('tfds', sources, split='test'))
  assert sorted(test) == [LABELS['chelsea'], LABELS['rocket']]
  assert classification_data.num_classes(
      sources['tfds'], data_dir=sources['data_dir']) == len(CLASSES)


def test_training_mode_is_random_infinite_and_seeded(sources):
  for source in ('records', 'folder', 'tfds'):
    def batches(seed, source=source):
      ds = _dataset(source, sources, train=True, batch_size=4, seed=seed)
      return [b for _, b in zip(range(4), ds.as_numpy_iterator(),
                                strict=False)]
    first = batches(0)
    assert len(first) == 4  # 16 images from 6: the stream repeats.
    assert all(b['images'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
               for b in first)
    again, other = batches(0), batches(1)
    for a, b in zip(first, again, strict=True):
      np.testing.assert_array_equal(a['images'], b['images'])
    assert any(not np.array_equal(a['images'], b['images'])
               for a, b in zip(first, other, strict=True))


def test_processes_read_disjoint_shares(sources):
  for source in ('folder', 'tfds'):
    shares = [_by_label(_dataset(source, sources, process_index=i,
                                 process_count=2)) for i in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(set(shares[0]) | set(shares[1])) == list(
        range(len(CLASSES)))


def test_tfds_errors(sources, tmp_path):
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_"):
    _dataset('tfds', dict(sources, tfds='tfds:no_such_dataset_xyz'))
  with pytest.raises(ValueError, match='needs a data_dir'):
    _dataset('tfds', sources, data_dir=None)
  with pytest.raises(FileNotFoundError, match='data_dir .* does not exist'):
    _dataset('tfds', sources, data_dir=str(tmp_path / 'absent'))
  with pytest.raises(ValueError, match='not prepared in'):
    _dataset('tfds', sources, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="split 'validation'"):
    _dataset('tfds', sources, split='validation')


def test_folder_and_source_errors(sources, tmp_path):
  folder = f'folder:{tmp_path}'
  with pytest.raises(FileNotFoundError, match='does not exist'):
    _dataset('folder', dict(sources, folder=folder), split='train')
  os.makedirs(tmp_path / 'train')
  with pytest.raises(FileNotFoundError, match='holds no class folders'):
    _dataset('folder', dict(sources, folder=folder), split='train')
  os.makedirs(tmp_path / 'train' / 'n01')
  (tmp_path / 'train' / 'n01' / 'notes.txt').write_text('not an image')
  with pytest.raises(FileNotFoundError, match="n01' holds no images"):
    _dataset('folder', dict(sources, folder=folder), split='train')
  with pytest.raises(ValueError, match='use records:<dir>, folder:<dir>'):
    _dataset('folder', dict(sources, folder=str(tmp_path)))
