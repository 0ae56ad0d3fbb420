"""insightface's improved ResNet (IResNet) for 112x112 faces, as a feature-map trunk.

Structure (arcface_torch ``backbones/iresnet.py``, same parameter names so its checkpoints
load one to one):

* stem: conv3x3(3->64, stride 1) - BN - PReLU;
* four stages of :class:`IBasicBlock` (64, 128, 256, 512 channels), each stage's first block
  with stride 2 and a conv1x1(stride 2) + BN shortcut;
* IBasicBlock: BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the shortcut.

At 112x112 the output map is (B, 512, 7, 7).  arcface_torch's embedding layer (``bn2`` BN2d,
dropout, flatten, ``fc`` to 512, ``features`` BN1d) is the engine's neck, not part of this
module; :func:`load_insightface_backbone` maps those keys onto a neck.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from facelt.errors import CheckpointError, ConfigError
from facelt.models.state import diff_state

BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN (+ shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet trunk returning the last feature map; ``out_channels`` = 512."""

    out_channels = 512

    def __init__(self, layers: list[int]) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ConfigError(f"IResNet needs four positive stage depths, got {layers}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_stage(64, layers[0])
        self.layer2 = self._make_stage(128, layers[1])
        self.layer3 = self._make_stage(256, layers[2])
        self.layer4 = self._make_stage(512, layers[3])
        self._init_weights()

    def _make_stage(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=BN_EPS))
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: conv weights N(0, 0.1), BN weight 1 / bias 0
        # (PReLU keeps its 0.25 default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def iresnet_trunk(layers: list[int], in_channels: int = 3) -> IResNet:
    """An IResNet trunk with the given stage depths (no embedding head) for ``in_channels``-channel
    images; the named depths (``iresnet50``: [3, 4, 14, 3] ...) are entries of the backbone table
    (``facelt/models/backbone_table.py``).  It always has its face stem (3x3 stride-1 conv, no
    max-pool) and takes RGB only."""
    if in_channels != 3:
        raise ConfigError(f"data.channels: an IResNet backbone takes 3-channel (RGB) images, got "
                          f"data.channels = {in_channels}")
    return IResNet(layers)


# --------------------------------------------------------------------------- checkpoints

#: arcface_torch embedding-layer prefixes -> the kind of neck layer they load into.
NECK_PREFIXES: dict[str, type[nn.Module]] = {
    "bn2": nn.BatchNorm2d,      # BN over the 512 x 7 x 7 map, before flatten
    "fc": nn.Linear,            # 512*7*7 -> embedding size
    "features": nn.BatchNorm1d,  # BN over the embedding
}


@dataclass
class LoadReport:
    """What :func:`load_insightface_backbone` did: checkpoint key -> our key, and skipped keys."""

    mapping: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _neck_targets(neck: nn.Module) -> dict[str, str]:
    """Find the neck's single BN2d, Linear and BN1d; map arcface_torch prefixes to their names."""
    targets: dict[str, str] = {}
    for prefix, kind in NECK_PREFIXES.items():
        found = [name for name, m in neck.named_modules() if isinstance(m, kind)]
        if len(found) != 1:
            raise CheckpointError(
                f"the neck {type(neck).__name__} must hold exactly one {kind.__name__} to receive "
                f"arcface_torch's '{prefix}.*' weights, found {len(found)} ({found})")
        targets[prefix] = found[0]
    return targets


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"backbone weights {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- corrupt/unsafe pickle: the file's fault
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), as arcface_torch "
                              "saves backbone.pth")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_insightface_backbone(module: IResNet, path: str | os.PathLike,
                              neck: Optional[nn.Module] = None) -> LoadReport:
    """Load an arcface_torch ``backbone.pth`` into an IResNet trunk and, optionally, a neck.

    Trunk keys (``conv1``, ``bn1``, ``prelu``, ``layer1..4``) load under the same names.  The
    embedding layer's keys go to the neck: ``bn2.*`` -> its BatchNorm2d, ``fc.*`` -> its
    Linear, ``features.*`` -> its BatchNorm1d (found by type, so the neck's attribute names
    do not matter).  Without a neck those keys are skipped and listed in the report.  Missing
    or unexpected keys and shape mismatches raise :class:`CheckpointError` listing them.
    """
    state = _read_state_dict(path)
    targets = _neck_targets(neck) if neck is not None else {}
    trunk_expected = module.state_dict()
    neck_expected = neck.state_dict() if neck is not None else {}

    report = LoadReport()
    trunk_in: dict[str, torch.Tensor] = {}
    neck_in: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        prefix, _, rest = key.partition(".")
        if prefix in NECK_PREFIXES:
            if neck is None:
                report.skipped.append(key)
                continue
            name = f"{targets[prefix]}.{rest}" if targets[prefix] else rest
            neck_in[name] = tensor
            report.mapping[key] = f"neck.{name}"
        elif key in trunk_expected:
            trunk_in[key] = tensor
            report.mapping[key] = key
        else:
            unexpected.append(key)

    # BN step counters are bookkeeping only; older exports omit them and torch fills them in.
    opt = ("num_batches_tracked",)
    trunk = diff_state(trunk_expected, trunk_in, optional_suffixes=opt)
    necks = diff_state(neck_expected, neck_in, optional_suffixes=opt)
    missing = trunk.missing + [f"neck.{k}" for k in necks.missing]
    unexpected += [f"neck.{k}" for k in necks.unexpected]
    mismatched = trunk.mismatched + [f"neck.{m}" for m in necks.mismatched]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        raise CheckpointError(f"{path} does not fit {type(module).__name__}"
                              f"{' + ' + type(neck).__name__ if neck is not None else ''}: "
                              + "; ".join(parts))
    module.load_state_dict(trunk_in, strict=True)
    if neck is not None:
        neck.load_state_dict(neck_in, strict=True)
    return report
