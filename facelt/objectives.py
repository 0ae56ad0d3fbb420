"""Training objectives of the long-tailed baselines, selectable from :class:`~facelt.config.StageConfig`.

Classification losses map ``(logits (B, K), labels (B,))`` to a scalar:

* ``ce``: cross-entropy;
* ``focal`` (Lin et al., ICCV 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, mean over the batch;
* ``balanced_softmax`` (Ren et al., NeurIPS 2020): cross-entropy on ``logits + log n_k``;
* ``logit_adjusted`` (Menon et al., ICLR 2021): cross-entropy on ``logits + tau * log pi_k`` with
  ``pi_k = n_k / N`` the training prior.

Feature losses map ``(features (B, d), labels (B,))`` to a scalar and are added with
``StageConfig.aux_loss_weight``:

* ``range`` (Zhang et al., ICCV 2017): intra-class term = harmonic mean of the ``k`` largest squared
  intra-class distances of each class in the batch, summed over classes; inter-class term =
  ``max(margin - min_{Q != R} ||c_Q - c_R||^2, 0)`` over the batch's class centres;
* ``lifted`` (Oh Song et al., CVPR 2016): the smooth structured loss
  ``J_ij = log(sum_{k in N(i)} exp(m - D_ik) + sum_{l in N(j)} exp(m - D_jl)) + D_ij`` over positive
  pairs, ``L = sum max(J_ij, 0)^2 / (2 |P|)``, ``D`` Euclidean.

Everything is at most ``B x K`` (the logits) or ``B x B`` (batch distances): never ``B x K x d``.
A class with no training image gets ``log n_k = -inf``: it can never be predicted under the
shifted softmax and takes no gradient, which is exact (its prior is 0).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelt.config import StageConfig
from facelt.errors import ConfigError

Counts = Union[Sequence[int], np.ndarray, torch.Tensor]


def _counts_tensor(class_counts: Counts) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ConfigError(f"class_counts must be a non-empty 1-D sequence, got shape "
                          f"{tuple(counts.shape)}")
    if (counts < 0).any():
        raise ConfigError("class_counts must be non-negative")
    if counts.sum() <= 0:
        raise ConfigError("class_counts are all zero: no training image to take a prior from")
    return counts


def log_prior(class_counts: Counts) -> torch.Tensor:
    """``log(n_k / N)`` as float32 (``-inf`` for empty classes)."""
    counts = _counts_tensor(class_counts)
    return torch.log(counts / counts.sum()).float()


class CrossEntropy(nn.Module):
    """Plain softmax cross-entropy (mean over the batch)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.long())


class FocalLoss(nn.Module):
    """Softmax focal loss; ``gamma = 0`` and no ``alpha`` is exactly cross-entropy.

    ``alpha``: None (1 for every class), a float (one weight for all), or one weight per class
    (``alpha_t`` = the weight of the sample's class).
    """

    def __init__(self, gamma: float = 2.0, alpha: Optional[Union[float, Sequence[float]]] = None
                 ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha is None or isinstance(alpha, (int, float)):
            self.scalar_alpha = 1.0 if alpha is None else float(alpha)
            self.register_buffer("class_alpha", None)
        else:
            self.scalar_alpha = 1.0
            self.register_buffer("class_alpha", torch.as_tensor(list(alpha), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        logp_t = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        weight = (1.0 - logp_t.exp()).clamp_min(0.0).pow(self.gamma) if self.gamma else 1.0
        loss = -weight * logp_t * self.scalar_alpha
        if self.class_alpha is not None:
            loss = loss * self.class_alpha.to(loss.device)[labels]
        return loss.mean()


class ShiftedCrossEntropy(nn.Module):
    """Cross-entropy on ``logits + shift`` for a fixed per-class shift (training only: prediction
    uses the raw logits).  Balanced Softmax: ``shift = log n_k``; logit adjustment:
    ``shift = tau * log pi_k`` (the two differ by a per-sample constant when tau = 1)."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[1] != self.shift.numel():
            raise ValueError(f"logits have {logits.shape[1]} classes, the class counts "
                             f"{self.shift.numel()}")
        return F.cross_entropy(logits + self.shift.to(logits.device), labels.long())


def balanced_softmax_loss(class_counts: Counts) -> ShiftedCrossEntropy:
    """Ren et al. 2020: softmax over ``logits + log n_k``."""
    return ShiftedCrossEntropy(torch.log(_counts_tensor(class_counts)).float())


def logit_adjusted_loss(class_counts: Counts, tau: float = 1.0) -> ShiftedCrossEntropy:
    """Menon et al. 2021: softmax over ``logits + tau * log(n_k / N)``."""
    prior = log_prior(class_counts)
    shift = torch.where(torch.isinf(prior), prior, tau * prior) if tau != 0 else torch.zeros_like(prior)
    return ShiftedCrossEntropy(shift)


def build_loss(stage_cfg: StageConfig, class_counts: Counts) -> nn.Module:
    """The classification loss named by ``stage_cfg.loss``."""
    name = stage_cfg.loss
    if name == "ce":
        return CrossEntropy()
    if name == "focal":
        return FocalLoss(gamma=stage_cfg.focal_gamma)
    if name == "balanced_softmax":
        return balanced_softmax_loss(class_counts)
    if name == "logit_adjusted":
        return logit_adjusted_loss(class_counts, stage_cfg.la_tau)
    raise ConfigError(f"stage loss must be ce, focal, balanced_softmax or logit_adjusted, "
                      f"got {name!r}")


# ----------------------------------------------------------------------------------------------
# Feature (metric) losses on the batch
# ----------------------------------------------------------------------------------------------

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


def build_aux_loss(stage_cfg: StageConfig) -> Optional[nn.Module]:
    """The feature loss named by ``stage_cfg.aux_loss`` (None for ``none``); the trainer adds it
    with weight ``stage_cfg.aux_loss_weight``."""
    name = stage_cfg.aux_loss
    if name == "none":
        return None
    if name == "range":
        return RangeLoss()
    if name == "lifted":
        return LiftedStructuredLoss()
    raise ConfigError(f"stage aux_loss must be none, range or lifted, got {name!r}")
