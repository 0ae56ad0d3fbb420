"""Training objectives against hand-worked values (focal, balanced softmax, logit adjustment,
range loss, lifted structured loss)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facelt.config import FocalConfig, LogitAdjustedConfig, StageConfig
from facelt.losses import (FocalLoss, LiftedStructuredLoss, RangeLoss, build_aux_loss,
                               build_loss)


def test_focal_gamma0_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=g)
    y = torch.randint(0, 7, (16,), generator=g)
    loss = build_loss(StageConfig(loss="focal", focal=FocalConfig(gamma=0.0)), [5] * 7)(logits, y)
    assert torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-6)


def test_focal_value_by_hand():
    # logits [0, ln 3], label 0: p_t = 1/4; FL = -(3/4)^2 ln(1/4)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    loss = FocalLoss(gamma=2.0)(logits, torch.tensor([0]))
    assert abs(loss.item() - (0.75 ** 2) * math.log(4.0)) < 1e-6
    # per-class alpha multiplies the sample's term
    loss_a = FocalLoss(gamma=2.0, alpha=[0.5, 2.0])(logits, torch.tensor([0]))
    assert abs(loss_a.item() - 0.5 * (0.75 ** 2) * math.log(4.0)) < 1e-6


def test_balanced_softmax_by_hand_and_as_shifted_ce():
    counts = [1, 3]
    # logits 0, 0 shifted by log n = [0, ln 3]: p(label 0) = 1/4, loss ln 4
    loss = build_loss(StageConfig(loss="balanced_softmax"), counts)(torch.zeros(1, 2),
                                                                    torch.tensor([0]))
    assert abs(loss.item() - math.log(4.0)) < 1e-6
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 2, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    ref = F.cross_entropy(logits + torch.log(torch.tensor([1.0, 3.0])), y)
    assert torch.allclose(build_loss(StageConfig(loss="balanced_softmax"), counts)(logits, y), ref,
                          atol=1e-6)


def test_logit_adjusted_loss_by_hand():
    # prior [1/4, 3/4], tau 2: p(label 0) = (1/4)^2 / ((1/4)^2 + (3/4)^2) = 1/10
    loss = build_loss(StageConfig(loss="logit_adjusted", logit_adjusted=LogitAdjustedConfig(tau=2.0)), [1, 3])(
        torch.zeros(1, 2), torch.tensor([0]))
    assert abs(loss.item() - math.log(10.0)) < 1e-6
    # tau = 1 is balanced softmax (the shifts differ by the constant log N)
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    la = build_loss(StageConfig(loss="logit_adjusted", logit_adjusted=LogitAdjustedConfig(tau=1.0)), [2, 5, 9])(logits, y)
    bs = build_loss(StageConfig(loss="balanced_softmax"), [2, 5, 9])(logits, y)
    assert torch.allclose(la, bs, atol=1e-6)


def test_empty_class_gets_no_probability_and_no_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    loss = build_loss(StageConfig(loss="balanced_softmax"), [4, 0, 4])(logits, torch.tensor([0, 2]))
    loss.backward()
    assert abs(loss.item() - math.log(2.0)) < 1e-6       # two equal classes remain
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[:, 1] == 0)


def test_range_loss_by_hand():
    # class 0 at 0, 1, 3: squared pair distances 1, 9, 4 -> two largest 9, 4 -> 2 / (1/9 + 1/4)
    # class 1 at 10, 11: one pair, 1 -> harmonic mean 1
    # centres 4/3 and 10.5: squared distance (10.5 - 4/3)^2; inter = max(100 - that, 0)
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0]])
    y = torch.tensor([0, 0, 0, 1, 1])
    intra = 2.0 / (1 / 9 + 1 / 4) + 1.0
    inter = 100.0 - (10.5 - 4.0 / 3.0) ** 2
    got = RangeLoss(k=2, margin=100.0)(x, y)
    assert abs(got.item() - (intra + inter)) < 1e-4
    # margin below the centre distance: only the intra-class term
    assert abs(RangeLoss(k=2, margin=10.0)(x, y).item() - intra) < 1e-4


def test_lifted_loss_by_hand():
    # a=0, b=1 (class 0), c=3 (class 1); one positive pair (a, b), m = 1
    # J = log(exp(1 - D_ac) + exp(1 - D_bc)) + D_ab = log(e^-2 + e^-1) + 1; L = J^2 / 2
    x = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    loss = LiftedStructuredLoss(margin=1.0)(x, torch.tensor([0, 0, 1]))
    j = math.log(math.exp(-2.0) + math.exp(-1.0)) + 1.0
    assert abs(loss.item() - j * j / 2.0) < 1e-6
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lifted_without_positive_pair_is_zero():
    x = torch.tensor([[0.0], [1.0]], requires_grad=True)
    loss = LiftedStructuredLoss()(x, torch.tensor([0, 1]))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


def test_builders_follow_the_config():
    assert build_aux_loss(StageConfig(aux_loss="none")) is None
    assert isinstance(build_aux_loss(StageConfig(aux_loss="range")), RangeLoss)
    assert isinstance(build_aux_loss(StageConfig(aux_loss="lifted")), LiftedStructuredLoss)
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.allclose(build_loss(StageConfig(), [1, 1, 1])(x, y), F.cross_entropy(x, y))
