"""The one table of backbones: name -> :class:`BackboneEntry` (a factory
``(in_channels, face_stem) -> trunk`` and what weights it loads).

``ModelConfig.backbone`` is a plain name; :func:`build_backbone` is the only place a backbone name
is interpreted, and it refuses a name that is not in :data:`BACKBONES` with the config key and the
known names (``facelt.models.components.check_component_names`` does the same for a whole config
before any long work).  A trunk returns the last ``(B, C, h, w)`` map and has ``out_channels``.

Adding a backbone: write its module (a trunk as above; ``backbones.py`` and ``iresnet.py`` are
examples) and add one entry here.  Nothing else names backbones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torchvision.models import resnet as tv_resnet

from facelt.config import check_name
from facelt.errors import ConfigError
from facelt.models.backbones import ResNetTrunk, resnet10, small_cnn
from facelt.models.iresnet import iresnet_trunk

BackboneFactory = Callable[[int, bool], nn.Module]


@dataclass(frozen=True)
class BackboneEntry:
    """One backbone: ``build(in_channels, face_stem)`` with random weights (it raises a
    ConfigError naming the key for a setting it cannot take), and whether an arcface_torch
    ``backbone.pth`` loads into it (``model.pretrained_format: insightface``)."""

    build: BackboneFactory
    insightface_weights: bool = False


def _resnet(make: Callable[[], tv_resnet.ResNet]) -> BackboneEntry:
    """A torchvision ResNet as a trunk (``face_stem``: insightface's stem for 112x112 faces)."""
    return BackboneEntry(lambda ch, stem: ResNetTrunk(make(), in_channels=ch, face_stem=stem))


def _iresnet(layers: list[int]) -> BackboneEntry:
    """insightface's IResNet with these stage depths (it always has its face stem)."""
    return BackboneEntry(lambda ch, stem: iresnet_trunk(layers, ch), insightface_weights=True)


BACKBONES: dict[str, BackboneEntry] = {
    "resnet10": _resnet(resnet10),
    "resnet18": _resnet(lambda: tv_resnet.resnet18(weights=None)),
    "resnet50": _resnet(lambda: tv_resnet.resnet50(weights=None)),
    "resnet152": _resnet(lambda: tv_resnet.resnet152(weights=None)),
    "small_cnn": BackboneEntry(small_cnn),
    "iresnet18": _iresnet([2, 2, 2, 2]),
    "iresnet34": _iresnet([3, 4, 6, 3]),
    "iresnet50": _iresnet([3, 4, 14, 3]),
    "iresnet100": _iresnet([3, 13, 30, 3]),
}


def check_backbone_name(name: str, key: str = "model.backbone", where: str = "") -> str:
    """``name`` when :data:`BACKBONES` has it, else a ConfigError naming ``key`` and the known
    backbones."""
    return check_name(name, BACKBONES, key, "backbone", where)


def backbone_entry(name: str, key: str = "model.backbone") -> BackboneEntry:
    """The table entry of backbone ``name`` (a ConfigError naming ``key`` when unknown)."""
    return BACKBONES[check_backbone_name(name, key)]


def build_backbone(name: str, in_channels: int = 3, face_stem: bool = False,
                   key: str = "model.backbone") -> nn.Module:
    """Backbone ``name`` with random weights. ``in_channels`` (``data.channels``) replaces the
    first convolution of a ResNet when it is not 3; ``face_stem`` (``model.face_stem``) swaps in
    the insightface stem so a 112x112 face gives a 7x7 map (ResNets)."""
    entry = backbone_entry(name, key)
    if in_channels < 1:
        raise ConfigError(f"data.channels: a backbone needs >= 1 input channel, got {in_channels}")
    return entry.build(in_channels, face_stem)


def insightface_backbones() -> list[str]:
    """The backbones an arcface_torch ``backbone.pth`` loads into."""
    return [name for name, entry in BACKBONES.items() if entry.insightface_weights]
