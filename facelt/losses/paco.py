"""The (generalised) parametric contrastive loss of GPaCo (Cui et al., ICCV 2021 / TPAMI 2023;
dvlab-research/Parametric-Contrastive-Learning ``GPaCo/LT/losses.py`` ``PaCoLoss``).

Inputs, as ``GPaCo/LT/moco/builder.py`` makes them:

* ``features`` ``(N, d)``: L2-normalised projections of the contrast set, the ``A`` anchors first
  (GPaCo: both augmented views of the batch, ``A = 2B``; then the queue of past keys);
* ``labels`` ``(N,)``: their classes;
* ``sup_logits`` ``(A, K)``: the anchors' classifier logits. The classifier's weights are the
  learnable class centres: each anchor is also contrasted with every class centre.

For anchor i, over the ``K`` centres and the ``N`` samples (itself excluded)::

    a_ic = (sup_logit_ic + log(pi_c + 1e-9)) / supt       (centre c; without class counts: no prior)
    a_ij = f_i . f_j / T                                  (sample j != i)
    D_i  = sum_c exp(a_ic) + gamma * sum_{j != i} exp(a_ij)
    P_ic = beta * ((1 - smooth) [c = y_i] + smooth / (K - 1) [c != y_i])
    P_ij = alpha * [y_j = y_i]                            (j != i)
    L_i  = -(T / T_base) * sum P * (a - log D_i) / sum P

and the loss is the mean of ``L_i`` over the anchors.  ``pi`` is the training prior: with class
counts the centre part is the balanced-softmax / logit-adjusted cross-entropy (``paco_lt.py`` calls
``cal_weight_for_classes`` for ImageNet-LT). ImageNet-LT ResNeXt-50 (``sh/LT/ImageNetLT_train_X50.sh``):
``alpha 0.05, beta 1.0, gamma 1.0, T = moco-t 0.2``; ``supt 1``, ``T_base = T``, ``smooth 0``.

As in the reference, the row maximum is subtracted before the exponentials (the result does not
depend on it) and ``1e-12`` is added inside the log of the denominator. Memory is ``A x (K + N)``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from facelt.errors import ConfigError
from facelt.losses.reweighting import Counts


class PaCoLoss(nn.Module):
    """GPaCo's ``PaCoLoss``; ``class_counts`` turns on the log-prior on the centre logits."""

    def __init__(self, num_classes: int, alpha: float = 0.05, beta: float = 1.0,
                 gamma: float = 1.0, temperature: float = 0.2,
                 base_temperature: Optional[float] = None, supt: float = 1.0,
                 smooth: float = 0.0, class_counts: Optional[Counts] = None) -> None:
        super().__init__()
        if temperature <= 0 or supt <= 0:
            raise ConfigError(f"PaCo temperature and supt must be > 0, got {temperature}, {supt}")
        if not 0.0 <= smooth < 1.0:
            raise ConfigError(f"PaCo smooth must be in [0, 1), got {smooth}")
        if num_classes < 2:
            raise ConfigError(f"PaCo needs at least 2 classes, got {num_classes}")
        self.num_classes = int(num_classes)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.temperature = float(temperature)
        self.base_temperature = float(temperature if base_temperature is None
                                      else base_temperature)
        self.supt = float(supt)
        self.smooth = float(smooth)
        if class_counts is None:
            self.register_buffer("log_prior", None)
        else:
            counts = np.asarray(class_counts.cpu() if isinstance(class_counts, torch.Tensor)
                                else class_counts, dtype=np.float64)
            if counts.shape != (self.num_classes,) or (counts < 0).any() or counts.sum() <= 0:
                raise ConfigError(f"PaCo class_counts must be {self.num_classes} non-negative "
                                  "counts with a positive total")
            prior = torch.from_numpy(counts / counts.sum()).float()
            self.register_buffer("log_prior", torch.log(prior + 1e-9))

    def forward(self, features: torch.Tensor, labels: torch.Tensor, sup_logits: torch.Tensor
                ) -> torch.Tensor:
        features = features.float()
        sup_logits = sup_logits.float()
        labels = labels.long().view(-1)
        n, a = features.shape[0], sup_logits.shape[0]
        if labels.numel() != n or a > n or sup_logits.shape[1] != self.num_classes:
            raise ValueError(f"PaCo: features {tuple(features.shape)}, labels "
                             f"{tuple(labels.shape)}, sup_logits {tuple(sup_logits.shape)} do not "
                             f"fit (anchors first, {self.num_classes} classes)")
        device = features.device
        centre = sup_logits
        if self.log_prior is not None:
            centre = centre + self.log_prior.to(device)
        centre = centre / self.supt
        contrast = features[:a] @ features.t() / self.temperature           # (A, N)
        logits = torch.cat((centre, contrast), dim=1)                       # (A, K + N)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()

        not_self = torch.ones(a, n, device=device)
        not_self[torch.arange(a, device=device), torch.arange(a, device=device)] = 0.0
        same = (labels[:a].unsqueeze(1) == labels.unsqueeze(0)).float() * not_self
        onehot = torch.zeros(a, self.num_classes, device=device)
        onehot.scatter_(1, labels[:a].unsqueeze(1), 1.0)
        onehot = self.smooth / (self.num_classes - 1) * (1.0 - onehot) + (1.0 - self.smooth) * onehot
        positives = torch.cat((self.beta * onehot, self.alpha * same), dim=1)
        in_denominator = torch.cat((torch.ones(a, self.num_classes, device=device),
                                    self.gamma * not_self), dim=1)
        log_prob = logits - torch.log((logits.exp() * in_denominator).sum(1, keepdim=True) + 1e-12)
        mean_log_prob_pos = (positives * log_prob).sum(1) / positives.sum(1)
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()


def paco_inputs(q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, logits_q: torch.Tensor,
                logits_k: torch.Tensor, queue
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, sup_logits)`` for :class:`facelt.losses.paco.PaCoLoss` as GPaCo builds
    them: ``[q; k; queue]``, ``[y; y; queue labels]``, ``[logits_q; logits_k]`` (the queue's
    contents as they were before this batch is enqueued). ``queue``: anything with
    ``contents() -> (features, labels)``, e.g. :class:`facelt.models.paco.LabelledQueue`."""
    qf, ql = queue.contents()
    features = torch.cat((q, k, qf.to(q.dtype)), dim=0)
    all_labels = torch.cat((labels, labels, ql.to(labels.device)), dim=0)
    return features, all_labels, torch.cat((logits_q, logits_k), dim=0)
