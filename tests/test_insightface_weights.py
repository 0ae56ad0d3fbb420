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
