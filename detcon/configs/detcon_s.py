"""DetCon-S: the contrastive detection loss on the SimCLR framework.

  python -m detcon.main_loop --config=detcon/configs/detcon_s.py
  python -m detcon.main_loop --config=detcon/configs/detcon_s.py \
      --config.objective=simclr  # SimCLR, the image-level baseline.

Both views go through the online network (no predictor, no target EMA); each
view's projections are the candidates of the other. Everything not set here
is DetCon-B's (`detcon_b.py`), including the augmentations, the heads and the
masks.
"""

import ml_collections

from detcon.configs import detcon_b


def get_config() -> ml_collections.ConfigDict:
  """Returns the DetCon-S config."""
  c = detcon_b.get_config()
  c.objective = 'detcon_s'  # Or 'simclr'.

  # From the SimCLR paper (Chen et al., ICML 2020): LARS at learning rate
  # 0.3 x batch / 256 (4.8 at batch 4096), weight decay 1e-6, temperature
  # 0.1, batch 4096, 10 warm-up epochs. Temperature and batch equal
  # DetCon-B's; they are set here so that they stay SimCLR's.
  c.optimizer.base_learning_rate = 0.3
  c.optimizer.weight_decay = 1e-6
  c.detcon.temperature = 0.1
  c.batch_size = 4096
  # DetCon-B's, kept: 1000 epochs with warm-up epochs // 100, which is
  # SimCLR's 10 warm-up epochs at 1000; LARS momentum 0.9 and trust
  # coefficient 1e-3 (SimCLR's LARS uses the same); the augmentations; the
  # heads (4096 -> 256; SimCLR's own projector was smaller).
  return c
