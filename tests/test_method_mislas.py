"""MiSLAS (dvlab-research/MiSLAS): label-aware smoothing factors and loss, mixup batch and loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facelt.errors import ConfigError
from facelt.losses.label_aware_smoothing import LabelAwareSmoothingLoss, label_aware_smoothing
from facelt.losses.mixup import mixup_batch, mixup_loss, sample_mixup_lambda

COUNTS = [100, 10, 1]


def test_smoothing_shapes_by_hand():
    # t = (n - n_min) / (n_max - n_min) = [1, 9/99 = 0.090909, 0]; head 0.3, tail 0.0
    # concave: 0.3 sin(pi t / 2) -> [0.3, 0.3 sin(0.142800) = 0.042694, 0]
    # linear:  0.3 t             -> [0.3, 0.027273, 0]
    # convex:  0.3 + 0.3 sin(3pi/2 + pi t/2) = 0.3 (1 - cos(pi t/2)) -> [0.3, 0.003054, 0]
    # exp p=2: 0.3 t^2           -> [0.3, 0.002479, 0]
    cases = {"concave": [0.3, 0.042694, 0.0], "linear": [0.3, 0.027273, 0.0],
             "convex": [0.3, 0.003054, 0.0]}
    for shape, expected in cases.items():
        assert np.allclose(label_aware_smoothing(COUNTS, 0.3, 0.0, shape).numpy(), expected,
                           atol=1e-6), shape
    assert np.allclose(label_aware_smoothing(COUNTS, 0.3, 0.0, "exp", power=2).numpy(),
                       [0.3, 0.002479, 0.0], atol=1e-6)
    # Places-LT bounds 0.4 / 0.1: the ends take the bounds exactly
    eps = label_aware_smoothing([50, 7, 3, 30], 0.4, 0.1)
    assert float(eps[0]) == pytest.approx(0.4) and float(eps[2]) == pytest.approx(0.1)


def test_smoothing_refuses_balanced_counts_and_unknown_shapes():
    with pytest.raises(ConfigError, match="different sizes"):
        label_aware_smoothing([5, 5, 5], 0.3, 0.0)
    with pytest.raises(ConfigError, match="shape"):
        label_aware_smoothing(COUNTS, 0.3, 0.0, "cubic")
    with pytest.raises(ConfigError, match="power"):
        label_aware_smoothing(COUNTS, 0.3, 0.0, "exp")


def test_las_loss_matches_the_formula_in_loops():
    g = torch.Generator().manual_seed(1)
    counts = [60, 20, 9, 3, 1]
    logits = torch.randn(7, 5, generator=g) * 3
    labels = torch.tensor([0, 4, 2, 1, 3, 0, 4])
    eps = label_aware_smoothing(counts, 0.3, 0.0).double().numpy()
    total = 0.0
    for i in range(7):
        row = [float(v) for v in logits[i].double()]
        lse = max(row) + math.log(sum(math.exp(v - max(row)) for v in row))
        logp = [v - lse for v in row]
        y = int(labels[i])
        total += (1 - eps[y]) * (-logp[y]) + eps[y] * (-sum(logp) / 5)
    got = LabelAwareSmoothingLoss(counts, 0.3, 0.0)(logits, labels)
    assert float(got) == pytest.approx(total / 7, rel=1e-6)
    # the smoothing is active: the loss differs from plain CE
    assert abs(float(got) - float(F.cross_entropy(logits, labels))) > 1e-3


def test_mixup_batch_and_loss():
    x = torch.arange(12, dtype=torch.float32).view(3, 4)
    y = torch.tensor([0, 1, 2])
    index = torch.tensor([2, 0, 1])
    mixed = mixup_batch(x, y, alpha=0.2, lam=0.25, index=index)
    # row 0 = 0.25 * x0 + 0.75 * x2
    assert torch.allclose(mixed.inputs[0], 0.25 * x[0] + 0.75 * x[2])
    assert torch.equal(mixed.labels_b, torch.tensor([2, 0, 1]))
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 3.0]])
    expected = (0.25 * F.cross_entropy(logits, y) + 0.75 * F.cross_entropy(logits, y[index]))
    assert float(mixup_loss(F.cross_entropy, logits, mixed)) == pytest.approx(float(expected))


def test_mixup_draws_are_seeded_and_alpha_zero_does_not_mix():
    x = torch.randn(6, 2)
    y = torch.arange(6)
    torch.manual_seed(5)
    a = mixup_batch(x, y, alpha=0.2)
    torch.manual_seed(5)
    b = mixup_batch(x, y, alpha=0.2)
    assert a.lam == b.lam and torch.equal(a.index, b.index)
    assert 0.0 <= a.lam <= 1.0
    none = mixup_batch(x, y, alpha=0.0)
    assert none.lam == 1.0 and torch.equal(none.inputs, x)
    # Beta(0.2, 0.2) is U-shaped around a mean of 0.5: most draws are near 0 or 1
    torch.manual_seed(0)
    lams = np.array([sample_mixup_lambda(0.2) for _ in range(2000)])
    assert abs(lams.mean() - 0.5) < 0.05
    assert ((lams < 0.1) | (lams > 0.9)).mean() > 0.5
