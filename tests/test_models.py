"""OLTR model pieces against hand-computed cases, brute force and torchvision's own layouts."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from facelt.errors import ConfigError
from facelt.models.attention import ModulatedAttention, NonLocal, SpatialAttention
from facelt.models.backbone_table import build_backbone
from facelt.models.heads import (CosineHead, LinearHead, MarginHead, MetaEmbeddingHead,
                                 nearest_squared, squash)
from facelt.models.necks import FaceNeck, PoolNeck
from facelt.models.net import Body, OLTRNet, param_groups

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- backbones

@pytest.mark.parametrize("name,channels", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_resnet_returns_last_map_with_torchvision_names(name, channels):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    # 224 / 32 = 7: conv stride 2, max-pool, three stride-2 stages.
    assert out.shape == (1, channels, 7, 7)
    assert net.out_channels == channels
    reference = {"resnet10": torchvision.models.ResNet(torchvision.models.resnet.BasicBlock,
                                                       [1, 1, 1, 1]),
                 "resnet18": torchvision.models.resnet18(weights=None),
                 "resnet50": torchvision.models.resnet50(weights=None)}[name]
    tv = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in net.state_dict().items()} == tv


def test_resnet10_is_basicblock_1111():
    net = build_backbone("resnet10")
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert type(net.layer1[0]).__name__ == "BasicBlock"


def test_resnet152_has_torchvision_layout():
    net = build_backbone("resnet152")
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert net.out_channels == 2048


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_face_stem_gives_7x7_from_112(name):
    net = build_backbone(name, face_stem=True).eval()
    assert tuple(net.conv1.kernel_size) == (3, 3) and tuple(net.conv1.stride) == (1, 1)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 112, 112)).shape[2:] == (7, 7)


def test_in_channels_replaces_first_conv():
    net = build_backbone("resnet18", in_channels=1).eval()
    assert net.conv1.in_channels == 1
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, 512, 2, 2)


def test_small_cnn_on_mnist_sized_input():
    net = build_backbone("small_cnn", in_channels=1).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, net.out_channels, 7, 7)


def test_backbone_errors_name_the_problem():
    with pytest.raises(ConfigError, match="resnet10"):
        build_backbone("vgg16")
    with pytest.raises(ConfigError, match="face"):
        build_backbone("small_cnn", face_stem=True)


# ----------------------------------------------------------------------------- necks

def test_pool_neck_is_the_spatial_mean():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    neck = PoolNeck(3)
    # channel 0 of sample 0 holds 0, 1, 2, 3 -> mean 1.5; each next channel adds 4.
    assert torch.allclose(neck(x)[0], torch.tensor([1.5, 5.5, 9.5]))
    assert neck.out_dim == 3


def test_face_neck_order_and_shape():
    neck = FaceNeck(2, spatial=1, embedding_dim=1).eval()
    with torch.no_grad():
        neck.fc.weight.copy_(torch.tensor([[1.0, 2.0]]))
        neck.fc.bias.fill_(0.5)
        neck.bn1d.running_mean.fill_(1.0)
        neck.bn1d.running_var.fill_(4.0)
        out = neck(torch.tensor([[[[3.0]], [[-1.0]]]]))
    # eval BN2d with fresh stats is x / sqrt(1 + 2e-5); fc: 3 - 2 + 0.5 = 1.5 (times that factor);
    # BN1d: (z - 1) / sqrt(4 + 2e-5).
    s = 1 / math.sqrt(1 + 2e-5)
    expected = ((3 * s - 2 * s + 0.5) - 1.0) / math.sqrt(4 + 2e-5)
    assert out.shape == (1, 1) and out.item() == pytest.approx(expected, rel=1e-5)
    assert neck.out_dim == 1 and not neck.bn1d.weight.requires_grad


def test_face_neck_rejects_wrong_map_size():
    neck = FaceNeck(4, spatial=7)
    with pytest.raises(ConfigError, match="112x112"):
        neck(torch.randn(2, 4, 14, 14))


# ----------------------------------------------------------------------------- attention

@pytest.mark.parametrize("hw", [(7, 7), (4, 4)])
def test_modulated_attention_is_identity_at_init_and_trains_output_conv(hw):
    torch.manual_seed(0)
    att = ModulatedAttention(8, init="identity")
    x = torch.randn(2, 8, *hw)
    out = att(x)
    assert torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()
    grad = att.nonlocal_block.out.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("map_size", [None, 7])
def test_reference_attention_init_is_the_reference_resnet_loop(map_size):
    """The OLTR reference builds ModulatedAttLayer inside its ResNet, whose init loop then redraws
    every Conv2d weight from normal(0, sqrt(2 / n)), n = kernel_h * kernel_w * out_channels:
    theta / phi / g (1x1, C -> C/2): std sqrt(2 / (C/2)); the output conv (1x1, C/2 -> C): std
    sqrt(2 / C), not zero; conv biases stay 0 (the loop touches weights only), the spatial
    attention keeps PyTorch's default. So the attention is not the identity at start."""
    torch.manual_seed(3)
    c = 256
    att = ModulatedAttention(c, map_size=map_size)                     # the default: reference
    nl = att.nonlocal_block
    for conv, out_channels in ((nl.theta, c // 2), (nl.phi, c // 2), (nl.g, c // 2), (nl.out, c)):
        w = conv.weight.detach().double()
        want = math.sqrt(2.0 / (1 * 1 * out_channels))
        # sample std of N normals: relative standard error 1 / sqrt(2N) (< 0.4% here): 3% bound
        assert abs(w.std().item() / want - 1.0) < 0.03, (conv, w.std().item(), want)
        assert abs(w.mean().item()) < 4 * want / math.sqrt(w.numel())
    for conv in (nl.theta, nl.phi, nl.g):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    assert nl.out.bias is None
    # Kaiming fan-in (the layer's own init_weights) would give sqrt(2 / C) for theta: 0.088
    # against the reference's 0.125
    assert nl.theta.weight.std().item() > 1.3 * math.sqrt(2.0 / c)
    spatial = att.spatial.fc if map_size else att.spatial.score
    fan_in = spatial.weight[0].numel()
    assert spatial.weight.abs().max().item() <= 1.0 / math.sqrt(fan_in)  # PyTorch's default bound
    x = torch.randn(2, c, 7, 7)
    with torch.no_grad():
        assert (att(x) - x).abs().max().item() > 1e-3                   # not the identity
    ident = ModulatedAttention(c, map_size=map_size, init="identity")
    assert torch.equal(ident.nonlocal_block.out.weight, torch.zeros_like(nl.out.weight))
    with torch.no_grad():
        assert torch.equal(ident(x), x)
    with pytest.raises(ConfigError, match="attention init"):
        ModulatedAttention(c, init="zeros")


def test_spatial_attention_by_hand():
    sa = SpatialAttention(1)
    with torch.no_grad():
        sa.score.weight.fill_(1.0)
        sa.score.bias.zero_()
    x = torch.tensor([[[[0.0, math.log(3.0)]]]])          # one channel, 1 x 2 positions
    # softmax([0, ln 3]) = [1/4, 3/4]
    assert torch.allclose(sa(x), torch.tensor([[[[0.25, 0.75]]]]))
    y = sa(torch.randn(3, 1, 5, 6))
    assert y.shape == (3, 1, 5, 6) and torch.allclose(y.sum((1, 2, 3)), torch.ones(3))


def test_nonlocal_matches_per_position_formula():
    torch.manual_seed(1)
    nl = NonLocal(4, reduction=2)
    torch.nn.init.normal_(nl.out.weight)
    x = torch.randn(1, 4, 2, 3)
    pos = x[0].reshape(4, -1).t()                           # (6 positions, 4 channels)
    lin = lambda conv, z: z @ conv.weight.view(conv.out_channels, -1).t() + (
        conv.bias if conv.bias is not None else 0)
    th, ph, g = lin(nl.theta, pos), lin(nl.phi, pos), lin(nl.g, pos)
    expected = []
    for i in range(6):
        w = torch.softmax(torch.stack([th[i] @ ph[j] for j in range(6)]), 0)
        expected.append(lin(nl.out, sum(w[j] * g[j] for j in range(6))))
    expected = torch.stack(expected).t().reshape(1, 4, 2, 3)
    assert torch.allclose(nl(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------- heads

def test_squash_by_hand_and_safe_at_zero():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    y = squash(x)
    # ||[3, 4]|| = 5 -> (5/6) * [0.6, 0.8]
    assert torch.allclose(y[0], torch.tensor([0.5, 2.0 / 3.0]))
    assert torch.equal(y[1], torch.zeros(2))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_head_two_classes_by_hand():
    head = CosineHead(2, 2, scale=16.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # normalises to the identity
    logits, aux = head(torch.tensor([[3.0, 4.0]]))
    # 16 * (5/6) * [0.6, 0.8] = [8, 32/3]
    assert torch.allclose(logits, torch.tensor([[8.0, 32.0 / 3.0]]))
    assert aux == {}


def test_linear_head_interface():
    head = LinearHead(3, 5)
    logits, aux = head(torch.randn(4, 3))
    assert logits.shape == (4, 5) and aux == {}


CENTROIDS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])


def test_nearest_squared_by_hand():
    v = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    d2, idx = nearest_squared(v, CENTROIDS)
    dist = d2.sqrt()
    # [1,1]: sqrt2 to c0 (sqrt10 to c1, sqrt5 to c2); [3,0]: 1 to c1; [0,5]: 2 to c2.
    assert torch.allclose(dist, torch.tensor([math.sqrt(2), 1.0, 2.0]))
    assert idx.tolist() == [0, 1, 2]


def test_nearest_squared_vs_brute_force():
    torch.manual_seed(0)
    v, c = torch.randn(20, 8, dtype=torch.float64), torch.randn(50, 8, dtype=torch.float64)
    brute = torch.stack([torch.stack([(vi - ck).norm() for ck in c]) for vi in v])
    d2, idx = nearest_squared(v, c)
    dist = d2.sqrt()
    assert torch.allclose(dist, brute.min(1).values)
    assert torch.equal(idx, brute.argmin(1))


def _hand_meta_head() -> MetaEmbeddingHead:
    head = MetaEmbeddingHead(2, 3, reach_scale=10.0, cos_scale=16.0)
    with torch.no_grad():
        head.init_centroids(CENTROIDS)
        head.hallucinator.weight.zero_()
        head.hallucinator.bias.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))  # softmax 1/4,1/4,1/2
        head.selector.weight.zero_()
        head.selector.bias.copy_(torch.tensor([0.0, math.atanh(2.0 / 3.0)]))   # e = [0, 2/3]
        head.cosine.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return head


def test_meta_embedding_head_by_hand():
    head = _hand_meta_head()
    logits, aux = head(torch.tensor([[4.0, 2.0]]))
    # memory = 1/4 [0,0] + 1/4 [4,0] + 1/2 [0,3] = [1, 1.5]
    assert torch.allclose(aux["memory"], torch.tensor([[1.0, 1.5]]))
    assert torch.allclose(aux["selector"], torch.tensor([[0.0, 2.0 / 3.0]]))
    # nearest centroid of [4,2] is [4,0] at distance 2 -> reachability 10 / 2 = 5
    assert torch.allclose(aux["reachability"], torch.tensor([5.0]))
    assert aux["nearest"].tolist() == [1]
    # v + e * memory = [4, 2 + 1] = [4, 3]; v_meta = 5 * [4, 3] = [20, 15], norm 25
    assert torch.allclose(aux["meta"], torch.tensor([[20.0, 15.0]]))
    # squash = (25/26) [0.8, 0.6]; class weights [1,0], [0,1], [1,1]/sqrt2
    k = 16.0 * 25.0 / 26.0
    expected = torch.tensor([[k * 0.8, k * 0.6, k * 1.4 / math.sqrt(2.0)]])
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.equal(aux["direct"], torch.tensor([[4.0, 2.0]]))


def test_meta_embedding_head_guards_zero_distance_and_backprops():
    head = _hand_meta_head()
    v = torch.tensor([[4.0, 0.0], [1.0, 1.0]], requires_grad=True)   # first sits on centroid 1
    logits, aux = head(v)
    assert torch.isfinite(logits).all() and torch.isfinite(aux["reachability"]).all()
    logits.sum().backward()
    assert torch.isfinite(v.grad).all()
    # as in the reference, the head reads the centroids detached: only the centroid loss moves them
    assert head.centroids.grad is None
    assert head.hallucinator.weight.grad is not None and head.hallucinator.weight.grad.abs().sum() > 0


def test_meta_embedding_head_keeps_float32_distances_under_autocast():
    """fp16 would round a nearest distance of ~0.45 at feature norms ~20 to 0 (scale inf)."""
    torch.manual_seed(0)
    head = MetaEmbeddingHead(64, 50)
    c = torch.randn(50, 64) * 3.0
    head.init_centroids(c)
    v = c[:8] + 0.45 * torch.nn.functional.normalize(torch.randn(8, 64), dim=1)
    with torch.autocast("cpu", dtype=torch.float16):
        logits, aux = head(v)
    assert torch.isfinite(logits).all()
    # float32 expansion: ~1e-3 relative; float16 gives 0 or errors of order 1 here
    torch.testing.assert_close(aux["reachability"], torch.full((8,), 10.0 / 0.45), rtol=1e-2, atol=0)


def test_meta_embedding_head_rejects_wrong_centroid_shape():
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        MetaEmbeddingHead(2, 3).init_centroids(torch.zeros(4, 2))


def test_margin_heads_by_hand():
    theta = math.pi / 3
    v = torch.tensor([[math.cos(theta), math.sin(theta)]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    arc = MarginHead(2, 2, kind="arcface", s=64.0)
    cos = MarginHead(2, 2, kind="cosface", s=64.0)
    for head in (arc, cos):
        with torch.no_grad():
            head.weight.copy_(w)
    label = torch.tensor([0])
    # cos(theta) to class 0 = 0.5, to class 1 = sin(pi/3)
    plain, _ = arc(v)
    assert torch.allclose(plain, 64 * torch.tensor([[0.5, math.sin(theta)]]))
    arc_logits, _ = arc(v, label)
    assert torch.allclose(arc_logits, 64 * torch.tensor([[math.cos(theta + 0.5), math.sin(theta)]]),
                          atol=1e-4)
    cos_logits, _ = cos(v, label)
    assert torch.allclose(cos_logits, 64 * torch.tensor([[0.5 - 0.35, math.sin(theta)]]))


def test_arcface_fallback_past_pi():
    theta = 3.0                                              # theta + 0.5 > pi
    head = MarginHead(2, 1, kind="arcface", s=1.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
    v = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits, _ = head(v, torch.tensor([0]))
    # fallback: cos(theta) - sin(pi - m) * m
    assert logits.item() == pytest.approx(math.cos(theta) - math.sin(math.pi - 0.5) * 0.5, abs=1e-5)


# ----------------------------------------------------------------------------- net

def _tiny_net(meta: bool = True) -> OLTRNet:
    backbone = build_backbone("small_cnn", in_channels=1)
    neck = PoolNeck(backbone.out_channels)
    head = MetaEmbeddingHead(neck.out_dim, 5) if meta else LinearHead(neck.out_dim, 5)
    return OLTRNet(Body(backbone, neck, attention=ModulatedAttention(backbone.out_channels)), head)


def test_oltr_net_forward_and_embed():
    torch.manual_seed(0)
    net = _tiny_net().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = net(x)
        assert out["logits"].shape == (2, 5) and out["features"].shape == (2, 128)
        assert torch.equal(out["features"], net.embed(x))
        assert torch.equal(out["aux"]["direct"], out["features"])


def test_param_groups_partition_the_parameters():
    net = _tiny_net()
    groups = param_groups(net)
    assert set(groups) == {"backbone", "attention", "classifier", "centroids"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert len(groups["centroids"]) == 1 and groups["centroids"][0] is net.head.centroids
    assert {id(p) for p in groups["attention"]} == {id(p) for p in net.body.attention.parameters()}
    assert param_groups(_tiny_net(meta=False))["centroids"] == []


# ----------------------------------------------------------------------------- scale

def test_meta_head_at_identity_scale_never_holds_b_k_d():
    # B*K*d float32 at K=74,500, d=512, B=64 would be 9.8 GB; the head must stay far below that.
    script = textwrap.dedent("""
        import resource, torch
        from facelt.models.heads import MetaEmbeddingHead
        torch.manual_seed(0)
        K, d, B = 74500, 512, 64
        head = MetaEmbeddingHead(d, K)
        head.init_centroids(torch.randn(K, d))
        v = torch.randn(B, d, requires_grad=True)
        rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r0 = rss()
        logits, aux = head(v)
        r1 = rss()
        from facelt.losses import DiscCentroidLoss
        y = torch.randint(0, K, (B,))
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.01 * DiscCentroidLoss()(v, y, head.centroids)
        loss.backward()   # the stage-2 objective
        r2 = rss()
        assert logits.shape == (B, K) and torch.isfinite(head.centroids.grad).all()
        print(r1 - r0, r2 - r0)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    fwd, fwd_bwd = map(int, res.stdout.split())
    assert fwd < 1 << 30, f"forward grew RSS by {fwd / 2**20:.0f} MiB"
    # backward adds the K x d gradients of centroids, hallucinator and cosine weights (3 x 153 MB)
    assert fwd_bwd < 2 << 30, f"forward+backward grew RSS by {fwd_bwd / 2**20:.0f} MiB"
