"""Images and labels for the classification evaluators, from three sources.

A source is a string `<kind>:<location>`:

* `records:<dir>`: our TFRecords (`generate_fh_masks_for_imagenet.py`), split
  'train' or 'validation', read by `data.make_eval_dataset`.
* `folder:<dir>`: an ImageNet-layout folder, `<dir>/<split>/<class>/<image>`
  (split '' or None: `<dir>/<class>/<image>`). The classes are the sorted
  class folder names, numbered from 0, so the train and evaluation folders
  must hold the same class folders. Images: .JPEG, .jpg, .png (any case).
* `tfds:<name>`: a TensorFlow Datasets dataset already prepared in a local
  `data_dir` (`tfds build <name> --data_dir=<data_dir>`), read by name with
  its split syntax (`train`, `train[:10%]`, `validation[:1000]`), its image
  and label being the dataset's supervised keys. Nothing is downloaded.

Every source goes through the same preprocessing as the records'
`data.make_eval_dataset`: for training (`train=True`) a random crop and flip
drawn from the seed, shuffled, repeated, full batches only; for evaluation the
centre crop, one pass in a fixed order, the last batch smaller when the images
do not fill it. Images are split over JAX processes (each reads its share).
"""

import os

import jax
import tensorflow as tf

from detcon import data

KINDS = ('records', 'folder', 'tfds')
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')
_TFDS_HOW_TO = ('nothing is downloaded here: prepare it first with `tfds '
                'build {name} --data_dir={data_dir}` (for ImageNet, put its '
                'tar files in {data_dir}/downloads/manual first)')


def make_dataset(source: str, *, split: str | None, image_size: int,
                 train: bool, batch_size: int, seed: int = 0,
                 data_dir: str | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 shuffle_buffer_batches: int = 10) -> tf.data.Dataset:
  """Batches of images and 0-based labels of one split of a source.

  Args:
    source: `records:<dir>`, `folder:<dir>` or `tfds:<name>` (see the module
      docstring).
    split: records: 'train' or 'validation'; folder: the subfolder of the
      split ('' or None: the folder itself); tfds: a TFDS split, with slices
      (`train[:10%]`).
    image_size: side S of the square images, in pixels.
    train: random crops and flips, shuffled, infinite (True), or centre
      crops, one pass (False).
    batch_size: images per batch of this process.
    seed: seeds the order and the crops (`train` only).
    data_dir: for `tfds:` sources, the local TFDS data directory (required).
    process_index, process_count: default `jax.process_index()`,
      `jax.process_count()`.
    shuffle_buffer_batches: shuffle buffer in batches (`train` only).

  Returns:
    A dataset of dicts `images` float32 `[B, S, S, 3]` in [0, 1], `labels`
    int32 `[B]` (0-based; records of images without a class give -1).

  Raises:
    ValueError: an unknown kind of source, an unknown or unprepared TFDS
      dataset or split, a dataset without a label.
    FileNotFoundError: a missing directory, or a folder without images.
  """
  kind, location = _parse_source(source)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if kind == 'records':
    return data.make_eval_dataset(
        data.find_shards(location, split), batch_size=batch_size,
        image_size=image_size, mode='random' if train else 'center',
        seed=seed, process_index=index, process_count=count,
        shuffle_buffer_batches=shuffle_buffer_batches)
  data.hide_gpus_from_tf()
  if kind == 'folder':
    images = _folder_images(location, split, index, count, train, seed)
  else:
    images = _tfds_images(location, split, data_dir, index, count, train,
                          seed)
  if train:
    images = images.repeat().shuffle(shuffle_buffer_batches * batch_size,
                                     seed=seed)

  def preprocess(k, encoded, label):
    return dict(images=_view(encoded, k, train=train, image_size=image_size,
                             seed=seed, process_index=index),
                labels=tf.cast(label, tf.int32))

  ds = images.enumerate().map(lambda k, x: preprocess(k, *x),
                              num_parallel_calls=data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=train,
                num_parallel_calls=data.AUTOTUNE)
  return ds.prefetch(data.AUTOTUNE)


def num_classes(source: str, *, split: str | None = None,
                data_dir: str | None = None) -> int | None:
  """The number of classes of a source; None for records (not stored).

  For records, the classes are those of the pretraining configuration
  (`config.num_classes`). Arguments and errors as in `make_dataset`.
  """
  kind, location = _parse_source(source)
  if kind == 'folder':
    return len(_class_folders(_split_folder(location, split)))
  if kind == 'tfds':
    builder = _tfds_builder(location, data_dir)
    return builder.info.features[_supervised_keys(builder)[1]].num_classes
  return None


def _parse_source(source: str) -> tuple[str, str]:
  kind, _, location = source.partition(':')
  if kind not in KINDS or not location:
    raise ValueError(
        f'data source {source!r}: use records:<dir>, folder:<dir> or '
        'tfds:<name>')
  return kind, location


def _split_folder(directory: str, split: str | None) -> str:
  folder = os.path.join(directory, split) if split else directory
  if not tf.io.gfile.isdir(folder):
    raise FileNotFoundError(
        f'image folder {folder!r} does not exist; give the folder that holds '
        'one subfolder of images per class (<dir>/<split>/<class>/*.JPEG)')
  return folder


def _class_folders(folder: str) -> list[str]:
  """The sorted class folder names of `folder` (at least one)."""
  classes = sorted(n.rstrip('/') for n in tf.io.gfile.listdir(folder)
                   if tf.io.gfile.isdir(os.path.join(folder, n)))
  if not classes:
    raise FileNotFoundError(
        f'{folder!r} holds no class folders: put the images of each class in '
        'a subfolder of it named after the class (<class>/*.JPEG)')
  return classes


def _folder_images(directory, split, process_index, process_count, shuffle,
                   seed):
  """(encoded image, label) of this process's share of an image folder."""
  folder = _split_folder(directory, split)
  paths, labels = [], []
  for label, name in enumerate(_class_folders(folder)):
    class_dir = os.path.join(folder, name)
    files = sorted(n for n in tf.io.gfile.listdir(class_dir)
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise FileNotFoundError(
          f'class folder {class_dir!r} holds no images '
          f'({", ".join(IMAGE_EXTENSIONS)}); add its images or remove it '
          '(the classes are numbered from the sorted class folders)')
    paths += [os.path.join(class_dir, n) for n in files]
    labels += [label] * len(files)
  ds = tf.data.Dataset.from_tensor_slices((paths, labels))
  ds = ds.shard(process_count, process_index)
  if shuffle:
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  return ds.map(lambda path, label: (tf.io.read_file(path), label),
                num_parallel_calls=data.AUTOTUNE)


def _tfds_builder(name, data_dir):
  """The builder of a TFDS dataset prepared in `data_dir`; never downloads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not data_dir:
    raise ValueError(
        f'tfds:{name} needs a data_dir, the local folder it was prepared in '
        f'({_TFDS_HOW_TO.format(name=name, data_dir="<data_dir>")})')
  if not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(
        f'TFDS data_dir {data_dir!r} does not exist; '
        + _TFDS_HOW_TO.format(name=name, data_dir=data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'unknown TFDS dataset {name!r}: tensorflow-datasets has no builder '
        f'of that name and {data_dir!r} holds no dataset of that name; check '
        'the name (`tfds.list_builders()`); '
        + _TFDS_HOW_TO.format(name=name, data_dir=data_dir)) from None
  if not builder.is_prepared():
    raise ValueError(
        f'TFDS dataset {name!r} is not prepared in {data_dir!r}; '
        + _TFDS_HOW_TO.format(name=name, data_dir=data_dir))
  return builder


def _supervised_keys(builder):
  """(image feature, label feature) names of a TFDS dataset."""
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2:
    raise ValueError(
        f'TFDS dataset {builder.info.full_name!r} has no (image, label) '
        'supervised keys; use a classification dataset')
  return keys


def _tfds_images(name, split, data_dir, process_index, process_count,
                 shuffle, seed):
  """(encoded image, label) of this process's share of a TFDS split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(name, data_dir)
  image_key, _ = _supervised_keys(builder)
  share = tfds.even_splits(split, n=process_count,
                           drop_remainder=False)[process_index]
  try:
    return builder.as_dataset(
        split=share, shuffle_files=shuffle, as_supervised=True,
        decoders={image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed))
  except ValueError as e:  # Unknown split or bad slice syntax.
    raise ValueError(f'TFDS dataset {name!r}, split {split!r}: {e}') from e


def _image_shape(encoded):
  """int32 (height, width) of encoded image bytes (JPEG: from the header)."""
  shape = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.extract_jpeg_shape(encoded),
      lambda: tf.shape(tf.io.decode_image(encoded, 3,
                                          expand_animations=False)))
  return tf.unstack(tf.cast(shape[:2], tf.int32))


def _view(encoded, k, *, train, image_size, seed, process_index):
  """Element k's image, preprocessed as in `data.make_eval_dataset`.

  The crop, flip, decoding and resizing are `detcon.data`'s own (its private
  helpers), so every source gives the records' pixels.

  Returns:
    float32 `[S, S, 3]` in [0, 1].
  """
  height, width = _image_shape(encoded)
  if train:
    parsed = dict(image=encoded, height=height, width=width)
    image, _ = data._random_view(
        parsed, data._element_seed(seed, process_index, k), image_size)
    return image
  window = data.center_crop_window(height, width, image_size)
  return data._resize_image(data._decode_and_crop(encoded, window),
                            image_size)
