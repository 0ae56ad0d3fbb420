"""Weight balancing (ShadeAlsha/LTR-weight-balancing): the stage-2 class-balanced loss and MaxNorm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.errors import ConfigError
from facelt.losses.class_balanced import ClassBalancedSoftmaxBCE
from facelt.losses.reweighting import effective_number_weights
from facelt.models.maxnorm import MaxNorm, maxnorm_radius


def test_cb_loss_by_hand():
    # beta 0.5, counts [1, 2]: (1 - b) / (1 - b^n) = [0.5/0.5, 0.5/0.75] = [1, 2/3]; sum 5/3;
    # times K=2 / sum -> w = [1.2, 0.8]. Zero logits: p = 0.5 everywhere, each row's BCE sum is
    # 2 ln 2.  Labels [0, 1]: (1.2 + 0.8) * 2 ln 2 / (B K = 4) = ln 2; labels [0, 0]: 1.2 ln 2.
    loss = ClassBalancedSoftmaxBCE([1, 2], beta=0.5)
    z = torch.zeros(2, 2)
    assert float(loss(z, torch.tensor([0, 1]))) == pytest.approx(math.log(2), rel=1e-6)
    assert float(loss(z, torch.tensor([0, 0]))) == pytest.approx(1.2 * math.log(2), rel=1e-6)


def test_cb_loss_matches_the_reference_formula_in_loops():
    g = torch.Generator().manual_seed(2)
    counts = [500, 80, 12, 3]
    logits = torch.randn(6, 4, generator=g) * 2
    labels = torch.tensor([0, 3, 1, 2, 0, 3])
    w = effective_number_weights(counts, 0.9999).double().numpy()
    total = 0.0
    for i in range(6):
        row = [math.exp(float(v)) for v in logits[i].double()]
        p = [v / sum(row) for v in row]
        y = int(labels[i])
        for k in range(4):
            term = -math.log(p[k]) if k == y else -math.log(1 - p[k])
            total += w[y] * term
    got = ClassBalancedSoftmaxBCE(counts, beta=0.9999)(logits, labels)
    assert float(got) == pytest.approx(total / 24, rel=1e-5)


def test_maxnorm_radius_and_projection_by_hand():
    # row norms 1, 2, 5 -> radius = 1 + 0.1 * (5 - 1) = 1.4
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    mn = MaxNorm(thresh=0.1)
    assert mn.calibrate(w) == pytest.approx(1.4)
    assert mn.project_(w) == 2
    # [0, 2] -> [0, 1.4]; [3, 4] (norm 5) -> 1.4/5 * [3, 4] = [0.84, 1.12]; [1, 0] untouched
    assert torch.allclose(w, torch.tensor([[1.0, 0.0], [0.0, 1.4], [0.84, 1.12]]))
    # the radius stays the calibrated one: a later, larger classifier is capped at 1.4 too
    w2 = torch.tensor([[10.0, 0.0], [0.0, 0.5]])
    mn.project_(w2)
    assert torch.allclose(w2, torch.tensor([[1.4, 0.0], [0.0, 0.5]]))


def test_maxnorm_calibrates_on_first_projection_and_checks_thresh():
    w = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    mn = MaxNorm(thresh=0.5)
    mn.project_(w)                       # radius 2 + 0.5 * 2 = 3
    assert mn.radius == pytest.approx(3.0)
    assert np.allclose(w.norm(dim=1).numpy(), [2.0, 3.0])
    state = mn.state_dict()
    other = MaxNorm()
    other.load_state_dict(state)
    assert other.radius == pytest.approx(3.0) and other.thresh == 0.5
    assert maxnorm_radius(1.0, 3.0, 0.0) == 1.0
    with pytest.raises(ConfigError):
        MaxNorm(thresh=1.5)
