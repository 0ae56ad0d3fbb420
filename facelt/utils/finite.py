"""Refuse non-finite (NaN / inf) feature rows where features are read.

One NaN row silently changes a ranking (NaN compares false against everything) and an all-NaN
distractor file scores rank-1 0.00; :func:`check_finite_rows` turns both into an error that names
the file and its first bad rows.  It runs on blocks already in memory, one pass over the block.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from facelt.errors import DataError


def check_finite_rows(block: np.ndarray, path: Union[str, os.PathLike], first_row: int = 0,
                      rows: Optional[np.ndarray] = None, max_report: int = 5) -> None:
    """Raise :class:`DataError` when a row of ``block`` holds NaN or inf.

    Row numbers in the message are the file's: ``rows[i]`` for block row ``i`` when ``rows`` is
    given, else ``first_row + i``.  Reports the first ``max_report`` bad rows and their count.
    """
    block = np.asarray(block)
    if block.size == 0 or np.isfinite(block).all():
        return
    flat = block.reshape(len(block), -1)
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    ids = np.asarray(rows, dtype=np.int64)[bad] if rows is not None else bad + int(first_row)
    shown = ", ".join(str(int(r)) for r in ids[:max_report])
    kinds = []
    vals = flat[bad]
    if np.isnan(vals).any():
        kinds.append("NaN")
    if np.isinf(vals).any():
        kinds.append("inf")
    more = f" (and {len(bad) - max_report} more in this block)" if len(bad) > max_report else ""
    raise DataError(f"feature file {path}: row(s) {shown}{more} hold {' and '.join(kinds)} values; "
                    "features must be finite (re-extract them, or drop those rows and their "
                    "list entries)")
