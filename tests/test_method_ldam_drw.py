"""LDAM-DRW (kaidic/LDAM-DRW): margins, effective-number / deferred weights, the LDAM loss and the
normalised classifier, against hand values and a loop re-derivation of the reference formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.errors import ConfigError
from facelt.losses.ldam import LDAMLoss, ldam_margins
from facelt.losses.reweighting import deferred_weights, effective_number_weights
from facelt.models.normed_linear import NormedLinearHead

COUNTS = [100, 10, 1]


def test_margins_by_hand():
    # m_k = C n_k^(-1/4), largest 0.5:  n^(-1/4) = [1/3.16228, 1/1.77828, 1] = [0.31623, 0.56234, 1]
    # times 0.5 / 1 -> [0.158114, 0.281171, 0.5]
    assert np.allclose(ldam_margins(COUNTS, 0.5).numpy(), [0.158114, 0.281171, 0.5], atol=1e-6)
    # scale-free: counts x 16 change nothing (ratios (n_min/n_k)^(1/4) only)
    assert np.allclose(ldam_margins([1600, 160, 16]).numpy(), ldam_margins(COUNTS).numpy())


def test_effective_number_weights_by_hand():
    # effective numbers E_n = (1 - 0.9999^n) / (1 - 0.9999): E_100 = 99.5066, E_10 = 9.99550, E_1 = 1
    # w ~ 1/E = [0.0100496, 0.100045, 1], sum 1.1100946; times K / sum = 3 / 1.1100946:
    expected = [0.027159, 0.270369, 2.702472]
    w = effective_number_weights(COUNTS, 0.9999)
    assert np.allclose(w.numpy(), expected, atol=2e-6)
    assert math.isclose(float(w.sum()), 3.0, rel_tol=1e-6)
    assert torch.equal(effective_number_weights(COUNTS, 0.0), torch.ones(3))


def test_deferred_weights_switch_at_the_deferral_epoch():
    assert torch.equal(deferred_weights(COUNTS, 159, 160), torch.ones(3))
    assert torch.allclose(deferred_weights(COUNTS, 160, 160), effective_number_weights(COUNTS, 0.9999))
    assert torch.equal(deferred_weights(COUNTS, 10_000, -1), torch.ones(3))


def test_empty_class_is_refused_naming_it():
    with pytest.raises(ConfigError, match="class 1 has none"):
        ldam_margins([5, 0, 3])
    with pytest.raises(ConfigError, match="class 2"):
        effective_number_weights([5, 3, 0], 0.9999)


def reference_ldam(cos, labels, counts, weights, s=30.0, max_m=0.5):
    """The reference formula in float64 loops: CE over s * (x - m_y e_y), batch mean weighted by
    the target classes' weights (torch's ``cross_entropy(weight=)``)."""
    n = np.asarray(counts, dtype=np.float64)
    m = n ** -0.25
    m = m * max_m / m.max()
    num = den = 0.0
    for i in range(cos.shape[0]):
        y = int(labels[i])
        z = [s * (float(cos[i, k]) - (m[k] if k == y else 0.0)) for k in range(cos.shape[1])]
        top = max(z)
        lse = top + math.log(sum(math.exp(v - top) for v in z))
        num += weights[y] * (lse - z[y])
        den += weights[y]
    return num / den


def test_ldam_drw_loss_matches_the_reference_formula_across_the_deferral():
    g = torch.Generator().manual_seed(0)
    counts = [40, 12, 5, 2]
    cos = torch.rand(9, 4, generator=g) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 3, 2])
    loss = LDAMLoss(counts, max_m=0.5, s=30.0, defer_epoch=3, beta=0.9999)
    drw = effective_number_weights(counts, 0.9999).double().numpy()
    for epoch, weights in ((0, np.ones(4)), (2, np.ones(4)), (3, drw), (7, drw)):
        loss.set_epoch(epoch)
        got = float(loss(cos, labels))
        assert got == pytest.approx(reference_ldam(cos.double(), labels, counts, weights), rel=1e-5)
    # the margin matters: without it the loss is plain scaled CE, which is smaller
    plain = torch.nn.functional.cross_entropy(30 * cos, labels)
    loss.set_epoch(0)
    assert float(loss(cos, labels)) > float(plain) + 0.1


def test_prescaled_logits_give_the_same_loss():
    # RIDE's experts multiply by s in the network: scale_logits=False subtracts s*m instead
    cos = torch.tensor([[0.2, -0.1, 0.4], [0.9, 0.3, -0.5]])
    labels = torch.tensor([2, 0])
    a = LDAMLoss(COUNTS, s=30.0)(cos, labels)
    b = LDAMLoss(COUNTS, s=30.0, scale_logits=False)(30.0 * cos, labels)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_normed_linear_head_is_a_scaled_cosine():
    head = NormedLinearHead(4, 3, scale=30.0)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3), atol=1e-6)
    v = torch.tensor([[3.0, 0.0, 0.0, 4.0], [0.0, -1.0, 0.0, 0.0]])
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 5.0]]))
    logits, aux = head(v)
    # cosines: row 0 = [3/5, 0, 4/5], row 1 = [0, -1, 0]
    assert torch.allclose(logits, 30.0 * torch.tensor([[0.6, 0.0, 0.8], [0.0, -1.0, 0.0]]), atol=1e-5)
    assert aux == {}
