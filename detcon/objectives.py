"""The pretraining objectives, one definition each (`config.objective`).

An objective says three things:

* `has_target`: BYOL's framework (a predictor on the online network and an
  EMA target network, whose projections are the candidates; their gradient
  is stopped) or SimCLR's (no predictor and no target: each view's online
  projections are both the predictions and the candidates);
* `image_level`: one global mask per image (every cell id 0, `K = 1`)
  instead of the masks sampled from the views;
* `loss(pred1, pred2, cand1, cand2, ids1, ids2, temperature, axis_name)`:
  the representation loss of the global batch from `[B, K, D]` predictions
  and candidates of both views and their `[B, K]` mask ids.

Adding an objective is one entry of `OBJECTIVES` and, if it needs one, its
loss function.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax

from detcon import losses


class Objective(NamedTuple):
  has_target: bool
  image_level: bool
  loss: Callable[..., jax.Array]


def contrastive_detection(pred1, pred2, cand1, cand2, ids1, ids2,
                          temperature, axis_name):
  """The contrastive detection loss (`losses.byol_nce_detcon`)."""
  return losses.byol_nce_detcon(pred1, pred2, cand1, cand2, ids1, ids2, ids1,
                                ids2, temperature, axis_name)


def byol_regression(pred1, pred2, cand1, cand2, ids1, ids2, temperature,
                    axis_name):
  """BYOL's regression loss on the one global mask (`K = 1`)."""
  del ids1, ids2, temperature, axis_name  # Per image, no negatives.
  return losses.byol_regression(pred1[:, 0], pred2[:, 0], cand1[:, 0],
                                cand2[:, 0])


OBJECTIVES: dict[str, Objective] = {
    'detcon_b': Objective(has_target=True, image_level=False,
                          loss=contrastive_detection),
    'byol': Objective(has_target=True, image_level=True, loss=byol_regression),
    'detcon_s': Objective(has_target=False, image_level=False,
                          loss=contrastive_detection),
    # The contrastive detection loss on one global mask is SimCLR's NT-Xent.
    'simclr': Objective(has_target=False, image_level=True,
                        loss=contrastive_detection),
}


def get(name: str) -> Objective:
  """The objective called `name`; a clear error naming the known ones."""
  if name not in OBJECTIVES:
    raise ValueError(f'objective {name!r}: use one of '
                     f'{", ".join(OBJECTIVES)}')
  return OBJECTIVES[name]
