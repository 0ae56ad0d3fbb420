"""Shot buckets: many / medium / few classes by their number of training images.

Two named rules (``eval.shot_rule``), both with the lines ``many`` = 100 and ``few`` = 20
(``eval.many`` / ``eval.few``):

``paper`` (the default)
    The OLTR paper's words and classifier-balancing's ``utils.shot_acc``: many-shot classes have
    *more than* 100 training images, few-shot *fewer than* 20, medium-shot 20..100 inclusive.
    The convention later long-tail work reports.
``oltr_code``
    The OLTR reference code's ``utils.shot_acc``: many ``>= 100``, few ``<= 20``, medium 21..99.
    On the released Places-LT train list one class has exactly 100 images and six exactly 20:
    they change bucket (paper 131 / 163 / 71 classes, oltr_code 132 / 156 / 77).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from facelt.errors import ConfigError

SHOT_RULES = ("paper", "oltr_code")
BUCKETS = ("many", "medium", "few")


def check_shot_rule(rule: str) -> str:
    if rule not in SHOT_RULES:
        raise ConfigError(f"eval.shot_rule: unknown rule {rule!r} (known: {', '.join(SHOT_RULES)})")
    return rule


def shot_of_counts(train_counts: Sequence[int], many: int = 100, few: int = 20,
                   rule: str = "paper") -> np.ndarray:
    """Bucket name per class. ``paper``: 'many' if count > many, 'few' if count < few;
    ``oltr_code``: 'many' if count >= many, 'few' if count <= few; else 'medium'."""
    counts = np.asarray(train_counts).ravel()
    if check_shot_rule(rule) == "paper":
        is_many, is_few = counts > many, counts < few
    else:
        is_many, is_few = counts >= many, counts <= few
    return np.where(is_many, "many", np.where(is_few, "few", "medium"))


def shot_counts(train_counts: Sequence[int], many: int = 100, few: int = 20,
                rule: str = "paper") -> dict[str, int]:
    """How many classes fall in each shot bucket: ``{"many", "medium", "few"}``."""
    shots = shot_of_counts(train_counts, many, few, rule)
    return {b: int((shots == b).sum()) for b in BUCKETS}


def shot_rule_text(rule: str = "paper", many: int = 100, few: int = 20) -> str:
    """The rule by name and its lines, as every report states it."""
    if check_shot_rule(rule) == "paper":
        return (f"paper: many > {many} training images, medium {few}..{many} inclusive, "
                f"few < {few} (the OLTR paper, classifier-balancing)")
    return (f"oltr_code: many >= {many} training images, medium {few + 1}..{many - 1}, "
            f"few <= {few} (the OLTR reference code's utils.shot_acc)")
