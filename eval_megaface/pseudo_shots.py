"""Pseudo-shots (the OLTR paper's MegaFace breakdown).

A probe's pseudo-shot count is the number of training images whose cosine similarity to it is
strictly greater than a threshold (0.7 by default): how many "shots" of that face the model was
trained on.  Buckets: many (> 5), few (2..5), one (1), zero (0); rank-1 is reported per bucket over
the trials whose *probe* image p falls in it.  Counting streams the training features chunk by
chunk (a count, no top-k), so a 887.5K-row MS1M-LT file costs one chunk of memory.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from facelt.errors import ConfigError
from facelt.features.files import FeatureFile, iter_row_chunks
from eval_megaface.protocol import ProbeOutcome
from eval_megaface.search import DEFAULT_CHUNK_ROWS
from facelt.utils.progress import progress

DEFAULT_THRESHOLD = 0.7
BUCKETS = ("many", "few", "one", "zero")
_BLOCK_ELEMS = 16 * 1024 * 1024  # probe x rows score block (64 MB float32)


def check_threshold(threshold: float, normalize: bool = True) -> None:
    """Refuse a threshold that cannot count anything sensibly: NaN (every comparison is false, so
    every probe would land in the zero bucket), an infinity, or -- for cosines (``normalize``) --
    a value outside [-1, 1]."""
    t = float(threshold)
    if not math.isfinite(t):
        raise ConfigError(f"--pseudo-shot-threshold {threshold}: expected a finite number "
                          "(a cosine in [-1, 1]; default 0.7)")
    if normalize and not -1.0 <= t <= 1.0:
        raise ConfigError(f"--pseudo-shot-threshold {threshold}: a cosine threshold must lie in "
                          "[-1, 1] (scores of L2-normalised features; default 0.7)")


def count_above(queries: np.ndarray, ff: FeatureFile, threshold: float = DEFAULT_THRESHOLD,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, normalize: bool = True) -> np.ndarray:
    """For each query, how many rows of ``ff`` have inner product (cosine when normalised) > threshold.

    Rows are L2-normalised as read when ``normalize``; queries are used as given.

    The comparison is made in float32 against ``float32(threshold)``: a score equal to the
    threshold is not counted.
    """
    check_threshold(threshold, normalize)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    thr = np.float32(threshold)
    counts = np.zeros(len(q), dtype=np.int64)
    bar = progress(total=ff.rows, desc="pseudo-shots", unit="row")
    for rows, block in iter_row_chunks(ff, np.arange(ff.rows), chunk_rows, normalize):
        step = max(1, _BLOCK_ELEMS // max(1, len(block)))
        for a in range(0, len(q), step):
            counts[a:a + step] += np.count_nonzero((q[a:a + step] @ block.T) > thr, axis=1)
        bar.update(len(rows))
    bar.close()
    return counts


def bucket_of(counts: np.ndarray) -> np.ndarray:
    """Bucket name per count: zero (0), one (1), few (2..5), many (> 5)."""
    c = np.asarray(counts)
    return np.select([c > 5, c >= 2, c == 1], ["many", "few", "one"], default="zero").astype(object)


def bucket_report(outcome: ProbeOutcome, counts: np.ndarray) -> dict[str, dict[str, Optional[float]]]:
    """``{bucket: {"rank1": float | None, "probes": int}}`` for every bucket (None: no trials)."""
    buckets = bucket_of(counts)
    return {b: {"rank1": outcome.rank1(buckets == b), "probes": int(np.sum(buckets == b))}
            for b in BUCKETS}
