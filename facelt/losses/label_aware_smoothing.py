"""Label-aware smoothing (MiSLAS, Zhong et al., CVPR 2021; dvlab-research/MiSLAS ``methods.py``).

Each class gets its own smoothing factor from its training count, ``smooth_head`` for the largest
class (``n_1``) down to ``smooth_tail`` for the smallest (``n_K``); with
``t_k = (n_k - n_K) / (n_1 - n_K)`` in [0, 1]:

* ``concave`` (the default, and what every MiSLAS config uses):
  ``eps_k = tail + (head - tail) * sin(pi t_k / 2)``;
* ``linear``: ``eps_k = tail + (head - tail) * t_k``;
* ``convex``: ``eps_k = head + (head - tail) * sin(3 pi / 2 + pi t_k / 2)``
  (``= tail + (head - tail) (1 - cos(pi t_k / 2))``);
* ``exp`` with ``power`` p: ``eps_k = tail + (head - tail) * t_k^p``.

The loss of a sample of class y is ``(1 - eps_y) * (-log p_y) + eps_y * mean_k(-log p_k)`` (the
uniform part spreads over all K classes, the target included), averaged over the batch.
ImageNet-LT: ``smooth_head 0.3``, ``smooth_tail 0.0`` (config/imagenet/
imagenet_resnet50_stage2_mislas.yaml); Places-LT 0.4 / 0.1.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.losses.reweighting import Counts

SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_smoothing(class_counts: Counts, smooth_head: float, smooth_tail: float,
                          shape: str = "concave", power: Optional[float] = None) -> torch.Tensor:
    """``(K,)`` float32 smoothing factors, ``smooth_head`` at the largest class, ``smooth_tail`` at
    the smallest."""
    if shape not in SHAPES:
        raise ConfigError(f"label-aware smoothing shape must be one of {', '.join(SHAPES)}, "
                          f"got {shape!r}")
    if shape == "exp" and power is None:
        raise ConfigError("label-aware smoothing shape 'exp' needs a power")
    for name, v in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"label-aware smoothing {name} must be in [0, 1), got {v}")
    counts = np.asarray(class_counts.cpu() if isinstance(class_counts, torch.Tensor)
                        else class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ConfigError("label-aware smoothing: class_counts must be a non-empty 1-D sequence "
                          "of non-negative counts")
    n_1, n_k = counts.max(), counts.min()
    if n_1 == n_k:
        raise ConfigError("label-aware smoothing needs classes of different sizes: every class "
                          f"has {int(n_1)} training images, so there is no head or tail")
    t = (counts - n_k) / (n_1 - n_k)
    span = smooth_head - smooth_tail
    if shape == "concave":
        eps = smooth_tail + span * np.sin(t * np.pi / 2)
    elif shape == "linear":
        eps = smooth_tail + span * t
    elif shape == "convex":
        eps = smooth_head + span * np.sin(1.5 * np.pi + t * np.pi / 2)
    else:
        eps = smooth_tail + span * np.power(t, power)
    return torch.from_numpy(eps).float()


class LabelAwareSmoothingLoss(nn.Module):
    """Cross-entropy with the per-class smoothing of :func:`label_aware_smoothing`."""

    def __init__(self, class_counts: Counts, smooth_head: float = 0.3, smooth_tail: float = 0.0,
                 shape: str = "concave", power: Optional[float] = None) -> None:
        super().__init__()
        self.register_buffer("smoothing", label_aware_smoothing(class_counts, smooth_head,
                                                                smooth_tail, shape, power))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.smoothing.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes, the smoothing "
                             f"{self.smoothing.numel()}")
        labels = labels.long()
        logp = F.log_softmax(logits.float(), dim=1)
        eps = self.smoothing.to(logits.device)[labels]
        nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -logp.mean(dim=1)
        return ((1.0 - eps) * nll + eps * uniform).mean()
