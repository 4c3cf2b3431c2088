r"""Peak memory of one image's masks against its size, and the estimate.

  python -m bench.bench_mask_memory [--sizes=500x375,1000x750,2000x1500]
      [--methods=fh,slic]

For each method and size, a fresh process makes the masks of a real photo
(scikit-image's astronaut, resized) with the workers' malloc settings
(`record_writer.keep_freed_memory`) and reports its peak resident memory over
what it held before: Linux's high-water mark, reset just before
(`/proc/self/clear_refs`), less the resident memory then. Printed beside it:
bytes per pixel, CPU seconds, and the estimate the mask script reserves from
its `--mask_memory_gb` budget (`memory_budget.mask_bytes`), which should be
above the measurement and not far above. Linux only.
"""

import multiprocessing
import time

import numpy as np
from absl import app, flags
from PIL import Image
from skimage import data, segmentation

from bench import machine
from detcon import memory_budget, record_writer

flags.DEFINE_list('sizes', ['500x375', '1000x750', '2000x1500', '3000x2000'],
                  'Image sizes, WIDTHxHEIGHT (ImageNet is about 500x375).')
flags.DEFINE_list('methods', ['fh', 'slic'], 'Mask methods: fh, slic.')
FLAGS = flags.FLAGS


def _status_bytes(key: str) -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) * 1024 for line in f
                if line.startswith(key))


def measure(method: str, width: int, height: int) -> tuple[int, float]:
  """(peak bytes over the memory before, CPU s) of one image's masks."""
  record_writer.keep_freed_memory()
  photo = Image.fromarray(data.astronaut()).resize((width, height))
  pixels = np.asarray(photo)
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # Resets the high-water mark (VmHWM) to the current RSS.
  before = _status_bytes('VmRSS:')
  start = time.process_time()
  if method == 'fh':
    segmentation.felzenszwalb(pixels, scale=1000, min_size=1000)
  else:
    segmentation.slic(pixels, n_segments=25, compactness=10, start_label=0)
  return _status_bytes('VmHWM:') - before, time.process_time() - start


def main(argv):
  del argv
  print(f'Machine: {machine.describe()}')
  print(f'{"method":6} {"size":>10} {"MP":>5} {"peak MB":>8} {"B/px":>5} '
        f'{"estimate MB":>11} {"CPU s":>6}')
  ctx = multiprocessing.get_context('spawn')
  for method in FLAGS.methods:
    for size in FLAGS.sizes:
      width, height = (int(x) for x in size.split('x'))
      with ctx.Pool(1) as pool:  # A fresh process: no memory of the last.
        peak, cpu_s = pool.apply(measure, (method, width, height))
      pixels = width * height
      estimate = memory_budget.mask_bytes(width, height, method)
      print(f'{method:6} {size:>10} {pixels / 1e6:5.2f} {peak / 1e6:8.0f} '
            f'{peak / pixels:5.0f} {estimate / 1e6:11.0f} {cpu_s:6.1f}',
            flush=True)


if __name__ == '__main__':
  app.run(main)
