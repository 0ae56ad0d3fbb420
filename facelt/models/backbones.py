"""Convolutional backbones that return the last feature map: torchvision-layout ResNet trunks
and a small CNN (insightface's IResNet is in ``iresnet.py``; the names are in
``backbone_table.py``).

Every backbone's ``forward`` returns a ``(B, C, h, w)`` map (no pooling, no fc) and the module has
an ``out_channels`` attribute.  The ResNets keep torchvision's module names (``conv1``, ``bn1``,
``layer1`` .. ``layer4``) so a torchvision or converted state dict loads into them once its
``fc.*`` keys are dropped.  Weights are never downloaded.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from facelt.errors import ConfigError


def resnet10() -> tv_resnet.ResNet:
    """ResNet-10: BasicBlock [1, 1, 1, 1], the OLTR reference backbone for ImageNet-LT."""
    return tv_resnet.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1])


def _init_like_torchvision(module: nn.Module) -> None:
    """Kaiming-normal convolutions and unit/zero batch norms, as torchvision's ResNet does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``: image -> last stage's feature map."""

    def __init__(self, net: tv_resnet.ResNet, in_channels: int = 3, face_stem: bool = False) -> None:
        super().__init__()
        if face_stem:
            # insightface-style stem for 112x112 faces: 3x3 conv stride 1, no max-pool, and the
            # first stage downsamples, so 112 -> 56 -> 28 -> 14 -> 7.
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
            block = type(net.layer1[0])
            net.inplanes = 64
            net.layer1 = net._make_layer(block, 64, len(net.layer1), stride=2)
            _init_like_torchvision(net.conv1)
            _init_like_torchvision(net.layer1)
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            _init_like_torchvision(net.conv1)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        last = net.layer4[-1]
        self.out_channels: int = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class SmallCNN(nn.Module):
    """Three conv-bn-relu blocks for 28x28 grayscale digits: 28 -> 14 -> 7, 128 channels."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.features = nn.Sequential(*layers)
        self.out_channels: int = widths[-1]
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def small_cnn(in_channels: int, face_stem: bool = False) -> SmallCNN:
    """:class:`SmallCNN` (it has no face stem: ``model.face_stem`` is refused)."""
    if face_stem:
        raise ConfigError("model.face_stem: backbone 'small_cnn' has no face stem; face_stem "
                          "needs a ResNet backbone")
    return SmallCNN(in_channels)
