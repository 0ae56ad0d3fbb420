"""The objective of one training stage: classification loss + optional feature loss + the
discriminative-centroid loss when the head keeps centroids.

``StageLoss(out, labels) -> (loss, parts)`` where ``out`` is :class:`~facelt.models.net.OLTRNet`'s
output and ``parts`` holds the detached terms the trainer logs (``ce``, and ``centroid`` when used).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from facelt.losses.centroid import DiscCentroidLoss, GlobalSum
from facelt.losses.classification import Counts, build_loss
from facelt.losses.feature import build_aux_loss

if TYPE_CHECKING:
    from facelt.config import StageConfig
    from facelt.losses.mixup import MixedBatch


class StageLoss:
    """``classify(logits, y) + aux_weight * aux(v, y) + centroid_weight * centroid(v, y, C)``.

    ``centroids`` returns the head's centroid matrix ``C`` (only called when ``centroid`` is set).
    """

    def __init__(self, classify: nn.Module, aux: Optional[nn.Module] = None, aux_weight: float = 0.0,
                 centroid: Optional[DiscCentroidLoss] = None, centroid_weight: float = 0.0,
                 centroids: Optional[Callable[[], torch.Tensor]] = None) -> None:
        if centroid is not None and centroids is None:
            raise ValueError("a centroid loss needs the head's centroids")
        if centroid is not None and centroid.loss_weight != centroid_weight:
            # the reference centroid update divides its incoming gradient by this weight
            raise ValueError(f"the centroid loss has loss_weight {centroid.loss_weight}, but the "
                             f"objective weighs it {centroid_weight}: they must be equal")
        self.classify = classify
        self.aux = aux
        self.aux_weight = aux_weight
        self.centroid = centroid
        self.centroid_weight = centroid_weight
        self.centroids = centroids

    def to(self, device: torch.device) -> "StageLoss":
        self.classify.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        """Tell the losses that change with the epoch (DRW weights, RIDE's temperatures) which
        epoch (0-based) trains next."""
        for m in (self.classify, self.aux):
            if m is not None and hasattr(m, "set_epoch"):
                m.set_epoch(epoch)

    def classification(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        """The classification term: ``classify(logits, labels)``, or ``classify.from_output(out,
        labels)`` for a loss that reads more of the output (:mod:`facelt.losses.output_losses`)."""
        if hasattr(self.classify, "from_output"):
            return self.classify.from_output(out, labels)
        return self.classify(out["logits"].float(), labels)

    def __call__(self, out: dict, labels: torch.Tensor, mix: Optional["MixedBatch"] = None
                 ) -> tuple[torch.Tensor, dict]:
        """``mix`` (a mixup batch): the classification term is ``lam * L(y_a) + (1 - lam) *
        L(y_b)`` (``labels`` = ``y_a``); the feature terms use ``labels``."""
        if mix is None:
            ce = self.classification(out, labels)
        else:
            ce = (mix.lam * self.classification(out, mix.labels_a)
                  + (1.0 - mix.lam) * self.classification(out, mix.labels_b))
        parts = {"ce": ce.detach()}
        loss = ce
        if self.aux is not None:
            loss = loss + self.aux_weight * self.aux(out["features"].float(), labels)
        if self.centroid is not None:
            cl = self.centroid(out["features"].float(), labels, self.centroids())
            loss = loss + self.centroid_weight * cl
            parts["centroid"] = cl.detach()
        return loss, parts


def build_stage_loss(st: "StageConfig", head: nn.Module, class_counts: Counts,
                     global_sum: Optional[GlobalSum] = None) -> StageLoss:
    """The stage's objective; the centroid loss is added for heads that declare
    ``uses_centroid_loss`` (the meta-embedding head) when ``centroid_loss.weight > 0``.
    ``global_sum``: each process holds a share of the batch and DDP averages the gradients; the
    function sums a tensor over the processes (the centroid loss's global-batch terms need it:
    :class:`~facelt.losses.centroid.DiscCentroidLoss`)."""
    centroid = None
    cl = st.centroid_loss
    if head.uses_centroid_loss and cl.weight > 0:
        centroid = DiscCentroidLoss(margin=cl.margin, repel_weight=cl.repel_weight,
                                    centroid_update=cl.update, global_sum=global_sum,
                                    loss_weight=cl.weight)
    classify = build_loss(st, class_counts)
    if hasattr(classify, "bind_head"):  # a loss that uses the head's state (GPaCo's queue)
        classify.bind_head(head)
    return StageLoss(classify, build_aux_loss(st), st.aux_loss_weight,
                     centroid, cl.weight, lambda: head.centroids)
