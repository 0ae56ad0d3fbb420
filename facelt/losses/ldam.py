"""LDAM loss with deferred re-weighting (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW ``losses.py``).

* Margins: ``m_k = C / n_k^{1/4}`` with ``C`` chosen so the largest margin (the rarest class's) is
  ``max_m`` (0.5): ``m_k = max_m * (min_j n_j / n_k)^{1/4}``  (:func:`ldam_margins`).
* Loss: softmax cross-entropy over ``s * (x - m_y e_y)``: the target class's logit is lowered by
  its margin, the others are unchanged, everything times the scale ``s`` (30).  ``x`` are the
  cosine logits of a normalised classifier (:class:`facelt.models.normed_linear.NormedLinearHead`
  with scale 1: the reference's ``use_norm``).  When the head already multiplies by ``s`` (RIDE's
  experts), ``scale_logits=False`` subtracts ``s * m_y`` from the given logits instead: the same
  numbers.
* DRW: per-class weights of the cross-entropy (``weight=`` of :func:`torch.nn.functional.
  cross_entropy`, so the batch mean is ``sum w_y l / sum w_y``) are ones before ``defer_epoch`` and
  the effective-number weights (beta 0.9999) from it on (:mod:`facelt.losses.reweighting`).
  The trainer tells the loss the epoch with :meth:`LDAMLoss.set_epoch` before each epoch.

Memory is that of the logits, ``B x K``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.losses.reweighting import Counts, deferred_weights, positive_counts


def ldam_margins(class_counts: Counts, max_m: float = 0.5) -> torch.Tensor:
    """``(K,)`` float32 margins ``proportional to n_k^{-1/4}``, the largest equal to ``max_m``."""
    if max_m <= 0:
        raise ConfigError(f"LDAM max_m must be > 0, got {max_m}")
    counts = positive_counts(class_counts, "LDAM margins")
    m = 1.0 / np.sqrt(np.sqrt(counts))
    return torch.from_numpy(m * (max_m / m.max())).float()


def subtract_target_margin(logits: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor
                           ) -> torch.Tensor:
    """``logits`` with ``margins[y_i]`` subtracted from row i's target logit only."""
    if logits.shape[1] != margins.numel():
        raise ValueError(f"logits have {logits.shape[1]} classes, the margins {margins.numel()}")
    labels = labels.long()
    target_margin = margins.to(logits.device, logits.dtype)[labels]
    return logits.scatter_add(1, labels.unsqueeze(1), -target_margin.unsqueeze(1))


class LDAMLoss(nn.Module):
    """LDAM(-DRW): ``CE(s * x - s * m_y e_y, y; weight = DRW(epoch))``.

    ``defer_epoch``: first epoch (0-based) with effective-number weights; -1 never re-weights
    (plain LDAM).  ``scale_logits``: multiply the given logits by ``s`` (cosine logits in); false
    when the head has already scaled them.
    """

    def __init__(self, class_counts: Counts, max_m: float = 0.5, s: float = 30.0,
                 defer_epoch: int = -1, beta: float = 0.9999, scale_logits: bool = True) -> None:
        super().__init__()
        if s <= 0:
            raise ConfigError(f"LDAM scale s must be > 0, got {s}")
        self.s = float(s)
        self.scale_logits = scale_logits
        self.defer_epoch = int(defer_epoch)
        self.beta = float(beta)
        self.class_counts = positive_counts(class_counts, "LDAM loss")
        self.register_buffer("margins", ldam_margins(self.class_counts, max_m))
        self.register_buffer("class_weights", deferred_weights(self.class_counts, 0,
                                                               self.defer_epoch, self.beta))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Switch the DRW weights for epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)
        w = deferred_weights(self.class_counts, self.epoch, self.defer_epoch, self.beta)
        self.class_weights.copy_(w.to(self.class_weights.device))

    def margin_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logits the cross-entropy sees: scaled (if asked) and the target margin taken off."""
        z = logits.float()
        if self.scale_logits:
            z = self.s * z
        return subtract_target_margin(z, labels, self.s * self.margins)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin_logits(logits, labels), labels.long(),
                               weight=self.class_weights.to(logits.device))
