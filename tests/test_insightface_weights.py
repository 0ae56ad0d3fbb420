"""arcface_torch backbone.pth reaches the engine: model.pretrained_format: insightface, to fine-tune
(the trainer's stage 1) or to evaluate (``--config`` on verify)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from facelt.cli import main
from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.models.build import build_net, load_pretrained_weights, net_from_config

ROOT = Path(__file__).resolve().parents[1]


def recipe(tmp_path: Path, weights: Path, backbone: str = "iresnet18") -> Path:
    cfg = {"data": {"format": "rec", "image_size": 112, "channels": 3},
           "model": {"backbone": backbone, "neck": "face", "embedding_dim": 8,
                     "pretrained": str(weights), "pretrained_format": "insightface"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def arcface_torch_file(tmp_path_factory):
    """A backbone.pth in arcface_torch's names: trunk keys as they are, the embedding layer as
    bn2 (BN2d), fc (Linear) and features (BN1d); the source net is returned for comparison."""
    tmp = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    cfg = load_config(recipe(tmp, tmp / "unused.pth"))
    src = build_net(cfg, 1, 3).eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in src.body.backbone.state_dict().items()}
    names = {"bn2d": "bn2", "fc": "fc", "bn1d": "features"}
    for k, v in src.body.neck.state_dict().items():
        mod, _, rest = k.partition(".")
        state[f"{names[mod]}.{rest}"] = v
    path = tmp / "backbone.pth"
    torch.save(state, path)
    return path, src


def test_insightface_weights_load_into_trunk_and_neck(arcface_torch_file, tmp_path):
    path, src = arcface_torch_file
    net = net_from_config(load_config(recipe(tmp_path, path)))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(net.embed(x), src.embed(x))
    bad = load_config(recipe(tmp_path, path, backbone="resnet18"))
    with pytest.raises(ConfigError, match="iresnet"):
        load_pretrained_weights(build_net(bad, 1, 3), bad)


@pytest.mark.slow  # an IResNet-18 over 20 images and their mirrors on the CPU (~10 s)
def test_verify_evaluates_pretrained_weights(arcface_torch_file, tmp_path, capsys):
    path, src = arcface_torch_file
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    bins = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in imgs]
    issame = [i % 2 == 0 for i in range(10)]
    b = tmp_path / "s.bin"
    b.write_bytes(pickle.dumps((bins, issame)))
    assert main(["verify", "--bin", str(b), "--config", str(recipe(tmp_path, path)), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    x = torch.from_numpy(imgs.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        feats = (src.embed(x) + src.embed(torch.flip(x, dims=[3]))).numpy()
    from facelt.faces.verification import verification_metrics
    want = verification_metrics(feats, np.array(issame))
    assert got["accuracy"] == pytest.approx(want["accuracy"])
    assert got["threshold"] == pytest.approx(want["threshold"])


# ----------------------------------------------------------------- arcface_torch's own forward
def arcface_torch_forward(state: dict, x: torch.Tensor, layers=(2, 2, 2, 2)) -> torch.Tensor:
    """arcface_torch's ``IResNet.forward`` (recognition/arcface_torch/backbones/iresnet.py),
    written out functionally from its source, in eval mode: EVERY BatchNorm there has
    ``eps=1e-05`` (stem ``bn1``, the blocks' ``bn1``/``bn2``/``bn3``, the downsample BN, the
    embedding layer's ``bn2`` and ``features``). Block: bn1 - conv3x3 - bn2 - PReLU -
    conv3x3(stride) - bn3 (+ downsample(x) = conv1x1(stride) - BN); each stage's first block has
    stride 2; then bn2 - flatten - dropout - fc - features."""
    import torch.nn.functional as F
    eps = 1e-05

    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"],
                            state[f"{p}.weight"], state[f"{p}.bias"], training=False, eps=eps)

    x = F.prelu(bn(F.conv2d(x, state["conv1.weight"], stride=1, padding=1), "bn1"),
                state["prelu.weight"])
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if b == 0 else 1
            out = F.conv2d(bn(x, f"{p}.bn1"), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), state[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1),
                     f"{p}.bn3")
            identity = x
            if b == 0:
                identity = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride),
                              f"{p}.downsample.1")
            x = out + identity
    x = torch.flatten(bn(x, "bn2"), 1)
    x = F.linear(x, state["fc.weight"], state["fc.bias"])
    return bn(x, "features")


def test_arcface_torch_weights_embed_as_arcface_torch_does(tmp_path):
    """issue 19 item 8: a backbone.pth with trained-looking BN statistics (the embedding layer's
    running variances 1e-4 .. 1e-3, where eps matters) embeds to arcface_torch's own forward to
    1e-6 (float64): the neck takes arcface_torch's eps 1e-5, not MXNet's 2e-5 (which was 4.7%
    off here). A net rebuilt from its config (what a checkpoint does) keeps that eps; the MXNet
    convention stays the default without insightface weights, and ``model.neck_bn_eps`` sets it."""
    from facelt.models.build import face_neck_eps
    torch.manual_seed(7)
    cfg = load_config(recipe(tmp_path, tmp_path / "unused.pth"))
    shapes = build_net(cfg, 1, 3).body
    state = {}
    for k, v in shapes.backbone.state_dict().items():
        state[k] = v
    names = {"bn2d": "bn2", "fc": "fc", "bn1d": "features"}
    for k, v in shapes.neck.state_dict().items():
        mod, _, rest = k.partition(".")
        state[f"{names[mod]}.{rest}"] = v
    g = torch.Generator().manual_seed(3)
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        v = v.double()
        if k.endswith("running_var"):
            small = k.startswith(("bn2.", "features."))
            lo, hi = (1e-4, 1e-3) if small else (0.3, 1.5)
            v = lo + (hi - lo) * torch.rand(v.shape, generator=g, dtype=torch.float64)
        elif k.endswith("running_mean") or k.endswith("bias"):
            v = 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        elif k.endswith("prelu.weight"):
            v = 0.25 + 0.05 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        elif v.dim() == 1:                                            # BN weights
            v = 0.8 + 0.4 * torch.rand(v.shape, generator=g, dtype=torch.float64)
        else:                                                         # conv / fc weights
            fan_in = v[0].numel()
            v = torch.randn(v.shape, generator=g, dtype=torch.float64) / fan_in ** 0.5
        state[k] = v
    state["features.weight"] = torch.ones_like(state["features.weight"])  # fixed at 1 there
    path = tmp_path / "backbone.pth"
    torch.save({k: v.float() for k, v in state.items()}, path)
    net = net_from_config(cfg_with(tmp_path, path)).double()
    x = torch.rand(2, 3, 112, 112, generator=g, dtype=torch.float64) * 2 - 1
    loaded = torch.load(path, weights_only=True)
    want = arcface_torch_forward({k: v.double() for k, v in loaded.items()}, x)
    with torch.no_grad():
        got = net.embed(x)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-6, err
    rebuilt = build_net(cfg_with(tmp_path, path), 1, 3)
    assert rebuilt.body.neck.bn2d.eps == rebuilt.body.neck.bn1d.eps == 1e-5
    assert all(m.eps == 1e-5 for m in rebuilt.body.backbone.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    plain = load_config(None, base={"model": {"backbone": "iresnet18", "neck": "face"},
                                    "data": {"image_size": 112}})
    assert face_neck_eps(plain) == 2e-5
    plain.model.neck_bn_eps = 3e-5
    assert build_net(plain, 1, 3).body.neck.bn1d.eps == 3e-5
    # a checkpoint saved before the key existed was trained with 2e-5 and keeps it
    from facelt.config import config_from_dict, upgrade_saved_config
    old = {"model": {"backbone": "iresnet18", "neck": "face", "pretrained_format": "insightface"}}
    assert config_from_dict(upgrade_saved_config(old)).model.neck_bn_eps == 2e-5


def cfg_with(tmp_path: Path, weights: Path):
    return load_config(recipe(tmp_path, weights))
