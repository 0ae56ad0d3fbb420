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
That step must still carry the loss scale of mixed precision (a GradScaler multiplies the loss by
S and divides every gradient by S before the step): it is multiplied by ``grad_output /
loss_weight``, where ``loss_weight`` is the weight the objective gives this loss, so it is the
reference's step in float32 and S times it under the scaler.

Cost: the centroid table is read through :func:`centroid_terms`, one autograd node whose forward
reduces it block by block and whose backward writes its whole gradient (repel sums, attract rows,
either update) into one ``K x d`` buffer.

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


def stats_chunk_rows(centroids: torch.Tensor) -> int:
    """Rows of the centroid table :func:`centroid_terms` reduces at once: about 2 MiB blocks on
    the CPU (a fresh ``K x d`` temporary there costs a page-fault pass of its own), the whole
    table on a GPU (its caching allocator makes temporaries free, launches are not)."""
    if centroids.device.type != "cpu":
        return max(1, centroids.shape[0])
    return max(1, (1 << 19) // max(1, centroids.shape[1]))


class _CentroidTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, centroids, labels, centre):
        rows = centroids.index_select(0, labels)
        s1 = torch.zeros_like(centre)
        s2 = centre.new_zeros(())
        for block in centroids.split(stats_chunk_rows(centroids)):
            diff = (block - centre).reshape(-1)
            s1 += diff.view(block.shape).sum(0)
            s2 += torch.dot(diff, diff)
        ctx.save_for_backward(centroids, labels, centre)
        return rows, s1, s2

    @staticmethod
    def backward(ctx, grad_rows, grad_s1, grad_s2):
        centroids, labels, centre = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # d s1 / d c_k = 1, d s2 / d c_k = 2 (c_k - m), d rows_i / d c_k = [y_i = k]: one buffer
        grad = torch.sub(centroids, centre)
        torch.addcmul(grad_s1.to(grad.dtype), grad, 2.0 * grad_s2.to(grad.dtype), out=grad)
        grad.index_add_(0, labels, grad_rows.to(grad.dtype))
        return grad, None, None


def centroid_terms(centroids: torch.Tensor, labels: torch.Tensor, centre: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the centroid loss needs of the ``(K, d)`` table, in one autograd node: each row's own
    centroid ``C[labels]`` ``(B, d)``, ``sum_k (c_k - m)`` ``(d,)`` and ``sum_k ||c_k - m||^2``
    for the constant ``centre`` m. Forward: blocks of rows (no ``K x d`` temporary); backward:
    the table's whole gradient in one ``K x d`` buffer."""
    return _CentroidTerms.apply(centroids, labels.long(), centre.detach())


class _ReferenceAttract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rows, row_counts, batch, loss_weight):
        diff = features - rows                                             # v - c_y
        ctx.save_for_backward(diff, row_counts)
        ctx.batch, ctx.loss_weight = batch, loss_weight
        return diff.pow(2).sum() / (2.0 * batch)

    @staticmethod
    def backward(ctx, grad_output):
        diff, row_counts = ctx.saved_tensors
        batch = ctx.batch
        grad_v = diff * (grad_output / batch)
        # the reference's centroid step, times grad_output / loss_weight: 1 in float32, the
        # loss scale under a GradScaler (which divides it out again before the step)
        per_row = (grad_output / (-ctx.loss_weight * batch)) / (1.0 + row_counts.to(diff.dtype))
        return grad_v, diff * per_row.unsqueeze(1), None, None, None


def batch_class_counts(labels: torch.Tensor, num_classes: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(K,)`` samples of each class among ``labels``."""
    return torch.zeros(num_classes, dtype=dtype, device=labels.device).index_add_(
        0, labels, torch.ones_like(labels, dtype=dtype))


def reference_attract(features: torch.Tensor, rows: torch.Tensor, row_counts: torch.Tensor,
                      batch: int | None = None, loss_weight: float = 1.0) -> torch.Tensor:
    """Attract term ``sum_i ||v_i - c_{y_i}||^2 / (2 batch)`` with the OLTR reference's
    center-loss-style centroid gradient: ``rows`` are each row's own centroid ``c_{y_i}`` (gathered
    from the table, e.g. by :func:`centroid_terms`, whose backward sums them per class), and row i
    sends it ``(c_{y_i} - v_i) / (1 + n_{y_i}) / batch``, so class k's centroid receives
    ``sum_{i: y_i = k} (c_k - v_i) / (1 + n_k) / batch``; features get the usual gradient.

    The reference's step ignores the loss weights: ``loss_weight`` is the weight the objective
    multiplies this term by, and the centroid gradient is scaled by ``grad_output /
    loss_weight``, 1 in float32 and the loss scale under a GradScaler (which unscales it to the
    float32 step). ``row_counts``: ``n_{y_i}`` for each row (under DDP, the counts of the whole
    global batch, so the averaged update is the one-process update); ``batch`` defaults to the
    number of rows (a class-sharded loss passes the global batch size with only its rows).
    """
    if not loss_weight > 0:
        raise ValueError(f"loss_weight must be > 0, got {loss_weight}")
    return _ReferenceAttract.apply(features, rows, row_counts,
                                   features.shape[0] if batch is None else int(batch),
                                   float(loss_weight))


class DiscCentroidLoss(nn.Module):
    """Attract features to their class centroid, repel them from the others by a margin."""

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01,
                 centroid_update: str = "autograd", global_sum: Optional[GlobalSum] = None,
                 loss_weight: float = 1.0) -> None:
        """``global_sum``: this process holds a share of a DDP batch (gradients averaged over the
        processes) and ``global_sum`` sums over them: the repel hinge is taken of the global
        batch's mean distance (its gradient that of this share's, which DDP averages) and the
        reference update's ``n_k`` are the global batch's. ``None``: the whole batch is here.
        ``loss_weight``: the weight the objective gives this loss (the reference update divides
        it out of its incoming gradient: :func:`reference_attract`)."""
        super().__init__()
        self.global_sum = global_sum
        if centroid_update not in ("autograd", "reference"):
            raise ValueError(f"centroid_update must be 'autograd' or 'reference', got {centroid_update!r}")
        if not loss_weight > 0:
            raise ValueError(f"loss_weight must be > 0, got {loss_weight}")
        self.margin = margin
        self.repel_weight = repel_weight
        self.centroid_update = centroid_update
        self.loss_weight = float(loss_weight)

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                centroids: torch.Tensor) -> torch.Tensor:
        # in the centroids' precision, whatever the autocast state (as the head's distances)
        with torch.autocast(features.device.type, enabled=False):
            return self._loss(features.to(torch.promote_types(features.dtype, centroids.dtype)),
                              labels.long(), centroids)

    def _loss(self, features: torch.Tensor, labels: torch.Tensor,
              centroids: torch.Tensor) -> torch.Tensor:
        batch, num_classes = features.shape[0], centroids.shape[0]
        centre = centroids.detach().mean(0)
        rows, c_sum, c_sq = centroid_terms(centroids, labels, centre)
        own = (features - rows).pow(2).sum()
        if self.centroid_update == "reference":
            counts = batch_class_counts(labels, num_classes, features.dtype)
            if self.global_sum is not None:  # DDP: n_k of the global batch (gradients averaged)
                self.global_sum(counts)
            attract = reference_attract(features, rows, counts.index_select(0, labels),
                                        loss_weight=self.loss_weight)
        else:
            attract = own / (2.0 * batch)
        v = features - centre
        all_sum = (num_classes * torch.dot(v.reshape(-1), v.reshape(-1))
                   - 2.0 * torch.dot(v.sum(0), c_sum) + batch * c_sq)
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
