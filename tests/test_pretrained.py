"""Loading ImageNet ResNet weights from local files (facelt.models.pretrained)."""
from __future__ import annotations


import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import Bottleneck, ResNet

from facelt.errors import CheckpointError
from facelt.models.pretrained import load_pretrained_backbone


def _bottleneck_resnet() -> ResNet:
    """A small bottleneck ResNet (one block a stage): the ResNet-50/152 layout, cheap to build."""
    return ResNet(Bottleneck, [1, 1, 1, 1])


def _trunk(net: nn.Module) -> nn.Module:
    """A torchvision ResNet without its classifier (module names conv1, bn1, layer1..4)."""
    net.fc = nn.Identity()
    return net


@pytest.fixture(scope="module")
def source() -> nn.Module:
    torch.manual_seed(0)
    net = resnet18(weights=None)
    with torch.no_grad():                      # non-default BN statistics, so a copy is visible
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return net


def _assert_same_backbone(loaded: nn.Module, source: nn.Module) -> None:
    ref = {k: v for k, v in source.state_dict().items()
           if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    got = loaded.state_dict()
    assert ref.keys() <= got.keys()
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "model_module"])
def test_torchvision_format_variants(tmp_path, source, wrap):
    sd = source.state_dict()
    if wrap in ("module", "model_module"):
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap == "state_dict" else sd
    obj = {"model": obj} if wrap == "model_module" else obj
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(obj, path)
    backbone = _trunk(resnet18(weights=None))
    report = load_pretrained_backbone(backbone, path)
    _assert_same_backbone(backbone, source)
    assert report["format"] == "torchvision"
    assert report["dropped"] == ["fc.bias", "fc.weight"]
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["input"]["color"] == "RGB" and report["input"]["mean"] == [0.485, 0.456, 0.406]


def test_oltr_checkpoint_wrapping(tmp_path, source):
    feat = {"module." + k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "final_model_checkpoint.pth"
    torch.save({"state_dict_best": {"feat_model": feat, "classifier": {}}, "best_acc": 0.3}, path)
    backbone = _trunk(resnet18(weights=None))
    load_pretrained_backbone(backbone, path, fmt="torchvision")
    _assert_same_backbone(backbone, source)


def test_caffe_style_file(tmp_path, source):
    # The OLTR caffe_resnet152.pth layout: torchvision names, fc kept, no num_batches_tracked.
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "caffe_resnet18.pth"
    torch.save(sd, path)
    backbone = _trunk(resnet18(weights=None))
    report = load_pretrained_backbone(backbone, path)          # auto: 'caffe' in the file name
    _assert_same_backbone(backbone, source)
    assert report["format"] == "caffe" and report["missing"] == []
    assert report["dropped"] == ["fc.bias", "fc.weight"]
    # num_batches_tracked is absent from the file, so the backbone keeps its own (0)
    assert int(backbone.bn1.num_batches_tracked) == 0


def test_caffe_layout_moves_strides(tmp_path):
    torch.manual_seed(1)
    src = _bottleneck_resnet()
    path = tmp_path / "weights.pth"
    torch.save({k: v for k, v in src.state_dict().items() if "num_batches" not in k}, path)
    backbone = _trunk(_bottleneck_resnet())
    assert backbone.layer2[0].conv2.stride == (2, 2)                 # torchvision layout
    report = load_pretrained_backbone(backbone, path, fmt="caffe", caffe_layout=True)
    assert report["caffe_layout"] is True
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(backbone, name)[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert backbone.maxpool.padding == 0 and backbone.maxpool.ceil_mode
    assert torch.equal(backbone.layer3[0].conv2.weight, src.layer3[0].conv2.weight)
    # Caffe ResNet: 224 -> conv1 112 -> pool1 56 (ceil mode) -> 56, 28, 14, 7
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        assert x.shape[-1] == 56
        feat = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    assert feat.shape == (1, 2048, 7, 7)


def test_missing_file_names_path_and_source(tmp_path):
    path = tmp_path / "nowhere" / "resnet152-394f9c45.pth"
    with pytest.raises(CheckpointError) as err:
        load_pretrained_backbone(_trunk(resnet18(weights=None)), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "https://download.pytorch.org/models/resnet152-394f9c45.pth" in msg
    assert "OpenLongTailRecognition-OLTR" in msg


def test_wrong_shape_is_an_error(tmp_path, source):
    sd = dict(source.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight.*\(32, 64, 3, 3\).*"
                                              r"\(64, 64, 3, 3\)"):
        load_pretrained_backbone(_trunk(resnet18(weights=None)), path)


def test_missing_and_unexpected_keys(tmp_path, source):
    sd = dict(source.state_dict())
    del sd["layer4.1.bn2.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing key.*layer4\.1\.bn2\.weight.*"
                                              r"1 unexpected key.*layer5\.0\.conv1\.weight"):
        load_pretrained_backbone(_trunk(resnet18(weights=None)), path)
    backbone = _trunk(resnet18(weights=None))
    report = load_pretrained_backbone(backbone, path, strict=False)
    assert report["missing"] == ["layer4.1.bn2.weight"]
    assert report["unexpected"] == ["layer5.0.conv1.weight"]
    assert torch.equal(backbone.layer4[1].bn2.weight, torch.ones(512))   # left as initialised
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)


def test_depth_mismatch_is_an_error(tmp_path, source):
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError):
        load_pretrained_backbone(_trunk(_bottleneck_resnet()), path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "note": "nothing here"}, path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_pretrained_backbone(_trunk(resnet18(weights=None)), path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained_backbone(_trunk(resnet18(weights=None)), path)


def test_loads_into_facelt_backbone(tmp_path, source):
    backbones = pytest.importorskip("facelt.models.backbone_table")
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(source.state_dict(), path)
    backbone = backbones.build_backbone("resnet18")
    report = load_pretrained_backbone(backbone, path)
    assert report["missing"] == [] and report["unexpected"] == []
    _assert_same_backbone(backbone, source)
