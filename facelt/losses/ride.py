"""RIDE's distribution-aware diversity loss (Wang et al., ICLR 2021;
frank-xwang/RIDE-LongTailRecognition ``model/loss.py`` ``RIDELoss``).

Given the logits of E experts ``z_e`` (each already times the normalised classifier's scale
``s = 30``) and their mean ``z_bar`` (the network's output), the loss is a sum over experts::

    L = sum_e [ base_factor * CE_w(z_e - s m_y e_y, y)
                + diversity_factor * T_mean^2 * KL( softmax(z_bar / T) || softmax(z_e / T) ) ]

* ``CE_w``: LDAM (margins ``m_k`` prop. to ``n_k^{-1/4}``, largest ``max_m`` = 0.5,
  :func:`facelt.losses.ldam.ldam_margins`) with DRW class weights (ones before ``defer_epoch``,
  effective-number weights with beta 0.9999 from it on; weighted batch mean ``sum w l / sum w``).
* ``T``: before ``defer_epoch`` one temperature ``T_base`` (1.0) for all classes; from it on the
  per-class temperatures ``T_k = T_base * v_k`` with ``v_k = (K pi_k f + 1 - f) / max_j(...)``,
  ``pi_k = n_k / N``, ``f`` = ``reweight_factor`` (0.05 by default, 0.02 in the ImageNet-LT
  configs): each class's logit is divided by its own temperature. ``T_mean`` is the mean of the
  ``T_k`` (``T_base`` before the deferral).
* The KL's target ``softmax(z_bar / T)`` is held constant (no gradient), and the KL is the
  batch mean (``reduction="batchmean"``). (Summed over the experts, the gradient through the
  target would be zero anyway: ``sum_e (log p - log q_e)`` is constant over the classes.) ``diversity_factor`` is -0.2 by default (-0.45 in the
  CIFAR-100 configs): negative, so the experts are pushed apart from their mean.
* When ``diversity_factor`` is 0 the reference's base term uses the mean logits for every expert;
  so does this one.

The epoch comes from :meth:`RIDELoss.set_epoch` (0-based; the reference's 1-based
``epoch > reweight_epoch`` is ``epoch >= defer_epoch`` here).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.losses.ldam import ldam_margins, subtract_target_margin
from facelt.losses.reweighting import Counts, deferred_weights, positive_counts


def ride_temperature_weights(class_counts: Counts, reweight_factor: float) -> torch.Tensor:
    """``(K,)`` ``v_k = (K pi_k f + 1 - f) / max_j (K pi_j f + 1 - f)`` (all must be > 0)."""
    counts = positive_counts(class_counts, "RIDE diversity temperatures")
    prior = counts / counts.sum()
    v = counts.size * prior * reweight_factor + 1.0 - reweight_factor
    v = v / v.max()
    if not np.all(v > 0):
        raise ConfigError(f"RIDE reweight_factor {reweight_factor} is too large: some class "
                          "temperatures are not positive")
    return torch.from_numpy(v).float()


class RIDELoss(nn.Module):
    """The RIDE loss over ``expert_logits`` ``(E, B, K)`` (experts first)."""

    def __init__(self, class_counts: Counts, max_m: float = 0.5, s: float = 30.0,
                 defer_epoch: int = -1, beta: float = 0.9999, base_loss_factor: float = 1.0,
                 diversity_factor: float = -0.2, diversity_temperature: float = 1.0,
                 reweight_factor: float = 0.05) -> None:
        super().__init__()
        if s <= 0 or diversity_temperature <= 0:
            raise ConfigError(f"RIDE s and diversity_temperature must be > 0, got {s}, "
                              f"{diversity_temperature}")
        self.class_counts = positive_counts(class_counts, "RIDE loss")
        self.s = float(s)
        self.defer_epoch = int(defer_epoch)
        self.beta = float(beta)
        self.base_loss_factor = float(base_loss_factor)
        self.diversity_factor = float(diversity_factor)
        self.base_temperature = float(diversity_temperature)
        self.register_buffer("margins", ldam_margins(self.class_counts, max_m))
        self.register_buffer("temperature_weights",
                             ride_temperature_weights(self.class_counts, reweight_factor))
        self.register_buffer("class_weights", torch.ones(self.class_counts.size))
        self.reweighted = False
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """DRW weights and diversity temperatures of epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)
        self.reweighted = self.defer_epoch >= 0 and self.epoch >= self.defer_epoch
        w = deferred_weights(self.class_counts, self.epoch, self.defer_epoch, self.beta)
        self.class_weights.copy_(w.to(self.class_weights.device))

    def temperatures(self) -> tuple[torch.Tensor | float, float]:
        """The diversity temperature (``(1, K)`` per class, or one float) and its mean."""
        if self.reweighted:
            t = self.base_temperature * self.temperature_weights.view(1, -1)
            return t, float(t.mean())
        return self.base_temperature, self.base_temperature

    def forward_terms(self, expert_logits: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {"base": ..., "diversity": ...})`` (the terms summed over experts, detached)."""
        if expert_logits.dim() != 3:
            raise ValueError(f"expert_logits must be (experts, batch, classes), got "
                             f"{tuple(expert_logits.shape)}")
        z = expert_logits.float()
        labels = labels.long()
        mean = z.mean(dim=0)
        temperature, t_mean = self.temperatures()
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(z.device)
        with torch.no_grad():
            target = F.softmax(mean / temperature, dim=1)
        weights = self.class_weights.to(z.device)
        margins = self.s * self.margins.to(z.device)
        base = z.new_zeros(())
        diversity = z.new_zeros(())
        for ze in z:
            base_in = mean if self.diversity_factor == 0 else ze
            base = base + F.cross_entropy(subtract_target_margin(base_in, labels, margins),
                                          labels, weight=weights)
            kl = F.kl_div(F.log_softmax(ze / temperature, dim=1), target, reduction="batchmean")
            diversity = diversity + t_mean * t_mean * kl
        loss = self.base_loss_factor * base + self.diversity_factor * diversity
        return loss, {"base": base.detach(), "diversity": diversity.detach()}

    def forward(self, expert_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward_terms(expert_logits, labels)[0]
