"""DetCon-B pretraining on COCO (docs/method.md): train2017, no class labels.

  python -m detcon.main_loop --config=detcon/configs/coco.py \
      --dataset_directory=/data/coco-fh-train

Records from the mask script run on the flat train2017 folder carry label 0
(no class). The paper's COCO setting that we know is the data: COCO's
118,287 train2017 images of cluttered scenes, no labels used. Its COCO
schedule is not in our sources, so every other field is the ImageNet recipe
of `detcon_b.py` (batch 4096, 1000 epochs, learning rate 0.2 x batch / 256,
FH masks); at 118,287 images, 1000 epochs are 28,878 steps of batch 4096.
For DetCon-S or SimCLR on COCO, use `detcon_s.py` with
`--config.num_classes=0` and this file's dataset.
"""

import ml_collections

from detcon.configs import detcon_b


def get_config() -> ml_collections.ConfigDict:
  """Returns the COCO pretraining config."""
  c = detcon_b.get_config()
  c.dataset_directory = '/tmp/coco-fh-train'
  c.num_train_images = 0  # Counted from the records (118,287 for train2017).
  c.num_classes = 0  # No class labels: no online classifier.
  return c
