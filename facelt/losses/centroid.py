"""The OLTR discriminative-centroid loss.

``attract = sum_i ||v_i - c_{y_i}||^2 / (2B)``; ``repel = max(0, margin - sum_{i,k != y_i} d_ik /
(B*K))`` with ``d_ik = ||v_i - c_k||^2`` (own-class entries count as 0 in the sum but not in the
``B*K`` denominator, as in the reference); ``loss = attract + repel_weight * repel``.

Only the SUM of the ``B x K`` distances is needed, and it has a closed form:
``sum_ik ||v_i - c_k||^2 = K sum_i ||v_i||^2 - 2 (sum_i v_i) . (sum_k c_k) + B sum_k ||c_k||^2``,
so the loss costs O((B + K) d) -- no ``B x K`` matmul at all (at K = 74.5K that is 3 of the 18
``B x d x K`` products of a stage-2 step saved). Distances do not change when every point moves by
the same vector, so features and centroids are first centred on the (constant) centroid mean: the
middle term then vanishes and the sum has no cancellation in float32.
Gradients flow by autograd to features and centroids (``centroid_update="autograd"``). With
``centroid_update="reference"`` the attract term's gradient w.r.t. the centroids is the OLTR
reference's center-loss-style one, ``sum_{i: y_i = k} (c_k - v_i) / (1 + n_k) / B`` (n_k: the
class's samples in the batch), which ignores the loss weights; features get the usual gradient.

Under DDP each process holds a share of the batch and the gradients are averaged: the loss is
given ``global_sum`` (a function summing a tensor over those processes, in place: the caller's
collective; this module does no communication), so the terms that are not means over the batch,
the repel hinge and the reference update's ``n_k``, are those of the global batch, as one process
computes them.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

#: sums a tensor over the processes that share a DDP batch, in place, and returns it
GlobalSum = Callable[[torch.Tensor], torch.Tensor]


class _ReferenceAttract(torch.autograd.Function):
    """``sum_i ||v_i - c_{y_i}||^2 / (2 batch)`` with the reference's centroid gradient."""

    @staticmethod
    def forward(ctx, features, labels, centroids, batch, counts):
        ctx.save_for_backward(features, labels, centroids)
        ctx.batch = batch
        ctx.counts = counts
        diff = features - centroids.index_select(0, labels)
        return diff.pow(2).sum() / (2.0 * batch)

    @staticmethod
    def backward(ctx, grad_output):
        features, labels, centroids = ctx.saved_tensors
        batch = ctx.batch
        diff = centroids.index_select(0, labels) - features                # c_y - v
        counts = ctx.counts
        if counts is None:
            counts = batch_class_counts(labels, centroids.shape[0], features.dtype)
        counts = (1.0 + counts.to(features.dtype)).unsqueeze(1)
        grad_c = torch.zeros_like(centroids).index_add_(0, labels, diff) / counts
        return -grad_output * diff / batch, None, grad_c / batch, None, None


def batch_class_counts(labels: torch.Tensor, num_classes: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(K,)`` samples of each class among ``labels``."""
    return torch.zeros(num_classes, dtype=dtype, device=labels.device).index_add_(
        0, labels, torch.ones_like(labels, dtype=dtype))


def reference_attract(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                      batch: int | None = None, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Attract term ``sum_i ||v_i - c_{y_i}||^2 / (2 batch)`` with the OLTR reference's
    center-loss-style centroid gradient ``sum_{i: y_i = k} (c_k - v_i) / (1 + n_k) / batch``.

    ``batch`` defaults to the number of rows; a class-sharded loss passes the global batch size
    with only the rows whose class lives in its shard (``labels`` then index the shard).
    ``counts`` (``(K,)``, default: this batch's) are the ``n_k``: under DDP, where each rank sees a
    share of the batch and the gradients are averaged, pass the counts of the whole global batch so
    the averaged update is the one-process update.
    """
    return _ReferenceAttract.apply(features, labels.long(), centroids,
                                   features.shape[0] if batch is None else int(batch), counts)


class DiscCentroidLoss(nn.Module):
    """Attract features to their class centroid, repel them from the others by a margin."""

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01,
                 centroid_update: str = "autograd", global_sum: Optional[GlobalSum] = None) -> None:
        """``global_sum``: this process holds a share of a DDP batch (gradients averaged over the
        processes) and ``global_sum`` sums over them: the repel hinge is taken of the global
        batch's mean distance (its gradient that of this share's, which DDP averages) and the
        reference update's ``n_k`` are the global batch's. ``None``: the whole batch is here."""
        super().__init__()
        self.global_sum = global_sum
        if centroid_update not in ("autograd", "reference"):
            raise ValueError(f"centroid_update must be 'autograd' or 'reference', got {centroid_update!r}")
        self.margin = margin
        self.repel_weight = repel_weight
        self.centroid_update = centroid_update

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                centroids: torch.Tensor) -> torch.Tensor:
        batch, num_classes = features.shape[0], centroids.shape[0]
        labels = labels.long()
        own = (features - centroids.index_select(0, labels)).pow(2).sum()
        if self.centroid_update == "reference":
            counts = batch_class_counts(labels, num_classes, features.dtype)
            if self.global_sum is not None:  # DDP: n_k of the global batch (gradients averaged)
                self.global_sum(counts)
            attract = reference_attract(features, labels, centroids, counts=counts)
        else:
            attract = own / (2.0 * batch)
        centre = centroids.detach().mean(0)
        v = features - centre
        c = (centroids - centre).reshape(-1)
        all_sum = (num_classes * torch.dot(v.reshape(-1), v.reshape(-1))
                   - 2.0 * torch.dot(v.sum(0), c.view(num_classes, -1).sum(0))
                   + batch * torch.dot(c, c))
        other_sum = all_sum - own                                         # own-class entries out
        mean_other = other_sum / (batch * num_classes)
        if self.global_sum is not None:
            # DDP: the hinge of the GLOBAL batch's mean (its value), with the gradient of this
            # share's mean: DDP's average of the shares' gradients is then the global gradient.
            total = self.global_sum(torch.stack([other_sum.detach(),
                                                 other_sum.new_tensor(float(batch))]))
            mean_other = mean_other + (total[0] / (total[1] * num_classes) - mean_other).detach()
        repel = (self.margin - mean_other).clamp_min(0.0)
        return attract + self.repel_weight * repel
