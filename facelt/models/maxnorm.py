"""MaxNorm on the classifier's per-class weight norms (weight balancing, Alshammari et al.,
CVPR 2022; ShadeAlsha/LTR-weight-balancing ``utils/regularizers.py`` ``MaxNorm_via_PGD``).

* The radius is fixed once, from the classifier the second stage starts from:
  ``r = min_k ||w_k|| + thresh * (max_k ||w_k|| - min_k ||w_k||)`` with ``thresh`` 0.1
  (``demo2_second-stage-training.py``: ``MaxNorm_via_PGD(thresh=0.1)``, then
  ``setPerLayerThresh(model)`` before training) (:func:`maxnorm_radius`).
* The projection (projected gradient descent) rescales every class vector whose L2 norm exceeds
  ``r`` onto the sphere of radius ``r``; shorter ones are left alone (:meth:`MaxNorm.project_`).
  The bias is never projected (the reference gives 1-D parameters an infinite radius).
* When: the reference projects once per epoch, after the epoch's training steps and before its
  evaluation (``utils/trainval.py``: ``pgdFunc.PGD(model)`` at the end of the train phase).

A class-sharded head computes its shard's min and max norms, all-reduces them (MIN / MAX) and
passes them to :func:`maxnorm_radius`: the radius of the whole classifier.
"""
from __future__ import annotations

from typing import Optional

import torch

from facelt.errors import ConfigError


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each class vector (row) of a ``(K, ...)`` weight."""
    return weight.detach().reshape(weight.shape[0], -1).norm(dim=1)


def maxnorm_radius(min_norm: float, max_norm: float, thresh: float = 0.1) -> float:
    """``min + thresh * (max - min)``."""
    if not 0.0 <= thresh <= 1.0:
        raise ConfigError(f"MaxNorm thresh must be in [0, 1], got {thresh}")
    if max_norm < min_norm:
        raise ValueError(f"max norm {max_norm} < min norm {min_norm}")
    return float(min_norm + thresh * (max_norm - min_norm))


class MaxNorm:
    """Caps each class vector's norm at a radius set once by :meth:`calibrate`."""

    def __init__(self, thresh: float = 0.1, radius: Optional[float] = None) -> None:
        maxnorm_radius(0.0, 0.0, thresh)  # validates thresh
        self.thresh = float(thresh)
        self.radius = radius

    def calibrate(self, weight: torch.Tensor) -> float:
        """Set (and return) the radius from ``weight``'s current row norms."""
        norms = row_norms(weight)
        self.radius = maxnorm_radius(float(norms.min()), float(norms.max()), self.thresh)
        return self.radius

    @torch.no_grad()
    def project_(self, weight: torch.Tensor) -> int:
        """Rescale, in place, the rows of ``weight`` longer than the radius onto it; returns how
        many rows were rescaled. The first call calibrates when no radius is set (as the
        reference's first ``PGD`` call does)."""
        if self.radius is None:
            self.calibrate(weight)
        norms = row_norms(weight)
        over = norms > self.radius
        if over.any():
            scale = torch.ones_like(norms)
            scale[over] = self.radius / norms[over]
            weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype))
        return int(over.sum())

    def state_dict(self) -> dict:
        return {"thresh": self.thresh, "radius": self.radius}

    def load_state_dict(self, state: dict) -> None:
        self.thresh = float(state["thresh"])
        self.radius = None if state["radius"] is None else float(state["radius"])
