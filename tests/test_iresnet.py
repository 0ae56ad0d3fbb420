"""insightface IResNet trunks and loading arcface_torch ``backbone.pth`` files."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from facelt.errors import CheckpointError, ConfigError
from facelt.models.backbone_table import build_backbone
from facelt.models.iresnet import load_insightface_backbone

# Published parameter counts of the full recognition networks (trunk + BN2d-FC-BN1d 512-d head):
# * iresnet50: ~43.6M, the figure quoted for insightface's R50 (arcface_torch model zoo);
# * LResNet34E-IR 34.129M and LResNet100E-IR 65.132M: "MParams" in OpenVINO's Open Model Zoo
#   pages face-recognition-resnet34-arcface / face-recognition-resnet100-arcface-onnx (the
#   MXNet originals of iresnet34 / iresnet100).
PUBLISHED_MPARAMS = {"iresnet50": 43.6, "iresnet34": 34.129, "iresnet100": 65.132}


def embedding_head() -> nn.Module:
    """arcface_torch's embedding layer, written here with its sizes: 512*7*7 -> 512."""
    return nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.0), nn.Flatten(),
                         nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_iresnet50_output_map_shape():
    torch.manual_seed(0)
    net = build_backbone("iresnet50").eval()
    assert net.out_channels == 512
    with torch.no_grad():
        y = net(torch.randn(2, 3, 112, 112))
    assert y.shape == (2, 512, 7, 7)
    assert torch.isfinite(y).all()


def test_stage_depths_and_strides():
    # [3, 4, 14, 3] for 50 and [3, 13, 30, 3] for 100; 112 -> 56 -> 28 -> 14 -> 7.
    for name, depths in (("iresnet50", [3, 4, 14, 3]), ("iresnet100", [3, 13, 30, 3]),
                         ("iresnet18", [2, 2, 2, 2]), ("iresnet34", [3, 4, 6, 3])):
        net = build_backbone(name)
        assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == depths
    net = build_backbone("iresnet18").eval()
    sizes = []
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        x = net.prelu(net.bn1(net.conv1(x)))
        sizes.append(tuple(x.shape[1:]))
        for i in range(1, 5):
            x = getattr(net, f"layer{i}")(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def test_block_layout_is_bn_conv_bn_prelu_conv_bn():
    block = build_backbone("iresnet18").layer2[0]
    kinds = [type(m).__name__ for m in block.children()]
    assert kinds[:6] == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d"]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride in conv2
    assert block.downsample[0].kernel_size == (1, 1) and block.downsample[0].stride == (2, 2)
    assert block.prelu.weight.numel() == 128  # channel-wise PReLU
    assert build_backbone("iresnet18").layer2[1].downsample is None


@pytest.mark.parametrize("name", ["iresnet50", "iresnet34", "iresnet100"])
def test_parameter_count_matches_published(name):
    total = n_params(build_backbone(name)) + n_params(embedding_head())
    published = PUBLISHED_MPARAMS[name] * 1e6
    tolerance = 0.002 if name == "iresnet50" else 0.001  # 43.6 is given to 3 digits
    assert abs(total - published) / published < tolerance, total


def test_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="iresnet50"):
        build_backbone("iresnet51")


# ----------------------------------------------------------------------------- checkpoints


def arcface_torch_keys(layers: list[int], emb: int = 512) -> dict[str, tuple[int, ...]]:
    """Key -> shape of arcface_torch's IResNet state dict, written out from its naming scheme."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    shapes["prelu.weight"] = (64,)
    cin = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            bn(f"{p}.bn1", cin)
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.prelu.weight"] = (planes,)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if j == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    bn("bn2", 512)
    shapes["fc.weight"] = (emb, 512 * 7 * 7)
    shapes["fc.bias"] = (emb,)
    bn("features", emb)
    return shapes


class OtherNeck(nn.Module):
    """A neck with its own attribute names, as the engine's FaceNeck may choose them."""

    def __init__(self) -> None:
        super().__init__()
        self.map_bn = nn.BatchNorm2d(512)
        self.drop = nn.Dropout(0.0)
        self.proj = nn.Linear(512 * 7 * 7, 512)
        self.emb_bn = nn.BatchNorm1d(512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb_bn(self.proj(torch.flatten(self.drop(self.map_bn(x)), 1)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in arcface_torch_keys([2, 2, 2, 2]).items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[k] = torch.randn(shape, generator=gen)
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pth"
    torch.save(state, path)
    return path, state


def test_load_trunk_and_neck(checkpoint):
    path, state = checkpoint
    net, neck = build_backbone("iresnet18"), OtherNeck()
    report = load_insightface_backbone(net, path, neck=neck)
    assert not report.skipped
    assert report.mapping["fc.weight"] == "neck.proj.weight"
    assert report.mapping["bn2.running_var"] == "neck.map_bn.running_var"
    assert report.mapping["features.bias"] == "neck.emb_bn.bias"
    assert report.mapping["layer3.0.downsample.1.weight"] == "layer3.0.downsample.1.weight"
    assert len(report.mapping) == len(state)
    own = net.state_dict()
    for k in ("conv1.weight", "layer4.1.bn3.running_mean", "layer2.0.downsample.0.weight",
              "prelu.weight", "layer1.1.prelu.weight"):
        assert torch.equal(own[k], state[k])
    assert torch.equal(neck.proj.weight, state["fc.weight"])
    assert torch.equal(neck.map_bn.running_var, state["bn2.running_var"])
    assert torch.equal(neck.emb_bn.weight, state["features.weight"])


def test_load_trunk_only_skips_the_embedding_keys(checkpoint):
    path, _state = checkpoint
    report = load_insightface_backbone(build_backbone("iresnet18"), path)
    assert sorted({k.split(".")[0] for k in report.skipped}) == ["bn2", "fc", "features"]
    assert len(report.skipped) == 5 + 2 + 5


def test_ddp_prefix_and_wrapped_state_dict(tmp_path, checkpoint):
    _path, state = checkpoint
    f = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, f)
    net = build_backbone("iresnet18")
    load_insightface_backbone(net, f)
    assert torch.equal(net.state_dict()["conv1.weight"], state["conv1.weight"])


def test_mismatches_list_the_keys(tmp_path, checkpoint):
    _path, state = checkpoint
    broken = dict(state)
    del broken["layer2.1.conv2.weight"]
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    broken["fc.weight"] = torch.zeros(512, 512)
    f = tmp_path / "broken.pth"
    torch.save(broken, f)
    with pytest.raises(CheckpointError) as err:
        load_insightface_backbone(build_backbone("iresnet18"), f, neck=OtherNeck())
    msg = str(err.value)
    assert "missing keys (1): ['layer2.1.conv2.weight']" in msg
    assert "unexpected keys (1): ['layer5.0.conv1.weight']" in msg
    assert "neck.proj.weight: file (512, 512) vs model (512, 25088)" in msg
    # A deeper network than the file: the missing blocks are named.
    with pytest.raises(CheckpointError, match=r"layer3\.2\.conv1\.weight"):
        load_insightface_backbone(build_backbone("iresnet34"), checkpoint[0])


def test_bad_files_and_necks(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="not found"):
        load_insightface_backbone(build_backbone("iresnet18"), tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_insightface_backbone(build_backbone("iresnet18"), junk)
    with pytest.raises(CheckpointError, match="exactly one Linear"):
        load_insightface_backbone(build_backbone("iresnet18"), checkpoint[0],
                                  neck=nn.Sequential(nn.BatchNorm2d(512), nn.BatchNorm1d(512)))


def test_load_into_the_engines_face_neck(checkpoint):
    necks = pytest.importorskip("facelt.models.necks", reason="the engine's necks module is absent")
    path, state = checkpoint
    neck = necks.FaceNeck(512, 7, embedding_dim=512)
    report = load_insightface_backbone(build_backbone("iresnet18"), path, neck=neck)
    # bn2 -> the BN2d, fc -> the Linear, features -> the BN1d, whatever the neck calls them.
    targets = {k.split(".")[0]: v.split(".")[1] for k, v in report.mapping.items()
               if k.split(".")[0] in ("bn2", "fc", "features")}
    assert targets == {"bn2": "bn2d", "fc": "fc", "features": "bn1d"}
    assert torch.equal(neck.fc.weight, state["fc.weight"])
