"""Losses over class-sharded logits and centroids (see :mod:`facelt.parallel.sharded_heads`).

Every rank holds the logits of its own classes for the whole (all-gathered) batch and each row's
column there (``targets``, -1 where the class lives on another rank).  The results are replicated
(equal on every rank) and their gradients are those of the unsharded losses, each rank receiving
the part for its own classes (:mod:`facelt.parallel.collectives` conventions).

* :func:`sharded_cross_entropy`: ``mean_i [log sum_k exp(z_ik) - z_{i y_i}]`` with the row
  maximum and the sum of exps all-reduced and the target logit taken from the owning rank; its
  backward ``(softmax - onehot) / B`` needs no communication.
* :class:`ShardedDiscCentroidLoss`: the closed form of :class:`facelt.losses.DiscCentroidLoss`;
  the attract term is summed by the ranks that own each row's centroid, the repel sum
  ``K sum||v||^2 - 2 sum v . sum c + B sum||c||^2`` (on points centred at the all-reduced
  centroid mean) takes ``sum c`` and ``sum ||c||^2`` as all-reduced sums.  ``reference`` centroid
  updates work per shard (each class's rows are all on its owning rank).
"""
from __future__ import annotations

import torch

from facelt.parallel import collectives as col
from facelt.losses.centroid import DiscCentroidLoss, reference_attract
from facelt.models.heads import at_least_float32


class _ShardedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, group):
        rows = logits.shape[0]
        if logits.shape[1] > 0:
            local_top = logits.detach().max(1).values
        else:                     # a rank whose classes were all left out by sampling
            local_top = logits.new_full((rows,), float("-inf"))
        top = col.all_reduce_max(local_top, group)
        exp = torch.exp(logits - top.unsqueeze(1))
        sum_exp = col.reduce_from_shards(exp.sum(1), group)
        owned = targets >= 0
        idx = torch.nonzero(owned, as_tuple=True)[0]
        picked = torch.zeros(2, rows, dtype=logits.dtype, device=logits.device)
        picked[0, idx] = logits[idx, targets[idx]] - top[idx]
        picked[1, idx] = 1.0
        picked = col.reduce_from_shards(picked, group)
        if not torch.all(picked[1] == 1):
            bad = int(torch.nonzero(picked[1] != 1)[0])
            raise ValueError(f"row {bad} of the batch has a label outside [0, num_classes)")
        loss = (sum_exp.log() - picked[0]).mean()
        ctx.save_for_backward(exp / sum_exp.unsqueeze(1), idx, targets[idx])
        return loss

    @staticmethod
    def backward(ctx, grad):
        probs, idx, cols = ctx.saved_tensors
        g = probs.clone()
        g[idx, cols] -= 1.0
        return g * (grad / probs.shape[0]), None, None


def sharded_cross_entropy(local_logits: torch.Tensor, targets: torch.Tensor,
                          group=None) -> torch.Tensor:
    """Mean cross-entropy over all K classes from this rank's ``(B, K_local)`` logits;
    ``targets[i]`` is row i's column here or -1 when another rank owns its class.  Every row's
    class must be owned by exactly one rank (labels in ``[0, K)``).  Half-precision logits are
    computed in float32, as ``F.cross_entropy`` does under autocast."""
    return _ShardedCrossEntropy.apply(at_least_float32(local_logits), targets.long(), group)


class ShardedDiscCentroidLoss(DiscCentroidLoss):
    """:class:`facelt.losses.DiscCentroidLoss` over centroids sharded by class (same settings)."""

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01,
                 centroid_update: str = "autograd", group=None) -> None:
        super().__init__(margin, repel_weight, centroid_update)
        self.group = group

    def forward(self, features: torch.Tensor, targets: torch.Tensor, local_centroids: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        """``features``: the replicated global batch ``(B, d)``; ``targets``: each row's row in
        ``local_centroids`` (-1 when another rank owns it); ``num_classes``: K over all ranks."""
        g = self.group
        batch = features.shape[0]
        rows = torch.nonzero(targets >= 0, as_tuple=True)[0]
        mine = targets[rows].long()
        local_feats = col.copy_to_shards(features, g).index_select(0, rows)
        own = col.reduce_from_shards(
            (local_feats - local_centroids.index_select(0, mine)).pow(2).sum(), g)
        if self.centroid_update == "reference":
            attract = col.reduce_from_shards(
                reference_attract(local_feats, mine, local_centroids, batch=batch), g)
        else:
            attract = own / (2.0 * batch)
        centre = col.reduce_from_shards(local_centroids.detach().sum(0), g) / num_classes
        v = features - centre
        c = local_centroids - centre
        c_sum = col.reduce_from_shards(c.sum(0), g)
        c_sq = col.reduce_from_shards(c.pow(2).sum(), g)
        all_sum = (num_classes * torch.dot(v.reshape(-1), v.reshape(-1))
                   - 2.0 * torch.dot(v.sum(0), c_sum) + batch * c_sq)
        mean_other = (all_sum - own) / (batch * num_classes)
        repel = (self.margin - mean_other).clamp_min(0.0)
        return attract + self.repel_weight * repel
