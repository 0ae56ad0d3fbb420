"""Per-class weights from the training counts: the "effective number" re-weighting of Cui et al.
(CVPR 2019) as LDAM-DRW, RIDE and weight balancing use it, and its deferred form (DRW).

* :func:`effective_number_weights`: ``w_k = (1 - beta) / (1 - beta^{n_k})``, then rescaled so the
  weights sum to the number of classes ``K`` (``w * K / sum w``), which is how every one of those
  reference repositories normalises them. ``beta = 0`` gives all ones.
* :func:`deferred_weights`: DRW (Cao et al., NeurIPS 2019): all ones before epoch ``defer_epoch``
  (0-based), the effective-number weights from it on.  kaidic/LDAM-DRW's ``idx = epoch // 160``
  (0-based epochs) and RIDE's ``epoch > reweight_epoch`` (1-based epochs) are both this rule.

A class with no training image has no defined weight (``1 - beta^0 = 0``): it is refused, naming
the class, rather than given an arbitrary one.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from facelt.errors import ConfigError

Counts = Union[Sequence[int], np.ndarray, torch.Tensor]


def positive_counts(class_counts: Counts, what: str) -> np.ndarray:
    """``class_counts`` as a float64 vector, refused (``ConfigError`` naming ``what`` and the first
    empty class) unless it is 1-D, non-empty and every class has at least one training image."""
    counts = np.asarray(class_counts.cpu() if isinstance(class_counts, torch.Tensor)
                        else class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ConfigError(f"{what}: class_counts must be a non-empty 1-D sequence, got shape "
                          f"{counts.shape}")
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise ConfigError(f"{what}: class_counts must be finite and non-negative")
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        raise ConfigError(f"{what} needs at least one training image in every class; class "
                          f"{int(empty[0])} has none ({empty.size} empty classes)")
    return counts


def effective_number_weights(class_counts: Counts, beta: float) -> torch.Tensor:
    """``(K,)`` float32 weights ``(1 - beta) / (1 - beta^n_k)`` normalised to sum to ``K``."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"effective-number beta must be in [0, 1), got {beta}")
    counts = positive_counts(class_counts, "effective-number re-weighting")
    if beta == 0.0:
        return torch.ones(counts.size, dtype=torch.float32)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    weights = weights / weights.sum() * counts.size
    return torch.from_numpy(weights).float()


def deferred_weights(class_counts: Counts, epoch: int, defer_epoch: int, beta: float = 0.9999
                     ) -> torch.Tensor:
    """DRW: ones before ``defer_epoch`` (0-based), :func:`effective_number_weights` from it on.
    ``defer_epoch < 0`` never re-weights."""
    if defer_epoch < 0 or epoch < defer_epoch:
        positive_counts(class_counts, "deferred re-weighting")
        return torch.ones(len(class_counts), dtype=torch.float32)
    return effective_number_weights(class_counts, beta)
