"""The class-balanced loss of weight balancing's stage 2 (Alshammari et al., CVPR 2022;
ShadeAlsha/LTR-weight-balancing ``utils/class_balanced_loss.py`` ``CB_loss`` with
``loss_type="softmax"``, beta 0.9999, as ``demo2_second-stage-training.py`` calls it).

That repository's "softmax" class-balanced loss is not a weighted softmax cross-entropy: it is a
binary cross-entropy between the softmax probabilities and the one-hot labels, every one of the
``B x K`` terms weighted by the sample's class weight, averaged over all ``B x K`` terms::

    p = softmax(z);  L = 1/(B K) * sum_i w_{y_i} * sum_k -[ [k = y_i] log p_ik
                                                           + [k != y_i] log(1 - p_ik) ]

with ``w`` the effective-number weights normalised to sum to K (:mod:`facelt.losses.reweighting`).
As in :func:`torch.nn.functional.binary_cross_entropy`, each log is clamped at -100.
(The ``gamma`` the demo passes only matters for the "focal" type; it is not a parameter here.)
"""
from __future__ import annotations

import torch
from torch import nn

from facelt.losses.reweighting import Counts, effective_number_weights


class ClassBalancedSoftmaxBCE(nn.Module):
    """``CB_loss(..., "softmax", beta)`` of the weight-balancing reference."""

    def __init__(self, class_counts: Counts, beta: float = 0.9999) -> None:
        super().__init__()
        self.register_buffer("class_weights", effective_number_weights(class_counts, beta))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.class_weights.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes, the class counts "
                             f"{self.class_weights.numel()}")
        labels = labels.long()
        p = torch.softmax(logits.float(), dim=1)
        onehot = torch.zeros_like(p).scatter_(1, labels.unsqueeze(1), 1.0)
        # the weight is constant along a row: sum each row's terms, then weight the rows
        # (no second B x K tensor)
        rows = nn.functional.binary_cross_entropy(p, onehot, reduction="none").sum(dim=1)
        w = self.class_weights.to(p.device)[labels]
        return (w * rows).sum() / p.numel()
