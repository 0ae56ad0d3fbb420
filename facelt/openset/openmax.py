"""OpenMax (Bendale & Boult, CVPR 2016) with a numpy Weibull fit in the manner of libMR's FitHigh.

Fit, per known class ``k``: the mean activation vector ``MAV_k`` of the training samples the model
classifies correctly (activation vector ``AV`` = the logit vector in the paper; any ``(N, D)``
vector works, e.g. the embedding when ``K x K`` MAVs would not fit at identity scale), then a
Weibull model of the ``tailsize`` largest distances ``||AV - MAV_k||`` of those samples.

libMR's FitHigh: sort descending, keep the ``tailsize`` largest values, ``small_score`` = the
smallest of them, translate ``x -> x + translate_amount - small_score`` (so the tail starts at
``translate_amount``) and fit a 2-parameter Weibull by maximum likelihood; the W-score of a new
distance ``d`` is ``CDF(d + translate_amount - small_score) = 1 - exp(-((.)/scale)^shape)``.
The maximum-likelihood shape solves ``sum x^k ln x / sum x^k - 1/k - mean(ln x) = 0`` (increasing
in ``k``), found by Newton's method kept inside a bisection bracket; ``scale = mean(x^k)^(1/k)``.

Recalibration of one sample: rank its classes by activation; the class at rank ``i`` (0 = top) of
the ``alpha_rank`` best gets weight ``w_i = 1 - (alpha - i)/alpha * W-score_i`` (the reference
code's weights; the paper writes the same with 1-based ``i`` as ``(alpha + 1 - i)/alpha``), its
activation becomes ``v_i * w_i``, the unknown class's activation is the sum of what was removed,
``sum v_i (1 - w_i)``, and a softmax runs over the ``K + 1`` activations.  The sample is unknown
when the unknown class is the most probable or the best known probability is below a threshold.

Distances: ``eucos`` (the reference: ``euclidean / 200 + cosine distance``) or ``euclidean``.
Classes without a valid Weibull model (fewer than two distinct tail distances) are counted in
:attr:`OpenMax.unfitted` and not recalibrated (W-score 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Optional

import numpy as np

from facelt.errors import ConfigError

Distance = Literal["eucos", "euclidean"]
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]   # (AV (B, D), predicted class (B,), label (B,))


# ----------------------------------------------------------------------------------------------
# Weibull
# ----------------------------------------------------------------------------------------------

def _shape_equation(k: np.ndarray, t: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g(k) and g'(k) per row for log-data ``t`` (max 0 per row), rows masked by ``mask``."""
    w = np.exp(k[:, None] * t) * mask
    s0 = w.sum(1)
    s1 = (w * t).sum(1)
    s2 = (w * t * t).sum(1)
    n = mask.sum(1)
    mean_t = (t * mask).sum(1) / n
    g = s1 / s0 - 1.0 / k - mean_t
    dg = s2 / s0 - (s1 / s0) ** 2 + 1.0 / k ** 2
    return g, dg


def weibull_mle_rows(log_rel: np.ndarray, mask: np.ndarray, iters: int = 100, tol: float = 1e-10
                     ) -> np.ndarray:
    """Maximum-likelihood Weibull shapes, one per row.

    ``log_rel[r, j] = ln(x_rj / max_j x_rj)`` (so ``<= 0``) for the entries where ``mask`` is
    True; each row needs at least two distinct values.  Safeguarded Newton on the shape.
    """
    t = np.where(mask, log_rel, 0.0).astype(np.float64)
    m = mask.astype(np.float64)
    n = m.sum(1)
    mean_t = (t * m).sum(1) / n
    sd = np.sqrt(((t - mean_t[:, None]) ** 2 * m).sum(1) / n)
    k = 1.2825 / sd                                  # moment estimate: sd(ln x) = pi / (k sqrt 6)
    lo, hi = k.copy(), k.copy()
    for _ in range(200):                              # bracket the root: g(lo) < 0 < g(hi)
        g_lo, _ = _shape_equation(lo, t, m)
        g_hi, _ = _shape_equation(hi, t, m)
        if (g_lo < 0).all() and (g_hi > 0).all():
            break
        lo = np.where(g_lo < 0, lo, lo / 2.0)
        hi = np.where(g_hi > 0, hi, hi * 2.0)
    for _ in range(iters):
        g, dg = _shape_equation(k, t, m)
        lo = np.where(g < 0, k, lo)
        hi = np.where(g > 0, k, hi)
        step = k - g / dg
        inside = (step > lo) & (step < hi) & np.isfinite(step)
        new = np.where(inside, step, 0.5 * (lo + hi))
        if np.all(np.abs(new - k) <= tol * k):
            k = new
            break
        k = new
    return k


def weibull_fit(x: np.ndarray) -> tuple[float, float]:
    """2-parameter Weibull MLE ``(shape, scale)`` of positive data ``x``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 2 or (x <= 0).any() or np.ptp(x) == 0:
        raise ValueError("weibull_fit needs at least two distinct positive values")
    t = np.log(x / x.max())[None, :]
    k = float(weibull_mle_rows(t, np.ones_like(t, dtype=bool))[0])
    scale = float(x.max() * np.mean(np.exp(k * t[0])) ** (1.0 / k))
    return k, scale


@dataclass
class WeibullTails:
    """One translated Weibull per class (libMR FitHigh); invalid classes score 0."""

    shape: np.ndarray        # (K,)
    scale: np.ndarray        # (K,)
    small_score: np.ndarray  # (K,)
    valid: np.ndarray        # (K,) bool
    translate: float

    def cdf(self, d: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """W-score ``CDF(d + translate - small_score)`` of distances ``d`` to ``classes`` (same
        shape), 0 for classes without a valid model."""
        d = np.asarray(d, dtype=np.float64)
        c = np.asarray(classes)
        x = d + self.translate - self.small_score[c]
        k, lam = self.shape[c], self.scale[c]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = np.where(x > 0, np.exp(k * (np.log(np.maximum(x, 1e-300)) - np.log(lam))), 0.0)
            out = -np.expm1(-z)
        return np.where(self.valid[c] & (x > 0), out, 0.0)


def fit_high(tails: np.ndarray, mask: np.ndarray, translate: float = 10000.0) -> WeibullTails:
    """Fit every row of ``tails`` (``(K, T)``, the largest distances of each class; unused slots
    False in ``mask``) as libMR's FitHigh does."""
    tails = np.asarray(tails, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    num = tails.shape[0]
    big = np.where(mask, tails, -np.inf).max(1)
    small = np.where(mask, tails, np.inf).min(1)
    valid = (mask.sum(1) >= 2) & (big > small)
    shape = np.full(num, np.nan)
    scale = np.full(num, np.nan)
    if valid.any():
        tv, mv = tails[valid], mask[valid]
        top = translate + big[valid] - small[valid]              # largest translated value
        # ln(x / x_max) with x - x_max = tail - big, exact whatever the translation
        rel = np.log1p(np.where(mv, (tv - big[valid, None]), 0.0) / top[:, None])
        k = weibull_mle_rows(rel, mv)
        mean_pow = (np.exp(k[:, None] * rel) * mv).sum(1) / mv.sum(1)
        shape[valid] = k
        scale[valid] = top * mean_pow ** (1.0 / k)
    return WeibullTails(shape, scale, np.where(valid, small, 0.0), valid, float(translate))


# ----------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------

def distances(av: np.ndarray, mav: np.ndarray, kind: Distance = "eucos") -> np.ndarray:
    """Distance of ``av (..., D)`` to ``mav (..., D)`` along the last axis."""
    av = np.asarray(av, dtype=np.float64)
    mav = np.asarray(mav, dtype=np.float64)
    euc = np.sqrt(((av - mav) ** 2).sum(-1))
    if kind == "euclidean":
        return euc
    if kind != "eucos":
        raise ConfigError(f"openmax distance must be 'eucos' or 'euclidean', got {kind!r}")
    na = np.linalg.norm(av, axis=-1)
    nm = np.linalg.norm(mav, axis=-1)
    cos = (av * mav).sum(-1) / np.maximum(na * nm, 1e-12)
    return euc / 200.0 + (1.0 - cos)


# ----------------------------------------------------------------------------------------------
# OpenMax
# ----------------------------------------------------------------------------------------------

def _chunks(av: np.ndarray, pred: np.ndarray, labels: np.ndarray, rows: int) -> Iterator[Chunk]:
    for s in range(0, len(labels), rows):
        yield np.asarray(av[s:s + rows]), np.asarray(pred[s:s + rows]), np.asarray(labels[s:s + rows])


class OpenMax:
    """Fit on training activations, then recalibrate test logits (numpy, chunk by chunk)."""

    def __init__(self, tailsize: int = 20, alpha_rank: int = 10, distance: Distance = "eucos",
                 translate: float = 10000.0, max_block: int = 1 << 24) -> None:
        if tailsize < 2:
            raise ConfigError(f"openmax tailsize must be >= 2, got {tailsize}")
        if alpha_rank < 1:
            raise ConfigError(f"openmax alpha_rank must be >= 1, got {alpha_rank}")
        distances(np.zeros((1, 1)), np.zeros((1, 1)), distance)   # validate the name
        self.tailsize, self.alpha_rank, self.distance = tailsize, alpha_rank, distance
        self.translate = translate
        self.max_block = max_block
        self.mav: Optional[np.ndarray] = None
        self.weibull: Optional[WeibullTails] = None
        self.unfitted = 0

    # ------------------------------------------------------------------ fit
    def fit(self, chunks: Callable[[], Iterable[Chunk]], num_classes: int) -> "OpenMax":
        """Two passes over ``chunks()`` (AV, predicted class, label): MAVs of the correct samples,
        then their distances; keeps one float per correct sample, never ``N x D``."""
        sums: Optional[np.ndarray] = None
        counts = np.zeros(num_classes, dtype=np.int64)
        for av, pred, y in chunks():
            ok = (np.asarray(pred) == np.asarray(y)) & (np.asarray(y) >= 0)
            if sums is None:
                sums = np.zeros((num_classes, av.shape[1]), dtype=np.float64)
            np.add.at(sums, np.asarray(y)[ok], np.asarray(av, dtype=np.float64)[ok])
            counts += np.bincount(np.asarray(y)[ok], minlength=num_classes)
        if sums is None:
            raise ConfigError("openmax fit: no training activations")
        self.mav = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        dists, classes = [], []
        for av, pred, y in chunks():
            y = np.asarray(y)
            ok = (np.asarray(pred) == y) & (y >= 0)
            if ok.any():
                dists.append(distances(np.asarray(av)[ok], self.mav[y[ok]], self.distance))
                classes.append(y[ok])
        d = np.concatenate(dists) if dists else np.zeros(0)
        c = np.concatenate(classes) if classes else np.zeros(0, dtype=np.int64)
        tails, mask = self._tails(d, c, num_classes)
        self.weibull = fit_high(tails, mask, self.translate)
        self.unfitted = int((~self.weibull.valid).sum())
        return self

    def fit_arrays(self, av: np.ndarray, pred: np.ndarray, labels: np.ndarray, num_classes: int,
                   rows: int = 4096) -> "OpenMax":
        """:meth:`fit` over in-memory or memory-mapped arrays."""
        return self.fit(lambda: _chunks(av, pred, labels, rows), num_classes)

    def _tails(self, d: np.ndarray, c: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((-d, c))                       # by class, then distance descending
        d, c = d[order], c[order]
        starts = np.searchsorted(c, np.arange(num_classes))
        rank = np.arange(len(c)) - starts[c]
        keep = rank < self.tailsize
        tails = np.zeros((num_classes, self.tailsize))
        mask = np.zeros((num_classes, self.tailsize), dtype=bool)
        tails[c[keep], rank[keep]] = d[keep]
        mask[c[keep], rank[keep]] = True
        return tails, mask

    # ------------------------------------------------------------------ inference
    def recalibrate(self, logits: np.ndarray, av: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Revised activations ``(B, K)`` and the unknown activation ``(B,)``."""
        if self.mav is None or self.weibull is None:
            raise ConfigError("OpenMax.recalibrate before fit")
        logits = np.asarray(logits, dtype=np.float64)
        av = np.asarray(av)
        b, k = logits.shape
        alpha = min(self.alpha_rank, k)
        rows = max(1, self.max_block // max(1, alpha * av.shape[1]))
        out = logits.copy()
        unknown = np.zeros(b)
        ranks_w = (alpha - np.arange(alpha)) / alpha                        # (alpha,)
        for s in range(0, b, rows):
            lg = logits[s:s + rows]
            top = np.argpartition(-lg, alpha - 1, axis=1)[:, :alpha]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(lg, top, 1), 1), 1)
            d = distances(av[s:s + rows, None, :], self.mav[top], self.distance)   # (b, alpha)
            wscore = self.weibull.cdf(d, top)
            omega = 1.0 - ranks_w[None, :] * wscore
            v = np.take_along_axis(lg, top, 1)
            np.put_along_axis(out[s:s + rows], top, v * omega, 1)
            unknown[s:s + rows] = (v * (1.0 - omega)).sum(1)
        return out, unknown

    def probabilities(self, logits: np.ndarray, av: np.ndarray) -> np.ndarray:
        """Softmax over the ``K`` revised activations and the unknown one (last column)."""
        v, u = self.recalibrate(logits, av)
        z = np.concatenate([v, u[:, None]], axis=1)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def predict(self, logits: np.ndarray, av: np.ndarray, threshold: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prediction with -1 = unknown, best known class, open score)``.

        The open score is the best known probability, minus 1 where the unknown class wins, so
        ``score < threshold`` (for any threshold in [0, 1]) is exactly OpenMax's rejection rule.
        """
        p = self.probabilities(logits, av)
        known = p[:, :-1]
        best = known.argmax(1)
        top = known.max(1)
        unknown_wins = p[:, -1] > top
        score = np.where(unknown_wins, top - 1.0, top)
        pred = np.where(score < threshold, -1, best)
        return pred, best, score
