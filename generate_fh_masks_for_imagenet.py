r"""Writes image folders as DetCon TFRecords: image, label, masks.

  python generate_fh_masks_for_imagenet.py \
      --train_directory=imagenet/train --validation_directory=imagenet/val \
      --output_directory=imagenet-fh

Inputs (give either directory or both): each top-level sub-folder of a
directory is a class (`<directory>/<synset>/...`, ImageNet layout), and every
file at any depth below it belongs to that class. Files directly in the
directory are unlabelled (COCO style, e.g. `--train_directory=coco/train2017`):
label 0, empty synset and text. A directory may mix both; hidden files and
folders are ignored. A label is the synset's 1-based line in `--labels_file`
and its text comes from `--imagenet_metadata_file` (`synset<TAB>text`), as in
the original; without those files the sorted class folders give the labels
and the text is the synset (0 stays the "no label" value). Records have the
features of `detcon/records.py`, in shards `train-%05d-of-%05d` and
`validation-%05d-of-%05d`.

Images: a file that already is an RGB JPEG is stored byte for byte (EXIF and
other APP markers included); any other image PIL reads (PNG, CMYK or grayscale
JPEG, ...) is converted to RGB and stored as a quality-95 JPEG. EXIF
orientation is never applied: the stored pixels are the file's, as the
trainer's `tf.io.decode_jpeg` returns them. The masks are computed on exactly
those pixels: the stored bytes are decoded with `tf.io.decode_image(...,
channels=3)` (PIL's JPEG decoder differs from it by a few levels).

Masks (`--segmentation`; each record says which in `image/mask_source`):
`fh` (the default) runs `skimage.segmentation.felzenszwalb` once per (scale,
min_size) pair; `slic` runs `skimage.segmentation.slic` (`start_label=0`)
once; and `ground_truth` stores each image's label PNG from
`--ground_truth_directory` (VOC `SegmentationObject` / `SegmentationClass`
style: palette or 8-bit grayscale, pixel values are the ids, 255 is ignore /
boundary). The label PNG of `<directory>/<path>.<ext>` is
`<ground_truth_directory>/<path>.png`, or else
`<ground_truth_directory>/<file stem>.png` (VOC's flat layout). Its values
are stored exactly, except 255, which becomes id 0 or an id of its own
(`--ground_truth_ignore`).

Skipped, with the reason logged and counted: empty, unreadable, unknown or
corrupt (e.g. truncated) files; images whose shorter side is under 8 pixels
(`MIN_SIDE`, one JPEG block: the input pipeline's smallest random crop, 8% of
the area, would then be about 2x2 pixels and FH has nothing to separate);
with `--mask_encoding=raw`, images with more than 256 segments, whose ids the
original uint8 layout cannot hold (they are never wrapped); and, with
`--segmentation=ground_truth`, images without a label PNG or whose label PNG
is unreadable or of another size than the image.

Work: the file list is sorted, shuffled with `--seed` and cut into contiguous
shards; `--num_threads` worker processes each write whole shards. Memory:
each worker reserves its image's estimated mask memory (FH: about 400 bytes
per pixel) from a shared `--mask_memory_gb` budget before decoding it, so a
few huge photos at once cannot exhaust the machine: an image that does not
fit waits, and one larger than the whole budget runs alone (warned and
counted). The masks are the same whatever the budget. A shard is
written to `.<shard name>.tmp-<pid>` and renamed once complete, so a killed
job leaves no partial file under a final name, and rerunning the same command
skips the complete shards and redoes only those that were in flight. A
fingerprint of the inputs and settings of each split (the mask method and its
settings included), kept beside the shards, stops a rerun with other inputs
or settings from mixing its shards with the old ones. `--num_tasks` /
`--task_index` split the shards over machines sharing the output directory
(shard i goes to task i % num_tasks); in a SLURM job array (`sbatch
--array=0-N`) they default to the array's count and this task's index.

Exit code: non-zero for wrong flags or directories (with a message saying
what to fix, before any work), when a shard could not be written (rerun to
retry it), or when not a single image could be; skipped files alone never
fail the job.
"""

import os
import sys
import tempfile

from absl import app, flags, logging

from detcon import cli, job_array, mask_methods, record_writer, records

_INPUT_LAYOUT = (
    'one sub-folder per class (<dir>/<synset>/..., files at any depth) '
    'and/or unlabelled images directly in <dir> (label 0)')

flags.DEFINE_string(
    'train_directory', None,
    f'Training images: {_INPUT_LAYOUT}. Omit to skip the split.')
flags.DEFINE_string(
    'validation_directory', None,
    f'Validation images: {_INPUT_LAYOUT}. Omit to skip the split.')
flags.DEFINE_string(
    'output_directory', None,
    'Where the TFRecord shards go; created when missing. A rerun into the '
    'same directory resumes: complete shards are kept.')
flags.DEFINE_integer('train_shards', 2048, 'Number of training shards.')
flags.DEFINE_integer('validation_shards', 256, 'Number of validation shards.')
flags.DEFINE_integer(
    'num_threads', os.cpu_count(),
    'Number of worker processes (the original name is kept); each one '
    'writes whole shards. Default: the number of CPUs.')
flags.DEFINE_float(
    'mask_memory_gb', 0,
    'Memory (GB) that the workers\' images may take at once while their '
    'masks are made, estimated from each image\'s size (FH: about 400 '
    'bytes per pixel, 70 MB for an ImageNet image, 9.6 GB for 6000x4000). '
    'An image that does not fit waits; one over the whole budget runs alone. '
    'Masks never change. Each worker also holds about 200 MB of its own. '
    '0: half of the machine\'s memory.')
flags.DEFINE_enum(
    'segmentation', record_writer.Settings.segmentation,
    mask_methods.names(stored=True),
    'Where the masks come from. ' + ' '.join(
        f'{name}: {mask_methods.METHODS[name].help}'
        for name in mask_methods.names(stored=True)))
flags.DEFINE_list(
    'fh_scales', ['1000'],
    'Felzenszwalb scales, comma-separated; pairs with --fh_min_sizes, one '
    'mask per pair, stacked [n_masks, H, W]. --segmentation=fh only.')
flags.DEFINE_list(
    'fh_min_sizes', ['1000'],
    'Felzenszwalb minimum segment sizes (pixels), comma-separated, as many '
    'as --fh_scales. --segmentation=fh only.')
flags.DEFINE_integer(
    'slic_n_segments', record_writer.Settings.slic_n_segments,
    'SLIC\'s target number of segments (the result has about as many, ids '
    '0..n-1). --segmentation=slic only.')
flags.DEFINE_float(
    'slic_compactness', record_writer.Settings.slic_compactness,
    'SLIC\'s balance of colour and space: higher gives squarer segments. '
    '--segmentation=slic only.')
flags.DEFINE_string(
    'ground_truth_directory', None,
    'Label PNGs (palette or 8-bit grayscale, pixel = id, 255 = ignore), VOC '
    'SegmentationObject/SegmentationClass style. The label of '
    '<dir>/<path>.<ext> is <ground_truth_directory>/<path>.png, else '
    '<ground_truth_directory>/<file stem>.png; images without one are '
    'skipped and counted. --segmentation=ground_truth only (required there).')
flags.DEFINE_enum(
    'ground_truth_ignore', record_writer.Settings.ground_truth_ignore,
    record_writer.GROUND_TRUTH_IGNORE,
    'What the label PNGs\' 255 (ignore / boundary) pixels become. '
    'background: id 0. own_id: one id of their own, one above the image\'s '
    'largest id. Other values are stored as they are. '
    '--segmentation=ground_truth only.')
flags.DEFINE_string(
    'labels_file', 'imagenet_lsvrc_2015_synsets.txt',
    'One synset a line; a label is the 1-based line number. When this '
    'default file does not exist, or the flag is empty, the labels are the '
    '1-based positions of the sorted class folders.')
flags.DEFINE_string(
    'imagenet_metadata_file', 'imagenet_metadata.txt',
    'Lines of synset<TAB>human readable text. When this default file does '
    'not exist, or the flag is empty, the text is the synset.')
flags.DEFINE_enum(
    'mask_encoding', 'png', records.MASK_ENCODINGS,
    'png: one compact grayscale PNG (8 or 16 bit) per image. raw: the '
    'original uint8 bytes of [n_masks, H, W], about 65x larger; images with '
    'more than 256 segments are then skipped.')
flags.DEFINE_integer(
    'seed', 12345, 'Seed of the shuffle of all files before sharding.')
flags.DEFINE_integer(
    'num_tasks', 1,
    'Number of machines sharing the job (same flags, same output directory). '
    'Default: SLURM_ARRAY_TASK_COUNT in a SLURM job array, else 1.')
flags.DEFINE_integer(
    'task_index', 0,
    'This machine\'s index in [0, num_tasks): it writes the shards i with '
    'i % num_tasks == task_index. Default: in a SLURM job array, '
    '(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, '
    'else 0. Either flag given: both from the flags.')

FLAGS = flags.FLAGS


# Input listing and labels (main process).


def load_labels(labels_file: str | None, metadata_file: str | None,
                directories: list[str]) -> dict[str, tuple[int, str]]:
  """Maps synset -> (1-based label, text), from the files or the folders."""
  if labels_file:
    with open(labels_file) as f:
      synsets = [line.strip() for line in f if line.strip()]
    if len(set(synsets)) != len(synsets):
      raise record_writer.InputError(
          f'--labels_file={labels_file} lists a synset twice; give each '
          'synset once, one a line')
  else:
    synsets = sorted({e.name for d in directories for e in os.scandir(d)
                      if e.is_dir() and not e.name.startswith('.')})
    logging.info('No labels file: the labels are the 1-based positions of '
                 'the %d sorted class folders.', len(synsets))
  texts = {}
  if metadata_file:
    texts = records.read_synset_texts(metadata_file)
    missing = sum(s not in texts for s in synsets)
    if missing:
      logging.warning('%d synsets have no text in %s; their text is the '
                      'synset.', missing, metadata_file)
  else:
    logging.info('No metadata file: the text of a class is its synset.')
  return {s: (i + 1, texts.get(s, s)) for i, s in enumerate(synsets)}


def _files_below(directory: str) -> list[str]:
  """The files at any depth below `directory`, sorted; hidden ones left out."""
  paths = []
  for root, folders, names in os.walk(directory, followlinks=True):
    folders[:] = [f for f in folders if not f.startswith('.')]
    paths.extend(os.path.join(root, n) for n in names if not n.startswith('.'))
  return sorted(paths)


def list_files(
    directory: str,
    label_map: dict[str, tuple[int, str]]) -> list[record_writer.Entry]:
  """The files of `directory`, sorted, hidden ones left out.

  Args:
    directory: a split's input folder.
    label_map: synset -> (1-based label, text), from `load_labels`.

  Returns:
    First the files directly in `directory`, unlabelled (label 0, synset and
    text empty); then, per class folder `<directory>/<synset>/` in sorted
    order, the files at any depth below it. Class folders that `label_map`
    lacks are left out, with a warning.
  """
  top = sorted((e for e in os.scandir(directory)
                if not e.name.startswith('.')), key=lambda e: e.name)
  entries = [record_writer.Entry(e.path, 0, '', '')
             for e in top if not e.is_dir()]
  folders = [e.name for e in top if e.is_dir()]
  unknown = [f for f in folders if f not in label_map]
  if unknown:
    logging.warning('%s: ignoring %d class folders that have no label: %s',
                    directory, len(unknown), ', '.join(unknown[:10]))
  for synset in folders:
    if synset in label_map:
      label, text = label_map[synset]
      entries.extend(
          record_writer.Entry(path, label, synset, text)
          for path in _files_below(os.path.join(directory, synset)))
  return entries


def _existing_file_flag(name: str) -> str | None:
  """The flag's path; None when empty, or when its default file is absent."""
  path = FLAGS[name].value
  if not path:
    return None
  if not os.path.isfile(path):
    if FLAGS[name].present:
      raise record_writer.InputError(
          f'--{name}={path} does not exist; give the right path, or '
          f'--{name}= to do without it')
    return None
  return path


def _holds_png(directory: str) -> bool:
  """Whether a `.png` file lies at any depth below `directory`."""
  return any(name.endswith('.png') for _, _, names in
             os.walk(directory, followlinks=True) for name in names)


def _check_ground_truth_directory() -> str:
  """The absolute --ground_truth_directory, checked to hold label PNGs."""
  path = FLAGS.ground_truth_directory
  if not path:
    raise record_writer.InputError(
        '--segmentation=ground_truth needs --ground_truth_directory, the '
        'folder of the label PNGs (one <image path or stem>.png per image)')
  if not os.path.isdir(path):
    raise record_writer.InputError(
        f'--ground_truth_directory={path} does not exist or is not a '
        'directory; give the folder of the label PNGs')
  if not _holds_png(path):
    raise record_writer.InputError(
        f'--ground_truth_directory={path} holds no .png files; give the '
        'folder of the label PNGs (e.g. VOC\'s SegmentationObject/)')
  return os.path.abspath(path)


def _parse_settings() -> record_writer.Settings:
  """The settings of the flags, checked; InputError says what to fix."""
  method = FLAGS.segmentation
  # A method's flags given to another method are an error rather than
  # silently ignored.
  for other in mask_methods.names(stored=True):
    for name in mask_methods.METHODS[other].flags:
      if other != method and FLAGS[name].present:
        raise record_writer.InputError(
            f'--{name} is for --segmentation={other}, not '
            f'--segmentation={method}; drop it or change --segmentation')
  try:
    scales = [float(s) for s in FLAGS.fh_scales]
    min_sizes = [int(s) for s in FLAGS.fh_min_sizes]
  except ValueError as e:
    raise record_writer.InputError(
        f'--fh_scales and --fh_min_sizes take comma-separated numbers: '
        f'{e}') from e
  if not scales or len(scales) != len(min_sizes):
    raise record_writer.InputError(
        f'--fh_scales ({len(scales)} values) and --fh_min_sizes '
        f'({len(min_sizes)} values) must pair up one to one')
  if min(scales) <= 0 or min(min_sizes) < 0:
    raise record_writer.InputError('FH scales must be > 0 and min sizes >= 0')
  if FLAGS.slic_n_segments < 1 or FLAGS.slic_compactness <= 0:
    raise record_writer.InputError(
        '--slic_n_segments must be at least 1 and --slic_compactness > 0')
  return record_writer.Settings(
      fh_pairs=tuple(zip(scales, min_sizes, strict=True)),
      mask_encoding=FLAGS.mask_encoding,
      segmentation=method,
      slic_n_segments=FLAGS.slic_n_segments,
      slic_compactness=FLAGS.slic_compactness,
      ground_truth_directory=(_check_ground_truth_directory()
                              if method == 'ground_truth' else ''),
      ground_truth_ignore=FLAGS.ground_truth_ignore)


def _check_output_directory(path: str):
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise record_writer.InputError(
        f'cannot create --output_directory={path} ({e.strerror}); give a '
        'directory you can write to') from e
  try:
    fd, probe = tempfile.mkstemp(dir=path, prefix='.write-test-')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise record_writer.InputError(
        f'--output_directory={path} is not writable ({e.strerror}); fix its '
        'permissions or give another directory') from e


def prepare() -> tuple[record_writer.Settings, list[record_writer.Shard],
                       int]:
  """Checks the flags and directories, and plans this task's shards.

  Returns:
    (settings, shards still to write, number of shards already complete).

  Raises:
    record_writer.InputError: with what is wrong and how to fix it, before
      any work.
  """
  settings = _parse_settings()
  for name in ('train_shards', 'validation_shards', 'num_threads',
               'num_tasks'):
    if FLAGS[name].value < 1:
      raise record_writer.InputError(f'--{name} must be at least 1')
  if FLAGS.mask_memory_gb < 0:
    raise record_writer.InputError(
        '--mask_memory_gb must be 0 (half of the machine\'s memory) or more')
  num_tasks, task_index = _task()
  splits = [('train', FLAGS.train_directory, FLAGS.train_shards),
            ('validation', FLAGS.validation_directory,
             FLAGS.validation_shards)]
  splits = [split for split in splits if split[1]]
  if not splits:
    raise record_writer.InputError(
        'give --train_directory and/or --validation_directory')
  for split, directory, _ in splits:
    if not os.path.isdir(directory):
      raise record_writer.InputError(
          f'--{split}_directory={directory} does not exist or is not a '
          f'directory; give the folder of the images: {_INPUT_LAYOUT}')
  label_map = load_labels(_existing_file_flag('labels_file'),
                          _existing_file_flag('imagenet_metadata_file'),
                          [directory for _, directory, _ in splits])
  listed = []
  for split, directory, num_shards in splits:
    entries = list_files(directory, label_map)
    if not entries:
      raise record_writer.InputError(
          f'--{split}_directory={directory} holds no image files, neither '
          f'unlabelled nor in a labelled class folder; expected '
          f'{_INPUT_LAYOUT}')
    if settings.segmentation == 'ground_truth':
      entries = [
          e._replace(ground_truth=record_writer.ground_truth_paths(
              e.path, directory, settings.ground_truth_directory))
          for e in entries]
    classes = len({e.synset for e in entries if e.label})
    unlabelled = sum(e.label == 0 for e in entries)
    logging.info('%s: %d files (%d unlabelled) in %d classes from %s.', split,
                 len(entries), unlabelled, classes, directory)
    if num_shards > len(entries):
      logging.warning(
          '--%s_shards=%d is more than the %d files of %s: %d shards will be '
          'empty files. Give --%s_shards=%d or fewer for none.', split,
          num_shards, len(entries), split, num_shards - len(entries), split,
          len(entries))
    listed.append((split, directory, num_shards, entries))
  _check_output_directory(FLAGS.output_directory)
  todo, complete = [], 0
  for split, directory, num_shards, entries in listed:
    shards = record_writer.plan_shards(split, entries, num_shards,
                                       FLAGS.seed, FLAGS.output_directory)
    digest = record_writer.fingerprint(shards, settings, directory)
    record_writer.check_resume(split, shards, digest, FLAGS.output_directory)
    mine = shards[task_index::num_tasks]
    done = [s for s in mine if os.path.exists(s.path)]
    complete += len(done)
    if done:
      logging.info('%s: %d of this task\'s %d shards are complete from an '
                   'earlier run; writing the other %d.', split, len(done),
                   len(mine), len(mine) - len(done))
    todo.extend(s for s in mine if not os.path.exists(s.path))
  removed = record_writer.remove_stale_tmp_files(todo)
  if removed:
    logging.info('Removed %d temporary files of an interrupted run.', removed)
  return settings, todo, complete


def _task() -> tuple[int, int]:
  """(num_tasks, task_index): the flags, else the SLURM job array's; logged.

  Raises:
    record_writer.InputError: for an index outside [0, num_tasks).
  """
  if not (FLAGS['num_tasks'].present or FLAGS['task_index'].present):
    try:
      array = job_array.task_from_environment()
    except job_array.ArrayError as e:
      raise record_writer.InputError(str(e)) from e
    if array:
      num_tasks, task_index, how = array
      logging.info('Task %d of %d, from the SLURM job array (%s).',
                   task_index, num_tasks, how)
      return num_tasks, task_index
  elif 'SLURM_ARRAY_TASK_ID' in os.environ:
    logging.info('--num_tasks/--task_index given: the SLURM job array '
                 'variables are not used.')
  if not 0 <= FLAGS.task_index < FLAGS.num_tasks:
    raise record_writer.InputError(
        f'--task_index must be in [0, --num_tasks={FLAGS.num_tasks})')
  if FLAGS.num_tasks > 1:
    logging.info('Task %d of %d (--task_index, --num_tasks).',
                 FLAGS.task_index, FLAGS.num_tasks)
  return FLAGS.num_tasks, FLAGS.task_index


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    settings, todo, complete = prepare()
  except record_writer.InputError as e:
    sys.exit(f'{os.path.basename(__file__)}: error: {e}')
  num_workers = min(FLAGS.num_threads, len(todo))
  mask_memory = (int(FLAGS.mask_memory_gb * 1e9) or
                 record_writer.default_mask_memory())
  summary = record_writer.Summary()
  if todo:
    logging.info('Writing %d shards (%d files) with %d worker processes; '
                 'their images may take %.1f GB at once for the masks '
                 '(--mask_memory_gb).', len(todo),
                 sum(len(s.entries) for s in todo), num_workers,
                 mask_memory / 1e9)
    try:
      summary = record_writer.run(todo, settings, num_workers,
                                  mask_memory=mask_memory)
    except KeyboardInterrupt:
      logging.error('Interrupted; rerun the same command to finish the '
                    'shards that are not complete.')
      return 130
  else:
    logging.info('Nothing to do: all of this task\'s shards are complete.')
  print(record_writer.format_summary(summary, settings, complete), flush=True)
  files = sum(len(s.entries) for s in todo)
  if summary.failed or (files and not sum(summary.stats.images.values())):
    logging.error('The job failed: %d shards not written, %d images written. '
                  'Rerun the same command to retry.', len(summary.failed),
                  sum(summary.stats.images.values()))
    return 1
  return 0


if __name__ == '__main__':
  flags.mark_flag_as_required('output_directory')
  cli.run(main)
