"""The OLTR discriminative-centroid loss.

``attract = sum_i ||v_i - c_{y_i}||^2 / (2B)``; ``repel = max(0, margin - sum_{i,k != y_i} d_ik /
(B*K))`` with ``d_ik = ||v_i - c_k||^2`` (own-class entries count as 0 in the sum but not in the
``B*K`` denominator, as in the reference); ``loss = attract + repel_weight * repel``.  The
``B x K`` distances come from one matmul; gradients flow by autograd to features and centroids.
"""
from __future__ import annotations

import torch
from torch import nn

from facelt.models.heads import squared_distances


class DiscCentroidLoss(nn.Module):
    """Attract features to their class centroid, repel them from the others by a margin."""

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01) -> None:
        super().__init__()
        self.margin = margin
        self.repel_weight = repel_weight

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                centroids: torch.Tensor) -> torch.Tensor:
        batch, num_classes = features.shape[0], centroids.shape[0]
        labels = labels.long()
        attract = (features - centroids.index_select(0, labels)).pow(2).sum() / (2.0 * batch)
        d2 = squared_distances(features, centroids)
        other_sum = d2.sum() - d2.gather(1, labels.unsqueeze(1)).sum()   # own-class entries out
        mean_other = other_sum / (batch * num_classes)
        repel = (self.margin - mean_other).clamp_min(0.0)
        return attract + self.repel_weight * repel
