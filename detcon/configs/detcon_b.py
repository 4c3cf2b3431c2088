"""DetCon-B on ImageNet, the paper's recipe (docs/method.md).

Every hyperparameter lives here; `main_loop` flags override a few fields.
Use with `python -m detcon.main_loop --config=detcon/configs/detcon_b.py`
(the default) and override any field as `--config.optimizer.momentum=0.95`.
"""

import ml_collections

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config() -> ml_collections.ConfigDict:
  """Returns the DetCon-B config."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # 'detcon_b' or 'byol' (its image-level baseline); 'detcon_s' and 'simclr'
  # (the SimCLR framework) have their own config, detcon_s.py.
  c.objective = 'detcon_b'
  # Target network initialisation (objectives with a target): 'independent'
  # (the original's: its own random key, then the EMA draws it towards the
  # online network) or 'copy' (starts equal to the online network).
  c.target_init = 'independent'
  # Start from pretrained weights: a released DetCon .npy file (e.g.
  # resnet50_detcon_b_imagenet_1k.npy) or one of detcon.export; '' = random.
  # It sets the online and target encoder, the heads the file holds and, when
  # its size fits num_classes, the classifier. A resumed run ignores it.
  c.init_from = ''

  # Data (docs/method.md).
  c.dataset_directory = '/tmp/imagenet-fh-train'
  c.num_train_images = 0  # Epoch size; 0 = count the training records.
  # Online classifier's classes; 0: none (also set by the main loop when the
  # records carry label 0, no class).
  c.num_classes = 1000
  c.image_size = 224
  c.mock_data = False  # Random images and blocky masks instead of records.
  # The views' masks (docs/method.md): 'fh' (the records' FH masks), 'slic' or
  # 'ground_truth' (the records' masks made by that method; a record that
  # names another method, image/mask_source, is refused), or 'grid' (the
  # spatial heuristic: grid_size x grid_size rectangles over the original
  # image, cropped and flipped with the view; reads no masks from the
  # records, so any records work).
  c.masks = 'fh'
  # n of the grid. 4: its 16 ids match the 16 masks sampled per view, and a
  # rectangle stays about 1.75 of the 7x7 encoder cells wide even in a crop
  # of the whole image (224 px), so every rectangle in view owns cells; at
  # n = 8 rectangles fall below a cell and lose the cells' majority vote.
  # The paper's n is not in our sources.
  c.grid_size = 4

  # Schedule (docs/method.md, Optimisation).
  c.batch_size = 4096  # Global, over all devices and hosts.
  c.pretrain_epochs = 1000
  c.max_steps = 0  # > 0 overrides the step count derived from the epochs.

  # Networks (docs/method.md, Networks).
  c.model = ml_collections.ConfigDict(dict(
      encoder='ResNet50',
      width_multiplier=1.0,  # Fractional widths too (0.25, 0.5).
      projector_hidden_size=4096,
      projector_output_size=256,
      predictor_hidden_size=4096,
      bn_decay=0.9,
      bn_eps=1e-5,
  ))
  c.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.

  # Mask pooling and loss (docs/method.md).
  c.detcon = ml_collections.ConfigDict(dict(
      fh_mask_to_use=0,  # The records' mask channel (unused with grid).
      num_samples=16,
      max_mask_id=256,
      temperature=0.1,
  ))

  # Augmentations (docs/method.md, Augmentations), one entry per view.
  c.augment = ml_collections.ConfigDict(dict(
      brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
      color_jitter_prob=(0.8, 0.8),
      grayscale_prob=(0.2, 0.2),
      blur_prob=(1.0, 0.1),
      blur_sigma=(0.1, 2.0),
      solarize_prob=(0.0, 0.2),
      solarize_threshold=0.5,
  ))

  # Optimiser (docs/method.md, Optimisation).
  c.optimizer = ml_collections.ConfigDict(dict(
      base_learning_rate=0.2,  # x batch_size / 256.
      warmup_epochs_divisor=100,  # warm-up epochs = pretrain_epochs // this.
      weight_decay=1.5e-6,
      eta=1e-3,
      momentum=0.9,
  ))
  c.base_target_ema = 0.996  # Objectives with a target network only.

  # Checkpoints and logging.
  c.checkpoint_dir = ''  # '' = no checkpoints.
  c.save_checkpoint_interval = 300  # Seconds.
  c.keep_checkpoints = 3
  c.log_tensors_interval = 60  # Seconds.
  # Evaluators during pretraining (`detcon.train_evals`): name -> dict(
  # evaluator='knn', every_steps=N, settings=dict(...)). Empty: none.
  c.evals = ml_collections.ConfigDict()
  return c
