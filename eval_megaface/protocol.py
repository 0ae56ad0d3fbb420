"""MegaFace challenge-1 identification: gallery subsets, trials, CMC.

Trials: for every probe identity, every ordered pair (p, g) of two distinct images of it is one
trial; g is put among the gallery's distractors and p searches them.  The rank of g is the number
of distractors scoring at least sim(p, g) (ties count against the genuine match), and the trial is
a hit at rank k when that rank is < k; rank-1 = hits at rank 1 / trials.  Since rank(p, g) < k
exactly when sim(p, g) is strictly greater than p's k-th best distractor score, every trial is
decided from the genuine score and p's top-k distractor scores (see :mod:`eval_megaface.search`).

Gallery subsets: the gallery of size n is the first n rows of a fixed order over the (noise-free)
distractors -- a seeded permutation, or the order of a list file -- so smaller galleries are nested
in larger ones and a seed reproduces them exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from eval_megaface.search import dot64
from facelt.errors import ConfigError

MAX_RANK = 10
NAMED_SIZES = ("10", "100", "1K", "10K", "100K", "1M")
_SIZE_RE = re.compile(r"^([0-9]+)([KkMm]?)$")


def parse_gallery_size(text: str) -> int:
    """``"1K"`` -> 1000, ``"1M"`` -> 1000000, ``"512"`` -> 512 (must be >= 1)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ConfigError(f"--gallery {text!r}: expected one of {', '.join(NAMED_SIZES)} or an integer")
    n = int(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    if n < 1:
        raise ConfigError(f"--gallery {text!r}: a gallery needs at least one distractor")
    return n


def parse_gallery_sizes(text: str) -> list[int]:
    """A comma list of sizes, in the order given, duplicates dropped."""
    out: list[int] = []
    for part in text.split(","):
        if part.strip():
            n = parse_gallery_size(part)
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError(f"--gallery {text!r}: no size given")
    return out


def gallery_order(num_rows: int, seed: int, exclude: Optional[np.ndarray] = None,
                  preferred: Optional[np.ndarray] = None) -> np.ndarray:
    """Distractor rows in gallery order: gallery of size n = the first n entries.

    ``preferred`` (row indices, e.g. from a distractor list file) fixes the order; otherwise it is
    ``numpy.random.default_rng(seed).permutation(num_rows)``.  Rows flagged in ``exclude`` (noise)
    are dropped without disturbing the order of the rest.
    """
    if preferred is not None:
        order = np.asarray(preferred, dtype=np.int64)
    else:
        order = np.random.default_rng(seed).permutation(num_rows).astype(np.int64)
    if exclude is not None:
        order = order[~np.asarray(exclude, dtype=bool)[order]]
    return order


@dataclass
class ProbeOutcome:
    """Per-probe trial counts: ``trials[p]`` pairs with p as probe, ``hits[p, j]`` of them at rank < j+1."""

    trials: np.ndarray  # (np,) int64
    hits: np.ndarray    # (np, K) int64

    def cmc(self, mask: Optional[np.ndarray] = None) -> Optional[list[float]]:
        """CMC over the trials of the probes in ``mask`` (all by default); None with no trials."""
        t = self.trials if mask is None else self.trials[mask]
        h = self.hits if mask is None else self.hits[mask]
        total = int(t.sum())
        if total == 0:
            return None
        return [float(x) / total for x in h.sum(axis=0)]

    def rank1(self, mask: Optional[np.ndarray] = None) -> Optional[float]:
        c = self.cmc(mask)
        return None if c is None else c[0]

    @property
    def total_trials(self) -> int:
        return int(self.trials.sum())


def score_trials(features: np.ndarray, identities: np.ndarray, topk_scores: np.ndarray) -> ProbeOutcome:
    """Decide every trial from genuine scores and each probe's best-first distractor scores.

    ``features`` are the probe features as searched (normalised already when the search was),
    ``topk_scores[p]`` p's K best distractor scores, descending, ``-inf`` where the gallery has
    fewer than K rows, scored by :func:`eval_megaface.search.dot64` (see ``search.rescore``);
    genuine scores use the same routine, so an exact tie is a tie (a miss).
    """
    feats = np.ascontiguousarray(features, dtype=np.float32)
    ids = np.asarray(identities)
    n, k = topk_scores.shape
    if len(feats) != n or len(ids) != n:
        raise ValueError(f"{len(feats)} features, {len(ids)} identities, {n} top-k rows")
    trials = np.zeros(n, np.int64)
    hits = np.zeros((n, k), np.int64)
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(np.diff(ids[order])) + 1
    for members in np.split(order, bounds):
        m = len(members)
        if m < 2:
            continue
        f = feats[members]
        off = ~np.eye(m, dtype=bool)
        trials[members] = m - 1
        for row, p in enumerate(members):  # genuine scores of probe p, by the distractors' routine
            genuine = dot64(f[row][None, :], f)              # (m,), p itself excluded below
            beats = (genuine[:, None] > topk_scores[p][None, :]) & off[row][:, None]
            hits[p] = beats.sum(axis=0)
    return ProbeOutcome(trials, hits)


def group_rank1(outcome: ProbeOutcome, attributes: dict[str, Sequence[str]]) -> dict[str, dict[str, Optional[float]]]:
    """Rank-1 per value of each attribute column, over the trials whose probe has that value."""
    out: dict[str, dict[str, Optional[float]]] = {}
    for column, values in attributes.items():
        vals = np.asarray(values, dtype=object)
        out[column] = {str(v): outcome.rank1(vals == v) for v in sorted(set(values))}
    return out
