"""GPaCo (dvlab-research/Parametric-Contrastive-Learning, GPaCo/LT): the parametric contrastive
loss, the head and the labelled queue."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.errors import ConfigError
from facelt.losses.paco import PaCoLoss
from facelt.losses.paco import paco_inputs
from facelt.models.paco import LabelledQueue, PaCoHead


def test_paco_loss_by_hand():
    # 2 anchors, both class 0, the same 1-d feature [1]; no queue; K = 2 zero centre logits; T = 1.
    # anchor 0: centre logits [0, 0], sample 1: f0.f1 / T = 1 (itself excluded)
    #   D = e^0 + e^0 + e^1 = 2 + e; positives: centre 0 (beta = 1) and sample 1 (alpha = 1)
    #   L = -[(0 - log D) + (1 - log D)] / 2 = log(2 + e) - 1/2 = 1.051445; anchor 1 the same.
    loss = PaCoLoss(num_classes=2, alpha=1.0, beta=1.0, gamma=1.0, temperature=1.0)
    f = torch.tensor([[1.0], [1.0]])
    got = loss(f, torch.tensor([0, 0]), torch.zeros(2, 2))
    assert float(got) == pytest.approx(math.log(2 + math.e) - 0.5, rel=1e-6)
    # gamma = 0 drops the samples from the denominator: D = 2, L = (2 log 2 - 1) / 2
    loss0 = PaCoLoss(num_classes=2, alpha=1.0, beta=1.0, gamma=0.0, temperature=1.0)
    assert float(loss0(f, torch.tensor([0, 0]), torch.zeros(2, 2))) == pytest.approx(
        (2 * math.log(2) - 1) / 2, rel=1e-6)


def reference_paco(feats, labels, sup, alpha, beta, gamma, t, supt, smooth, log_prior, t_base):
    """The loss re-derived from its formula in float64 loops."""
    a, n, k = sup.shape[0], feats.shape[0], sup.shape[1]
    total = 0.0
    for i in range(a):
        terms = []   # (logit, positive weight, denominator weight)
        for c in range(k):
            z = (float(sup[i, c]) + (log_prior[c] if log_prior is not None else 0.0)) / supt
            pos = beta * ((1 - smooth) if c == labels[i] else smooth / (k - 1))
            terms.append((z, pos, 1.0))
        for j in range(n):
            if j == i:
                continue
            z = float(feats[i] @ feats[j]) / t
            terms.append((z, alpha if labels[j] == labels[i] else 0.0, gamma))
        log_d = math.log(sum(dw * math.exp(z) for z, _, dw in terms))
        num = sum(p * (z - log_d) for z, p, _ in terms)
        total += -(t / t_base) * num / sum(p for _, p, _ in terms)
    return total / a


@pytest.mark.parametrize("with_prior,smooth,gamma,t_base", [(False, 0.0, 1.0, None),
                                                             (True, 0.0, 1.0, None),
                                                             (True, 0.1, 0.5, 0.07)])
def test_paco_loss_matches_the_formula_with_a_queue(with_prior, smooth, gamma, t_base):
    g = torch.Generator().manual_seed(5)
    b, q, d, k = 3, 5, 4, 4
    counts = [40, 9, 3, 1]
    feats = torch.nn.functional.normalize(torch.randn(2 * b + q, d, generator=g), dim=1)
    y = torch.tensor([0, 1, 3])
    labels = torch.cat((y, y, torch.tensor([0, 2, 1, 0, 3])))
    sup = torch.randn(2 * b, k, generator=g) * 2
    loss = PaCoLoss(num_classes=k, alpha=0.05, beta=1.0, gamma=gamma, temperature=0.2,
                    base_temperature=t_base, smooth=smooth,
                    class_counts=counts if with_prior else None)
    lp = ([math.log(c / sum(counts) + 1e-9) for c in counts] if with_prior else None)
    ref = reference_paco(feats.double(), labels.tolist(), sup.double(), 0.05, 1.0, gamma, 0.2,
                         1.0, smooth, lp, 0.2 if t_base is None else t_base)
    assert float(loss(feats, labels, sup)) == pytest.approx(ref, rel=1e-5)


def test_paco_loss_checks_shapes_and_settings():
    loss = PaCoLoss(num_classes=3)
    with pytest.raises(ValueError):
        loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 5))
    with pytest.raises(ConfigError):
        PaCoLoss(num_classes=3, temperature=0.0)
    with pytest.raises(ConfigError):
        PaCoLoss(num_classes=3, class_counts=[1, 2])


def test_head_and_queue():
    torch.manual_seed(0)
    head = PaCoHead(8, 5, projection_dim=3)
    logits, aux = head(torch.randn(4, 8))
    assert logits.shape == (4, 5)
    assert torch.allclose(aux["projection"].norm(dim=1), torch.ones(4), atol=1e-6)
    assert len([m for m in head.projection if isinstance(m, torch.nn.Linear)]) == 3

    queue = LabelledQueue(size=4, dim=2, num_classes=3, generator=torch.Generator().manual_seed(0))
    # starts as noise normalised along the queue axis (the reference's dim=0 quirk)
    assert torch.allclose(queue.features.norm(dim=0), torch.ones(2), atol=1e-6)
    k1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queue.enqueue(k1, torch.tensor([0, 1, 2]))
    queue.enqueue(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]), torch.tensor([2, 1]))  # wraps
    feats, labels = queue.contents()
    assert labels.tolist() == [1, 1, 2, 2] and int(queue.ptr) == 1
    assert torch.equal(feats[0], torch.tensor([0.0, -1.0])) and torch.equal(feats[3],
                                                                          torch.tensor([-1.0, 0.0]))

    q, k = torch.randn(2, 2), torch.randn(2, 2)
    f, lab, sup = paco_inputs(q, k, torch.tensor([1, 0]), torch.zeros(2, 3), torch.ones(2, 3), queue)
    assert f.shape == (8, 2) and lab.tolist() == [1, 0, 1, 0, 1, 1, 2, 2]
    assert sup.shape == (4, 3) and float(sup[2:].min()) == 1.0
    assert np.allclose(f[4:].numpy(), feats.numpy())
