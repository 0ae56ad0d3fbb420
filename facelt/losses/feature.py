"""Feature losses on the batch: ``(features (B, d), labels (B,))`` -> scalar, added to the
classification loss with ``StageConfig.aux_loss_weight`` (the paper's Table 3 baselines).

* ``range`` (Zhang et al., ICCV 2017): intra-class term = harmonic mean of the ``k`` largest squared
  intra-class distances of each class in the batch, summed over classes; inter-class term =
  ``max(margin - min_{Q != R} ||c_Q - c_R||^2, 0)`` over the batch's class centres;
* ``lifted`` (Oh Song et al., CVPR 2016): the smooth structured loss
  ``J_ij = log(sum_{k in N(i)} exp(m - D_ik) + sum_{l in N(j)} exp(m - D_jl)) + D_ij`` over positive
  pairs, ``L = sum max(J_ij, 0)^2 / (2 |P|)``, ``D`` Euclidean.

Everything is at most ``B x B`` (batch distances).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from facelt.config import StageConfig, check_name
from facelt.errors import ConfigError


def pairwise_squared(x: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` squared Euclidean distances by one matmul, clamped at 0."""
    sq = x.pow(2).sum(1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())
    return d2.clamp_min(0.0)


class RangeLoss(nn.Module):
    """Range loss (Zhang et al. 2017) on one batch: ``alpha * intra + beta * inter``.

    Distances are squared Euclidean, as in the paper's inter-class term; classes with a single
    image in the batch take part in the centres but have no intra-class pair.  The paper's margin
    lives on its own feature scale; the default 10 matches facelt's centroid margin, which acts on
    the same squared distances of the same features.
    """

    def __init__(self, k: int = 2, margin: float = 10.0, alpha: float = 1.0, beta: float = 1.0,
                 eps: float = 1e-8) -> None:
        super().__init__()
        if k < 1:
            raise ConfigError(f"range loss k must be >= 1, got {k}")
        self.k, self.margin, self.alpha, self.beta, self.eps = k, margin, alpha, beta, eps

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = features.float()
        labels = labels.long()
        classes, inverse = torch.unique(labels, return_inverse=True)
        d2 = pairwise_squared(x)
        upper = torch.triu(torch.ones_like(d2, dtype=torch.bool), diagonal=1)
        intra = x.new_zeros(())
        for c in range(classes.numel()):   # at most B/2 classes own a pair
            members = inverse == c
            if int(members.sum()) < 2:
                continue
            pairs = d2[members][:, members][upper[members][:, members]]
            top = pairs.topk(min(self.k, pairs.numel())).values.clamp_min(self.eps)
            intra = intra + top.numel() / (1.0 / top).sum()
        inter = x.new_zeros(())
        if classes.numel() >= 2:
            sums = x.new_zeros(classes.numel(), x.shape[1]).index_add_(0, inverse, x)
            n = torch.bincount(inverse, minlength=classes.numel()).to(x.dtype).unsqueeze(1)
            cd2 = pairwise_squared(sums / n)
            off = ~torch.eye(classes.numel(), dtype=torch.bool, device=x.device)
            inter = (self.margin - cd2[off].min()).clamp_min(0.0)
        return self.alpha * intra + self.beta * inter


class LiftedStructuredLoss(nn.Module):
    """Lifted structured embedding loss (Oh Song et al. 2016), smooth log-sum-exp form."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = features.float()
        labels = labels.long()
        dist = pairwise_squared(x).clamp_min(1e-12).sqrt()
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
        pos = same & ~eye & torch.triu(torch.ones_like(same), diagonal=1)
        neg = ~same
        if not pos.any() or not neg.any():
            return x.sum() * 0.0   # no positive pair or no negative: nothing to learn from
        neg_terms = (self.margin - dist).masked_fill(~neg, float("-inf"))
        lse = torch.logsumexp(neg_terms, dim=1)                     # (B,) -inf without negatives
        i, j = pos.nonzero(as_tuple=True)
        j_ij = torch.logaddexp(lse[i], lse[j]) + dist[i, j]
        return j_ij.clamp_min(0.0).pow(2).sum() / (2.0 * i.numel())


#: the one table of feature losses: ``StageConfig.aux_loss`` names an entry
AUX_LOSSES: dict[str, Callable[[StageConfig], Optional[nn.Module]]] = {
    "none": lambda st: None,
    "range": lambda st: RangeLoss(),
    "lifted": lambda st: LiftedStructuredLoss(),
}


def check_aux_loss_name(name: str, key: str = "stage.aux_loss", where: str = "") -> str:
    """``name`` when :data:`AUX_LOSSES` has it, else a ConfigError naming ``key`` and the known
    feature losses."""
    return check_name(name, AUX_LOSSES, key, "feature loss", where)


def build_aux_loss(stage_cfg: StageConfig, key: str = "stage.aux_loss") -> Optional[nn.Module]:
    """The feature loss named by ``stage_cfg.aux_loss`` (None for ``none``); the stage adds it
    with weight ``stage_cfg.aux_loss_weight``."""
    return AUX_LOSSES[check_aux_loss_name(stage_cfg.aux_loss, key)](stage_cfg)
