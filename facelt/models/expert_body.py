"""The multi-expert trunk of RIDE (Wang et al., ICLR 2021) over any backbone of the table that can
be split: one shared early part, then ``E`` copies of its later stages, each with its own fresh
weights (frank-xwang/RIDE-LongTailRecognition ``model/fb_resnets/RIDEResNeXt.py`` shares the stem,
``layer1`` and ``layer2`` and gives every expert its own ``layer3`` and ``layer4``).

:class:`ExpertTrunk` returns the experts' last maps side by side along the channels,
``(B, E * C, h, w)``, so the ``pool`` neck gives ``v = [v_1, ..., v_E]`` (each expert's pooled
feature, in order) and the ``ride`` head (:class:`facelt.models.expert_head.MultiExpertHead`)
gives each expert its classifier on its own slice. The split points (:func:`split_trunk`): a
torchvision-layout ResNet after ``layer2`` (as the reference), the small CNN before its last
conv-bn-relu block.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from facelt.errors import ConfigError
from facelt.models.backbones import ResNetTrunk, SmallCNN
from facelt.models.multi_expert import init_like_reference


def split_trunk(trunk: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(shared early part, later stages)`` of a backbone trunk (a ConfigError naming the key for
    a backbone that has no split point)."""
    if isinstance(trunk, ResNetTrunk):
        shared = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1,
                               trunk.layer2)
        return shared, nn.Sequential(trunk.layer3, trunk.layer4)
    if isinstance(trunk, SmallCNN):
        blocks = list(trunk.features.children())
        return nn.Sequential(*blocks[:-3]), nn.Sequential(*blocks[-3:])
    raise ConfigError(f"stageN.experts > 1: backbone {type(trunk).__name__} has no split into a "
                      f"shared part and expert stages (ResNets and small_cnn have)")


class ExpertTrunk(nn.Module):
    """``shared`` then each expert's later stages; the experts' maps concatenated on channels."""

    def __init__(self, trunk: nn.Module, experts: int) -> None:
        super().__init__()
        if experts < 2:
            raise ConfigError(f"a multi-expert trunk needs at least 2 experts, got {experts}")
        self.shared, later = split_trunk(trunk)
        copies = []
        for _ in range(experts):
            c = copy.deepcopy(later)
            init_like_reference(c)  # every expert its own draw
            copies.append(c)
        self.experts = nn.ModuleList(copies)
        self.expert_channels: int = int(trunk.out_channels)
        self.out_channels: int = self.expert_channels * experts

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shared(x)
        return torch.cat([e(s) for e in self.experts], dim=1)
