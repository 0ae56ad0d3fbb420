"""Long-tailed and open-set metrics on small tables worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facelt.openset.metrics import (open_set_accuracy, open_set_f_measure, per_class_accuracy, reject,
                            shot_accuracy, shot_of_counts, threshold_sweep)


def test_shot_buckets_at_the_boundaries():
    # many > 100, few < 20: 100 and 20 themselves are medium
    assert shot_of_counts([19, 20, 100, 101]).tolist() == ["few", "medium", "medium", "many"]


def test_per_class_and_shot_accuracy_by_hand():
    train_counts = [150, 50, 5, 3]           # many, medium, few, few (class 3 absent from test)
    labels = [0, 0, 0, 0, 1, 1, 2, -1]
    preds = [0, 0, 0, 1, 1, 0, 1, 2]
    # class 0: 3/4, class 1: 1/2, class 2: 0/1, class 3: no samples; the open sample is ignored
    acc = per_class_accuracy(preds, labels, 4)
    assert acc[:3].tolist() == [0.75, 0.5, 0.0] and math.isnan(acc[3])
    res = shot_accuracy(preds, labels, train_counts)
    assert res["overall"] == pytest.approx(4 / 7)
    assert (res["many"], res["medium"], res["few"]) == (0.75, 0.5, 0.0)


def test_bucket_mean_is_per_class_not_per_sample():
    train_counts = [200, 300]
    labels = [0] * 9 + [1]
    preds = [0] * 9 + [0]
    # per sample 9/10, per class mean (1 + 0) / 2
    res = shot_accuracy(preds, labels, train_counts)
    assert res["overall"] == pytest.approx(0.9) and res["many"] == pytest.approx(0.5)
    assert math.isnan(res["medium"]) and math.isnan(res["few"])


def test_reject_below_threshold_only():
    out = reject([0.05, 0.1, 0.5], [3, 4, 5], 0.1)
    assert out.tolist() == [-1, 4, 5]


def test_open_set_f_measure_by_hand():
    labels = [0, 1, 2, 0, 1, -1, -1]
    preds = [0, 1, 2, 1, -1, 2, -1]
    # TP 3 (first three); FP 2 (known 0 -> 1, known 1 rejected); FN 1 (open accepted as 2);
    # the rejected open sample counts nowhere.  P = 3/5, R = 3/4, F = 2*0.45/1.35 = 2/3
    assert open_set_f_measure(preds, labels) == pytest.approx(2 / 3)
    assert open_set_accuracy(preds, labels) == pytest.approx(0.5)


def test_f_measure_degenerate_cases():
    assert open_set_f_measure([-1, -1], [0, -1]) == 0.0     # TP 0
    assert open_set_f_measure([0, 1], [0, 1]) == 1.0        # perfect, no open samples


def test_threshold_sweep_by_hand_and_monotone():
    probs = np.array([0.9, 0.3, 0.6, 0.2, 0.8])
    preds = np.array([0, 1, 1, 2, 0])
    labels = np.array([0, 1, 2, -1, -1])
    rows = threshold_sweep(probs, preds, labels, [0.0, 0.5, 1.1])
    # t = 0.5: preds [0, -1, 1, -1, 0]; known correct 1/3; open rejected 1/2;
    # TP 1, FP 2, FN 1 -> P 1/3, R 1/2, F = 2*(1/6)/(5/6) = 0.4
    assert rows[1] == pytest.approx({"threshold": 0.5, "f_measure": 0.4,
                                     "closed_accuracy_known": 1 / 3, "open_rejection": 0.5})
    # t = 0: nothing rejected; t = 1.1: everything rejected
    assert rows[0]["open_rejection"] == 0.0 and rows[0]["closed_accuracy_known"] == pytest.approx(2 / 3)
    assert rows[2]["open_rejection"] == 1.0 and rows[2]["closed_accuracy_known"] == 0.0
    assert rows[2]["f_measure"] == 0.0

    rng = np.random.default_rng(0)
    n = 500
    labels = np.where(rng.random(n) < 0.3, -1, rng.integers(0, 10, n))
    preds = rng.integers(0, 10, n)
    probs = rng.random(n)
    rows = threshold_sweep(probs, preds, labels, np.linspace(0, 1, 21))
    rej = [r["open_rejection"] for r in rows]
    acc = [r["closed_accuracy_known"] for r in rows]
    assert all(a <= b for a, b in zip(rej, rej[1:])) and rej[-1] > rej[0]
    assert all(a >= b for a, b in zip(acc, acc[1:])) and acc[-1] < acc[0]
