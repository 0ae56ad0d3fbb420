"""RIDE (frank-xwang/RIDE-LongTailRecognition): diversity temperatures, the RIDE loss and its
stop-gradient, the multi-expert network and the expert router."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.losses.reweighting import effective_number_weights
from facelt.losses.ride import RIDELoss, ride_temperature_weights
from facelt.models.multi_expert import (ExpertRouter, build_ride_resnet, make_resnet_stage,
                                        router_targets)
from facelt.openset.posthoc import msp

COUNTS = [100, 10, 1]


def test_temperature_weights_by_hand():
    # pi = [100, 10, 1] / 111 = [0.900901, 0.090090, 0.009009]; f = 0.05, K = 3:
    # K pi f + 1 - f = [1.085135, 0.963514, 0.951351]; / max -> [1, 0.887920, 0.876712]
    v = ride_temperature_weights(COUNTS, 0.05)
    assert np.allclose(v.numpy(), [1.0, 0.887920, 0.876712], atol=1e-6)
    # the loss's mean temperature after the deferral: T_base * mean(v) = 0.921544
    loss = RIDELoss(COUNTS, defer_epoch=0, reweight_factor=0.05)
    assert loss.temperatures()[1] == pytest.approx(0.921544, abs=1e-6)
    assert RIDELoss(COUNTS, defer_epoch=5).temperatures() == (1.0, 1.0)


def reference_ride(z, labels, counts, epoch, defer, s=30.0, max_m=0.5, div=-0.2, t_base=1.0,
                   f=0.05, base_factor=1.0):
    """RIDELoss.forward re-derived in float64 torch ops (so autograd gives its gradient): for
    each expert LDAM-DRW CE + div * T_mean^2 * KL(softmax(mean/T) || softmax(z_e/T)), the
    target built from numbers that carry no gradient."""
    n = np.asarray(counts, dtype=np.float64)
    m = n ** -0.25
    m = m * max_m / m.max()
    on = defer >= 0 and epoch >= defer
    w = effective_number_weights(counts, 0.9999).double().numpy() if on else np.ones(n.size)
    if on:
        prior = n / n.sum()
        v = n.size * prior * f + 1 - f
        temps = t_base * v / v.max()
    else:
        temps = np.full(n.size, t_base)
    t_mean = temps.mean()
    mean = z.detach().mean(0)
    total = 0
    for e in range(z.shape[0]):
        src = mean if div == 0 else z[e]
        num = den = 0
        for i in range(z.shape[1]):
            y = int(labels[i])
            row = torch.stack([src[i, k] - (s * m[k] if k == y else 0.0) for k in range(n.size)])
            num = num + w[y] * (torch.logsumexp(row, 0) - row[y])
            den += w[y]
        kl = 0
        for i in range(z.shape[1]):
            q = torch.log_softmax(torch.stack([z[e, i, k] / temps[k] for k in range(n.size)]), 0)
            p = [float(v) for v in torch.softmax(torch.tensor(
                [float(mean[i, k]) / temps[k] for k in range(n.size)], dtype=torch.float64), 0)]
            kl = kl + sum(p[k] * (math.log(p[k]) - q[k]) for k in range(n.size))
        total = total + base_factor * num / den + div * t_mean ** 2 * kl / z.shape[1]
    return total


@pytest.mark.parametrize("epoch", [0, 3])
def test_ride_loss_and_gradient_match_the_reference_formula(epoch):
    g = torch.Generator().manual_seed(3)
    counts = [50, 20, 6, 2]
    # s * cosines with s = 3 here, so the softmaxes are far from one-hot and the gradient is large
    z = (torch.rand(3, 6, 4, generator=g, dtype=torch.float64) * 2 - 1) * 3
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = RIDELoss(counts, defer_epoch=3, reweight_factor=0.05)
    loss.set_epoch(epoch)
    mine = z.clone().requires_grad_(True)
    got = loss(mine, labels)
    got.backward()
    ref_z = z.clone().requires_grad_(True)
    ref = reference_ride(ref_z, labels, counts, epoch, 3)
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    # the reference holds the KL's target softmax(mean / T) constant; summed over the experts
    # that changes nothing: with p = softmax(mean / T), sum_e (log p - log q_e) is the same for
    # every class (lse terms only), and the softmax Jacobian maps a constant vector to 0
    assert torch.allclose(mine.grad.double(), ref_z.grad, atol=1e-5)


def test_zero_diversity_factor_uses_the_mean_logits_for_every_expert():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 10
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = RIDELoss(COUNTS, diversity_factor=0.0)(z, labels)
    ref = reference_ride(z, labels, COUNTS, 0, -1, div=0.0)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_multi_expert_network_shape_and_mean_logits():
    torch.manual_seed(0)
    net = build_ride_resnet("resnet10", num_classes=5, num_experts=3)
    assert net.num_experts == 3 and net.shared.out_channels == 128
    assert all(e.out_dim == 384 for e in net.experts)          # reduce_dimension: 384 planes
    # the experts' later stages are separate modules, the early part is one
    p0 = dict(net.experts[0].named_parameters())
    p1 = dict(net.experts[1].named_parameters())
    assert all(p0[k] is not p1[k] and not torch.equal(p0[k], p1[k])
               for k in p0 if k.endswith("conv1.weight"))
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    out = net(x)
    assert out["expert_logits"].shape == (3, 4, 5) and out["features"].shape == (4, 3 * 384)
    assert torch.allclose(out["logits"], out["expert_logits"].mean(0))
    assert out["expert_logits"].abs().max() <= 30.0 + 1e-4      # s * cosine
    assert msp(out["logits"].detach().numpy()).shape == (4,)


def test_resnext_expert_stage_widths():
    # ResNeXt-50 32x4d with reduce_dimension: layer3 planes 192 -> grouped width 192*4/64*32 = 384,
    # output 192 * 4 = 768 channels; layer4 planes 384 -> 1536 output channels (the feature size)
    from torchvision.models.resnet import Bottleneck
    l3 = make_resnet_stage(Bottleneck, 512, 192, 6, 2, groups=32, base_width=4)
    assert l3[0].conv2.groups == 32 and l3[0].conv2.out_channels == 384
    assert l3[-1].bn3.num_features == 768
    l4 = make_resnet_stage(Bottleneck, 768, 384, 3, 2, groups=32, base_width=4)
    assert l4[-1].bn3.num_features == 1536


def test_router_targets_by_hand():
    # 3 experts, 4 samples, 2 classes, label 0 for all.  Cumulative sums per expert:
    # sample 0: expert 0 right                       -> no decision sends on
    # sample 1: e0 wrong, e0+e1 right                -> decision 0 sends on, decision 1 does not
    # sample 2: e0 wrong, e0+e1 wrong, all 3 right   -> both send on
    # sample 3: never right                          -> neither
    z = torch.tensor([
        [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 5.0]],
        [[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]],
        [[0.0, 0.0], [0.0, 0.0], [9.0, 0.0], [0.0, 5.0]],
    ])
    labels = torch.zeros(4, dtype=torch.long)
    assert router_targets(z, labels).tolist() == [[False, False], [True, False], [True, True],
                                                 [False, False]]


def test_router_loss_is_the_mean_weighted_bce():
    torch.manual_seed(1)
    router = ExpertRouter(feature_dim=6, num_experts=3, top_k=2, pos_weight=100.0)
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(3, 4, 6, generator=g)
    z = torch.randn(3, 4, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    targets = router_targets(z, labels).double()
    assert 0 < targets.sum() < targets.numel()          # both kinds of target, so pos_weight counts
    total = 0.0
    for i in range(2):
        running = z[: i + 1].sum(0) / (i + 1)
        logit = router.help_logit(i, feats[i], running).detach().double()
        for b in range(4):
            t, x = float(targets[b, i]), float(logit[b])
            sig = 1 / (1 + math.exp(-x))
            total += -(100.0 * t * math.log(sig) + (1 - t) * math.log(1 - sig)) / 4
    assert router.loss(feats, z, labels).item() == pytest.approx(total / 2, rel=1e-5)


def test_routed_forward_uses_all_or_one_expert():
    torch.manual_seed(2)
    net = build_ride_resnet("resnet10", num_classes=4, num_experts=3).eval()
    router = ExpertRouter(384, 3, top_k=2)
    x = torch.randn(5, 3, 32, 32)
    full = net(x)
    with torch.no_grad():
        router.fc.weight.zero_()
        router.fc.bias.fill_(50.0)              # always "needed": every expert
    logits, used = net.routed_forward(x, router)
    assert used.tolist() == [3] * 5 and torch.allclose(logits, full["logits"], atol=1e-5)
    with torch.no_grad():
        router.fc.bias.fill_(-50.0)             # never needed: expert 0 alone
    logits, used = net.routed_forward(x, router)
    assert used.tolist() == [1] * 5 and torch.allclose(logits, full["expert_logits"][0], atol=1e-5)
