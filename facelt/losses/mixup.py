"""mixup (Zhang et al., ICLR 2018) as MiSLAS's stage 1 uses it (dvlab-research/MiSLAS
``methods.py``: ``mixup_data`` / ``mixup_criterion``).

One ``lam ~ Beta(alpha, alpha)`` per batch (``alpha <= 0``: ``lam = 1``, no mixing) and one random
permutation ``pi`` of the batch: ``x' = lam * x + (1 - lam) * x[pi]``; the loss is
``lam * L(f(x'), y) + (1 - lam) * L(f(x'), y[pi])``.  ImageNet-LT: ``alpha = 0.2``
(config/imagenet/imagenet_resnet50_stage1_mixup.yaml).

The draws come from torch's global generator (the trainer saves and restores it), on the batch's
device for the permutation.  ``lam`` and ``index`` can be given to replay a draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from facelt.errors import ConfigError


@dataclass
class MixedBatch:
    """A mixed batch: inputs, the two label vectors and the mixing weight of the first."""

    inputs: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float
    index: torch.Tensor


def sample_mixup_lambda(alpha: float) -> float:
    """``lam ~ Beta(alpha, alpha)``; 1.0 when ``alpha <= 0``."""
    if alpha <= 0:
        return 1.0
    a = torch.tensor(float(alpha), dtype=torch.float64)
    return float(torch.distributions.Beta(a, a).sample())


def mixup_batch(inputs: torch.Tensor, labels: torch.Tensor, alpha: float,
                lam: Optional[float] = None, index: Optional[torch.Tensor] = None) -> MixedBatch:
    """Mix a batch with one ``lam`` and one permutation (drawn unless given)."""
    if lam is None:
        lam = sample_mixup_lambda(alpha)
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"mixup lambda must be in [0, 1], got {lam}")
    n = inputs.shape[0]
    if index is None:
        index = torch.randperm(n, device=inputs.device)
    elif index.shape != (n,):
        raise ValueError(f"mixup index must have shape ({n},), got {tuple(index.shape)}")
    index = index.to(inputs.device)
    mixed = lam * inputs + (1.0 - lam) * inputs[index]
    return MixedBatch(mixed, labels, labels[index.to(labels.device)], float(lam), index)


def mixup_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               logits: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    """``lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)``."""
    return (batch.lam * criterion(logits, batch.labels_a)
            + (1.0 - batch.lam) * criterion(logits, batch.labels_b))
