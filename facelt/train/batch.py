"""The seams of a training step that a method may plug into, each typed and named by a config
section (the loop calls them without knowing which method it trains):

* a :data:`BatchTransform` ``(x, y) -> TrainBatch`` on each loaded batch, before the forward
  pass: :class:`MixupTransform` (``stageN.mixup.alpha > 0``, MiSLAS's stage 1) and
  :class:`TwoViewTransform` (``stageN.two_views.enabled``, GPaCo: ``[view 1; view 2]`` with the
  labels repeated);
* a :class:`ParameterConstraint` applied after the optimizer step or after each epoch's steps:
  :class:`ClassNormConstraint` (``stageN.maxnorm.thresh``, weight balancing's MaxNorm on the
  classifier's per-class norms);
* the epoch of the stage's loss, ``loss.set_epoch(epoch)`` before each epoch (DRW, RIDE): see
  :meth:`facelt.losses.stage.StageLoss.set_epoch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F

from facelt.config import StageConfig
from facelt.errors import ConfigError
from facelt.losses.mixup import MixedBatch, mixup_batch
from facelt.models.maxnorm import MaxNorm


@dataclass
class TrainBatch:
    """What the step trains on: inputs, the labels of each row, and the mixup draw (if any)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    mix: Optional[MixedBatch] = None


BatchTransform = Callable[[torch.Tensor, torch.Tensor], TrainBatch]


class MixupTransform:
    """mixup with one ``lam ~ Beta(alpha, alpha)`` and one permutation per batch."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> TrainBatch:
        mix = mixup_batch(x, y, self.alpha)
        return TrainBatch(mix.inputs, y, mix)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Each image of ``(B, C, H, W)`` shifted by a random crop of its ``pad``-pixel zero padding
    (offsets uniform in ``0 .. 2 pad``) and, with ``flip``, mirrored with probability 1/2."""
    b, _, h, w = x.shape
    out = x
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        offs = torch.randint(0, 2 * pad + 1, (b, 2))
        out = torch.stack([padded[i, :, int(offs[i, 0]):int(offs[i, 0]) + h,
                                  int(offs[i, 1]):int(offs[i, 1]) + w] for i in range(b)])
    if flip:
        mirror = (torch.rand(b) < 0.5).to(x.device).view(b, 1, 1, 1)
        out = torch.where(mirror, out.flip(-1), out)
    return out


class TwoViewTransform:
    """``[view 1; view 2]`` of the batch, each view drawn independently
    (:func:`random_crop_flip`), labels repeated."""

    def __init__(self, pad: int, flip: bool) -> None:
        self.pad, self.flip = int(pad), bool(flip)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> TrainBatch:
        views = torch.cat((random_crop_flip(x, self.pad, self.flip),
                           random_crop_flip(x, self.pad, self.flip)))
        return TrainBatch(views, torch.cat((y, y)))


def build_batch_transform(st: StageConfig, stage: int) -> Optional[BatchTransform]:
    """The stage's batch transform (None: the batch as loaded)."""
    if st.mixup.alpha > 0 and st.two_views.enabled:
        raise ConfigError(f"stage{stage}.mixup.alpha and stage{stage}.two_views.enabled: one "
                          f"batch transform per stage")
    if st.mixup.alpha > 0:
        return MixupTransform(st.mixup.alpha)
    if st.two_views.enabled:
        return TwoViewTransform(st.two_views.pad, st.two_views.flip)
    return None


class ParameterConstraint(Protocol):
    """A projection of some parameters, after the optimizer step or after each epoch's steps
    (every rank: the replicated weights stay equal)."""

    def after_step(self, net: torch.nn.Module) -> None: ...

    def after_epoch(self, net: torch.nn.Module) -> None: ...


class ClassNormConstraint:
    """MaxNorm on ``net.head.class_weight()``; its radius is fixed by the classifier the stage
    starts from (call before any training step; a resumed stage rebuilds the same start)."""

    def __init__(self, net: torch.nn.Module, thresh: float, every: str) -> None:
        self.maxnorm = MaxNorm(thresh)
        self.radius = self.maxnorm.calibrate(net.head.class_weight())
        self.every = every

    def after_step(self, net: torch.nn.Module) -> None:
        if self.every == "step":
            self.maxnorm.project_(net.head.class_weight().data)

    def after_epoch(self, net: torch.nn.Module) -> None:
        if self.every == "epoch":
            self.maxnorm.project_(net.head.class_weight().data)


def build_constraints(st: StageConfig, stage: int, net: torch.nn.Module
                      ) -> list[ParameterConstraint]:
    """The stage's parameter constraints, calibrated on ``net`` as it starts."""
    if st.maxnorm.thresh is None:
        return []
    if st.shard_head:
        raise ConfigError(f"stage{stage}.maxnorm with stage{stage}.shard_head: the radius of a "
                          f"sharded classifier is not supported")
    return [ClassNormConstraint(net, st.maxnorm.thresh, st.maxnorm.every)]
