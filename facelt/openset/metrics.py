"""Long-tailed and open-set metrics (numpy in, floats out).

Conventions: label -1 marks an open-set (unseen-class) sample; prediction -1 means "rejected as
unknown".  Shot buckets (many / medium / few by training count) are defined in :mod:`facelt.data.shots`.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from facelt.data.shots import shot_of_counts

OPEN = -1


def _as_int_pair(preds: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=np.int64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} predictions for {y.size} labels")
    return p, y


def per_class_accuracy(preds: Sequence[int], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Accuracy of each known class over its samples; nan for classes absent from ``labels``."""
    p, y = _as_int_pair(preds, labels)
    known = y >= 0
    p, y = p[known], y[known]
    if y.size and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} out of range for {num_classes} classes")
    total = np.bincount(y, minlength=num_classes).astype(np.float64)
    correct = np.bincount(y[p == y], minlength=num_classes).astype(np.float64)
    return np.where(total > 0, correct / np.maximum(total, 1.0), np.nan)


def shot_accuracy(preds: Sequence[int], labels: Sequence[int], train_counts: Sequence[int],
                  many: int = 100, few: int = 20, rule: str = "paper") -> dict[str, float]:
    """Overall sample accuracy over known samples and the mean per-class accuracy per shot bucket
    (``rule``: :data:`facelt.data.shots.SHOT_RULES`)."""
    p, y = _as_int_pair(preds, labels)
    known = y >= 0
    overall = float(np.mean(p[known] == y[known])) if known.any() else float("nan")
    per_class = per_class_accuracy(p, y, len(train_counts))
    shots = shot_of_counts(train_counts, many, few, rule)
    out = {"overall": overall}
    for bucket in ("many", "medium", "few"):
        accs = per_class[(shots == bucket) & ~np.isnan(per_class)]
        out[bucket] = float(accs.mean()) if accs.size else float("nan")
    return out


def reject(probs_max: Sequence[float], preds: Sequence[int], threshold: float) -> np.ndarray:
    """Predictions with -1 wherever the max softmax probability is below ``threshold``."""
    probs = np.asarray(probs_max, dtype=np.float64).ravel()
    out = np.asarray(preds, dtype=np.int64).ravel().copy()
    if probs.shape != out.shape:
        raise ValueError(f"{probs.size} probabilities for {out.size} predictions")
    out[probs < threshold] = OPEN
    return out


def open_set_f_measure(preds: Sequence[int], labels: Sequence[int]) -> float:
    """OLTR open-set F-measure (the reference's fixed rule).

    TP: known and correct.  FP: known and wrong, a rejected known sample included.  FN: open and
    not rejected.  ``F = 2PR / (P + R)``, 0 where undefined.
    """
    p, y = _as_int_pair(preds, labels)
    known = y >= 0
    tp = int(np.sum(known & (p == y)))
    fp = int(np.sum(known & (p != y)))
    fn = int(np.sum(~known & (p != OPEN)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def open_set_accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of open samples rejected (nan when there are none)."""
    p, y = _as_int_pair(preds, labels)
    open_ = y == OPEN
    return float(np.mean(p[open_] == OPEN)) if open_.any() else float("nan")


def threshold_sweep(max_probs: Sequence[float], raw_preds: Sequence[int], labels: Sequence[int],
                    thresholds: Iterable[float]) -> list[dict[str, float]]:
    """F-measure, accuracy on known samples (rejections count as wrong) and open rejection rate
    for each rejection threshold, in the order given."""
    _, y = _as_int_pair(raw_preds, labels)
    known = y >= 0
    rows = []
    for t in thresholds:
        preds = reject(max_probs, raw_preds, float(t))
        closed = float(np.mean(preds[known] == y[known])) if known.any() else float("nan")
        rows.append({"threshold": float(t),
                     "f_measure": open_set_f_measure(preds, y),
                     "closed_accuracy_known": closed,
                     "open_rejection": open_set_accuracy(preds, y)})
    return rows


def auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of ``scores`` separating ``positive`` (known) from the rest
    (Mann-Whitney U with average ranks for ties); None without both kinds."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0                    # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def matched_threshold(scores: np.ndarray, accept_fraction: float) -> float:
    """The score threshold (accept ``score >= t``) that accepts ``accept_fraction`` of ``scores``
    (rounded to whole images)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    n_acc = int(round(accept_fraction * len(s)))
    if n_acc <= 0 or len(s) == 0:
        return float("inf")
    return float(s[n_acc - 1])


def best_f_threshold(scores: Sequence[float], raw_preds: Sequence[int], labels: Sequence[int],
                     thresholds: Iterable[float]) -> tuple[Optional[float], float]:
    """``(threshold, F)`` of the rejection threshold among ``thresholds`` with the highest
    open-set F-measure (ties: the first given); ``(None, 0.0)`` for no threshold. An oracle
    operating point when ``labels`` are the evaluated ones."""
    best_t, best_f = None, -1.0
    for t in thresholds:
        f = open_set_f_measure(reject(scores, raw_preds, float(t)), labels)
        if f > best_f:
            best_t, best_f = float(t), f
    return best_t, max(best_f, 0.0)
