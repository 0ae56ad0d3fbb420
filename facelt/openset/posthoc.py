"""Post-hoc classifier adjustments and open-set scores (no retraining).

* :func:`tau_normalize` (Kang et al., ICLR 2020): ``w_k / ||w_k||^tau`` row-wise; tau = 0 is the
  identity, tau = 1 a cosine-style classifier.  :func:`select_tau` picks tau on the validation set.
* :func:`logit_adjust` (Menon et al., ICLR 2021, post-hoc form): ``logits - tau * log pi_k``.
* Open-set scores, higher = more likely known: :func:`msp` (max softmax probability),
  :func:`energy` (``T * logsumexp(logits / T)``, Liu et al. 2020, the negative free energy) and
  :func:`max_logit` (Hendrycks et al. 2022).

Logit functions take numpy arrays ``(N, K)`` (row chunks at identity scale) and work in float64.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from facelt.errors import ConfigError


def tau_normalize(weight: torch.Tensor, tau: float, eps: float = 1e-12) -> torch.Tensor:
    """``(K, d)`` classifier weights with each row divided by its norm to the power ``tau``."""
    if tau == 0:
        return weight.clone()
    norms = weight.norm(dim=1, keepdim=True).clamp_min(eps)
    return weight / norms.pow(tau)


def select_tau(eval_fn: Callable[[float], float], taus: Iterable[float]
               ) -> tuple[float, list[dict[str, float]]]:
    """The tau with the highest ``eval_fn(tau)`` (e.g. val accuracy) and the whole sweep; ties go
    to the earlier tau."""
    sweep: list[dict[str, float]] = []
    best_tau, best = None, -math.inf
    for tau in taus:
        score = float(eval_fn(float(tau)))
        sweep.append({"tau": float(tau), "score": score})
        if score > best:
            best_tau, best = float(tau), score
    if best_tau is None:
        raise ConfigError("select_tau: no tau to try (empty sweep or every score is nan)")
    return best_tau, sweep


def _log_prior(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64).ravel()
    if counts.size == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ConfigError("class_counts must be non-negative with a positive total")
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())


def logit_adjust(logits: np.ndarray, class_counts: Sequence[int] | np.ndarray, tau: float = 1.0
                 ) -> np.ndarray:
    """``logits - tau * log(n_k / N)``.  A class with no training image (prior 0, where the rule
    would add ``+inf``) is left unchanged rather than made certain."""
    lp = _log_prior(class_counts)
    x = np.asarray(logits, dtype=np.float64)
    if x.shape[-1] != lp.size:
        raise ValueError(f"logits have {x.shape[-1]} classes, class_counts {lp.size}")
    shift = np.where(np.isfinite(lp), tau * lp, 0.0)
    return x - shift


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def msp(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per row: ``1 / sum_k exp(l_k - max l)``."""
    x = np.asarray(logits, dtype=np.float64)
    return 1.0 / np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)


def energy(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` per row (higher = known)."""
    if T <= 0:
        raise ConfigError(f"energy temperature must be > 0, got {T}")
    return T * _logsumexp(np.asarray(logits, dtype=np.float64) / T)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Largest logit per row."""
    return np.asarray(logits, dtype=np.float64).max(axis=1)
