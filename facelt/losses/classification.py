"""Classification losses of the long-tailed baselines: ``(logits (B, K), labels (B,))`` -> scalar.

* ``ce``: cross-entropy;
* ``focal`` (Lin et al., ICCV 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, mean over the batch;
* ``balanced_softmax`` (Ren et al., NeurIPS 2020): cross-entropy on ``logits + log n_k``;
* ``logit_adjusted`` (Menon et al., ICLR 2021): cross-entropy on ``logits + tau * log pi_k`` with
  ``pi_k = n_k / N`` the training prior.

Everything is at most ``B x K`` (the logits): never ``B x K x d``. A class with no training image
gets ``log n_k = -inf``: it can never be predicted under the shifted softmax and takes no gradient,
which is exact (its prior is 0).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelt.config import StageConfig, check_name
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


def _ldam(st: StageConfig, counts: Counts) -> nn.Module:
    from facelt.losses.ldam import LDAMLoss
    c = st.ldam
    return LDAMLoss(counts, max_m=c.max_m, s=c.s, defer_epoch=c.drw_epoch, beta=c.beta,
                    scale_logits=c.scale_logits)


def _ride(st: StageConfig, counts: Counts) -> nn.Module:
    from facelt.losses.output_losses import ExpertLogitsLoss
    from facelt.losses.ride import RIDELoss
    c, r = st.ldam, st.ride
    return ExpertLogitsLoss(RIDELoss(counts, max_m=c.max_m, s=c.s, defer_epoch=c.drw_epoch,
                                     beta=c.beta, base_loss_factor=r.base_loss_factor,
                                     diversity_factor=r.diversity_factor,
                                     diversity_temperature=r.diversity_temperature,
                                     reweight_factor=r.reweight_factor))


def _label_aware_smoothing(st: StageConfig, counts: Counts) -> nn.Module:
    from facelt.losses.label_aware_smoothing import LabelAwareSmoothingLoss
    c = st.label_aware_smoothing
    return LabelAwareSmoothingLoss(counts, c.smooth_head, c.smooth_tail, c.shape, c.power)


def _class_balanced(st: StageConfig, counts: Counts) -> nn.Module:
    from facelt.losses.class_balanced import ClassBalancedSoftmaxBCE
    return ClassBalancedSoftmaxBCE(counts, beta=st.class_balanced.beta)


def _paco(st: StageConfig, counts: Counts) -> nn.Module:
    from facelt.losses.output_losses import PaCoObjective
    from facelt.losses.paco import PaCoLoss
    if not st.two_views.enabled:
        raise ConfigError("stageN.loss paco contrasts two views of each image: set "
                          "stageN.two_views.enabled true")
    c = st.paco
    n = len(np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts))
    return PaCoObjective(PaCoLoss(n, alpha=c.alpha, beta=c.beta, gamma=c.gamma,
                                  temperature=c.temperature,
                                  class_counts=counts if c.log_prior else None))


LossFactory = Callable[[StageConfig, Counts], nn.Module]

#: the one table of classification losses: ``StageConfig.loss`` names an entry (adding a loss =
#: its module or class + one entry here)
LOSSES: dict[str, LossFactory] = {
    "ce": lambda st, counts: CrossEntropy(),
    "focal": lambda st, counts: FocalLoss(gamma=st.focal.gamma),
    "balanced_softmax": lambda st, counts: balanced_softmax_loss(counts),
    "logit_adjusted": lambda st, counts: logit_adjusted_loss(counts, st.logit_adjusted.tau),
    "ldam": _ldam,
    "ride": _ride,
    "label_aware_smoothing": _label_aware_smoothing,
    "class_balanced": _class_balanced,
    "paco": _paco,
}


def check_loss_name(name: str, key: str = "stage.loss", where: str = "") -> str:
    """``name`` when :data:`LOSSES` has it, else a ConfigError naming ``key`` and the known losses."""
    return check_name(name, LOSSES, key, "loss", where)


def build_loss(stage_cfg: StageConfig, class_counts: Counts, key: str = "stage.loss") -> nn.Module:
    """The classification loss named by ``stage_cfg.loss`` (``key``: how an unknown name's error
    calls the setting, e.g. ``stage1.loss``)."""
    return LOSSES[check_loss_name(stage_cfg.loss, key)](stage_cfg, class_counts)
