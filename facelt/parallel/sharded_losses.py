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
* :class:`ShardedStageLoss`: a stage's whole objective with a sharded head (the two above), and
  its train accuracy from a distributed arg-max (:func:`sharded_predictions`).
"""
from __future__ import annotations

import torch

from facelt.config import StageConfig
from facelt.losses.centroid import (DiscCentroidLoss, batch_class_counts, centroid_terms,
                                    reference_attract)
from facelt.models.head_math import at_least_float32
from facelt.parallel import collectives as col
from facelt.parallel.sharded_heads import ShardedHeadMixin


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
    computed in float32, as ``F.cross_entropy`` does under autocast (autocast is off inside)."""
    with torch.autocast(local_logits.device.type, enabled=False):
        return _ShardedCrossEntropy.apply(at_least_float32(local_logits), targets.long(), group)


class ShardedDiscCentroidLoss(DiscCentroidLoss):
    """:class:`facelt.losses.DiscCentroidLoss` over centroids sharded by class (same settings)."""

    def __init__(self, margin: float = 10.0, repel_weight: float = 0.01,
                 centroid_update: str = "autograd", group=None, loss_weight: float = 1.0) -> None:
        super().__init__(margin, repel_weight, centroid_update, loss_weight=loss_weight)
        self.group = group

    def forward(self, features: torch.Tensor, targets: torch.Tensor, local_centroids: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        """``features``: the replicated global batch ``(B, d)``; ``targets``: each row's row in
        ``local_centroids`` (-1 when another rank owns it); ``num_classes``: K over all ranks."""
        with torch.autocast(features.device.type, enabled=False):
            features = features.to(torch.promote_types(features.dtype, local_centroids.dtype))
            return self._sharded_loss(features, targets, local_centroids, num_classes)

    def _sharded_loss(self, features: torch.Tensor, targets: torch.Tensor,
                      local_centroids: torch.Tensor, num_classes: int) -> torch.Tensor:
        g = self.group
        batch = features.shape[0]
        rows = torch.nonzero(targets >= 0, as_tuple=True)[0]
        mine = targets[rows].long()
        local_feats = col.copy_to_shards(features, g).index_select(0, rows)
        centre = col.reduce_from_shards(local_centroids.detach().sum(0), g) / num_classes
        own_rows, local_sum, local_sq = centroid_terms(local_centroids, mine, centre)
        own = col.reduce_from_shards((local_feats - own_rows).pow(2).sum(), g)
        if self.centroid_update == "reference":
            # every row of a class is on the rank that owns it: local counts are the batch's
            counts = batch_class_counts(mine, local_centroids.shape[0], features.dtype)
            attract = col.reduce_from_shards(
                reference_attract(local_feats, own_rows, counts.index_select(0, mine), batch=batch,
                                  loss_weight=self.loss_weight), g)
        else:
            attract = own / (2.0 * batch)
        v = features - centre
        c_sum = col.reduce_from_shards(local_sum, g)
        c_sq = col.reduce_from_shards(local_sq, g)
        all_sum = (num_classes * torch.dot(v.reshape(-1), v.reshape(-1))
                   - 2.0 * torch.dot(v.sum(0), c_sum) + batch * c_sq)
        mean_other = (all_sum - own) / (batch * num_classes)
        repel = (self.margin - mean_other).clamp_min(0.0)
        return attract + self.repel_weight * repel


@torch.no_grad()
def sharded_predictions(logits: torch.Tensor, aux: dict, head: ShardedHeadMixin) -> torch.Tensor:
    """The arg-max class over all K (lowest index on ties) of every row of the global batch, from
    this rank's columns (the sampled ones when ``aux["sampled"]`` is set)."""
    logits = logits.detach().float()
    classes = aux.get("sampled")
    if classes is None:
        classes = torch.arange(logits.shape[1], device=logits.device) + head.class_start
    rows = logits.shape[0]
    if logits.shape[1]:
        local_top = logits.max(1).values
    else:
        local_top = logits.new_full((rows,), float("-inf"))
    top = col.all_reduce_max(local_top, head.group)
    big = torch.iinfo(torch.int64).max
    if logits.shape[1]:
        cand = torch.where(logits == top.unsqueeze(1), classes.unsqueeze(0),
                           torch.full_like(logits, big, dtype=torch.int64)).min(1).values
    else:
        cand = torch.full((rows,), big, dtype=torch.int64, device=logits.device)
    return col.all_reduce_min(cand, head.group)


class ShardedStageLoss:
    """The objective of a stage with a sharded head: ``sharded_cross_entropy`` (+ the sharded
    centroid loss for the meta head). Its terms are replicated (the global batch's means); the
    logged ``correct`` is the global batch's count on rank 0 and 0 elsewhere, so sums over ranks
    count each image once."""

    def __init__(self, st: StageConfig, head: ShardedHeadMixin, num_classes: int) -> None:
        self.head = head
        self.num_classes = num_classes
        cl = st.centroid_loss
        self.centroid = None
        self.centroid_weight = cl.weight
        if head.uses_centroid_loss and cl.weight > 0:
            self.centroid = ShardedDiscCentroidLoss(margin=cl.margin, repel_weight=cl.repel_weight,
                                                    centroid_update=cl.update, group=head.group,
                                                    loss_weight=cl.weight)

    def to(self, device: torch.device) -> "ShardedStageLoss":
        return self

    def __call__(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        aux = out["aux"]
        ce = sharded_cross_entropy(out["logits"], aux["targets"], self.head.group)
        loss, parts = ce, {"ce": ce.detach()}
        if self.centroid is not None:
            cl = self.centroid(aux["direct"].float(), aux["targets"], self.head.centroids,
                               self.num_classes)
            loss = loss + self.centroid_weight * cl
            parts["centroid"] = cl.detach()
        best = sharded_predictions(out["logits"], aux, self.head)
        correct = (best == aux["labels"]).sum() if col.rank(self.head.group) == 0 else best.new_zeros(())
        parts["correct"] = correct
        return loss, parts


__all__ = ["sharded_cross_entropy", "ShardedDiscCentroidLoss", "sharded_predictions",
           "ShardedStageLoss"]
