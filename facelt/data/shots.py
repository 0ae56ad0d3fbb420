"""Shot buckets: many / medium / few classes by their number of training images.

The buckets follow the OLTR paper and classifier-balancing: many-shot classes have more than 100
training images, few-shot fewer than 20, medium-shot 20..100 inclusive.  The OLTR reference code
(``utils.py: shot_acc``) drew the lines at ``>= 100`` (many) and ``<= 20`` (few) instead, so classes
with exactly 100 or exactly 20 training images fall in another bucket there (``eval.many`` /
``eval.few`` set the lines; the rule itself is strict on both sides).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def shot_of_counts(train_counts: Sequence[int], many: int = 100, few: int = 20) -> np.ndarray:
    """Bucket name per class: 'many' if count > many, 'few' if count < few, else 'medium'."""
    counts = np.asarray(train_counts).ravel()
    return np.where(counts > many, "many", np.where(counts < few, "few", "medium"))


def shot_counts(train_counts: Sequence[int], many: int = 100, few: int = 20) -> dict[str, int]:
    """How many classes fall in each shot bucket: ``{"many", "medium", "few"}``."""
    shots = shot_of_counts(train_counts, many, few)
    return {b: int((shots == b).sum()) for b in ("many", "medium", "few")}
