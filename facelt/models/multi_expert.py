"""RIDE's multi-expert network and its optional expert router (Wang et al., ICLR 2021;
frank-xwang/RIDE-LongTailRecognition ``model/fb_resnets/RIDEResNeXt.py``, ``RIDEResNet.py``,
``EAResNeXt.py``).

**Network** (:class:`MultiExpertNet`): one shared early part (stem, ``layer1``, ``layer2``), then E
experts, each its own later stages (``layer3``, ``layer4``), global average pooling and its own
classifier. The output is the experts' mean logits; the per-expert logits and pooled features come
with it (the RIDE loss and the router need them)::

    out = {"logits": mean_e z_e (B, K), "expert_logits": (E, B, K),
           "expert_features": (E, B, d), "features": concat_e v_e (B, E d)}

:func:`build_ride_resnet` builds the reference's shape from a ResNet / ResNeXt depth: with
``reduce_dimension`` (every ImageNet-LT config) the experts' ``layer3`` / ``layer4`` have 192 / 384
planes instead of 256 / 512, and the classifiers are normalised linear layers times ``s = 30``
(``use_norm``). Convolutions start Kaiming-normal (fan out), batch norms at 1 / 0, as the reference.
Open-set scores (max softmax, energy, max-logit: :mod:`facelt.openset.posthoc`) are taken from
the mean logits.

**Router** (:class:`ExpertRouter`, the reference's "expert assignment" module, trained in a
separate short stage with everything else frozen): before consulting expert ``i + 1`` the router
decides from expert ``i``'s pooled feature (L2-normalised, ``Linear(d, 16)`` + ReLU, one hidden
layer per decision) and the top-k values of the running mean logits of experts ``0..i``, through
one shared ``Linear(16 + k, 1)``, whether the next experts are needed. Its training target for
decision ``i`` is "the first ``i + 1`` experts' mean is wrong and some later running mean is right"
(:func:`router_targets`), fitted by binary cross-entropy with ``pos_weight`` (100 in the
ImageNet-LT config), averaged over the decisions. At inference (:meth:`MultiExpertNet.
routed_forward`) expert 0 runs on every sample and expert ``i`` only on the samples every decision
so far sent on (sigmoid > 0.5); each sample's logits are the mean over the experts it used.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from facelt.errors import ConfigError
from facelt.models.normed_linear import NormedLinearHead

#: depth -> (block, blocks per stage, groups, width per group)
RIDE_ARCHS: dict[str, tuple[type, tuple[int, int, int, int], int, int]] = {
    "resnet10": (BasicBlock, (1, 1, 1, 1), 1, 64),
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64),
}


def make_resnet_stage(block: type, inplanes: int, planes: int, blocks: int, stride: int = 1,
                      groups: int = 1, base_width: int = 64) -> nn.Sequential:
    """One ResNet stage of ``blocks`` torchvision blocks (projection shortcut when the shape
    changes); its output has ``planes * block.expansion`` channels."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample, groups=groups, base_width=base_width)]
    layers += [block(out, planes, groups=groups, base_width=base_width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_like_reference(module: nn.Module) -> None:
    """Convolutions ``N(0, 2 / (k*k*out_channels))``, batch norms weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SharedStem(nn.Module):
    """The shared early part: 7x7 conv stem, max-pool, ``layer1`` (64) and ``layer2`` (128)."""

    def __init__(self, block: type, layers: Sequence[int], groups: int, base_width: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_resnet_stage(block, 64, 64, layers[0], 1, groups, base_width)
        self.layer2 = make_resnet_stage(block, 64 * block.expansion, 128, layers[1], 2, groups,
                                        base_width)
        self.out_channels: int = 128 * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))


class ExpertTrunk(nn.Module):
    """One expert's later stages and pooling: shared map -> ``(B, out_dim)``."""

    def __init__(self, stages: Sequence[nn.Module], out_dim: int) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(x), 1), 1)


def _head_logits(head: nn.Module, v: torch.Tensor) -> torch.Tensor:
    out = head(v)
    return out[0] if isinstance(out, tuple) else out


class MultiExpertNet(nn.Module):
    """``shared`` body, then each expert trunk and its head; the mean of the experts' logits."""

    def __init__(self, shared: nn.Module, experts: Sequence[nn.Module],
                 heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(experts) < 1 or len(experts) != len(heads):
            raise ConfigError(f"a multi-expert network needs one head per expert and at least one "
                              f"expert, got {len(experts)} experts and {len(heads)} heads")
        self.shared = shared
        self.experts = nn.ModuleList(experts)
        self.heads = nn.ModuleList(heads)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def expert(self, i: int, shared_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``i``'s pooled feature and logits from the shared map."""
        v = self.experts[i](shared_map)
        return v, _head_logits(self.heads[i], v)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.shared(x)
        feats, logits = zip(*(self.expert(i, shared) for i in range(self.num_experts)))
        expert_logits = torch.stack(logits, dim=0)
        return {"logits": expert_logits.mean(dim=0), "expert_logits": expert_logits,
                "expert_features": torch.stack(feats, dim=0), "features": torch.cat(feats, dim=1)}

    @torch.no_grad()
    def routed_forward(self, x: torch.Tensor, router: "ExpertRouter", threshold: float = 0.5
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference with the router: ``(logits (B, K), experts used per sample (B,))``."""
        if router.num_experts != self.num_experts:
            raise ConfigError(f"router made for {router.num_experts} experts, the network has "
                              f"{self.num_experts}")
        shared = self.shared(x)
        feat, total = self.expert(0, shared)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        last_feat = feat
        for i in range(1, self.num_experts):
            idx = active.nonzero().squeeze(1)
            go_on = torch.sigmoid(router.help_logit(i - 1, last_feat, total[idx] / i)) > threshold
            active[idx] = go_on
            idx = idx[go_on]
            if idx.numel() == 0:
                break
            last_feat, z = self.expert(i, shared[idx])
            total[idx] += z
            used[idx] += 1
        return total / used.unsqueeze(1).to(total.dtype), used


class ExpertRouter(nn.Module):
    """RIDE's expert-assignment module for ``num_experts`` experts (``num_experts - 1``
    decisions)."""

    def __init__(self, feature_dim: int, num_experts: int, top_k: int = 50, hidden: int = 16,
                 pos_weight: float = 100.0) -> None:
        super().__init__()
        if num_experts < 2:
            raise ConfigError(f"an expert router needs at least 2 experts, got {num_experts}")
        if top_k < 1:
            raise ConfigError(f"router top_k must be >= 1, got {top_k}")
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.pos_weight = float(pos_weight)
        self.hidden = nn.ModuleList([nn.Linear(feature_dim, hidden)
                                     for _ in range(num_experts - 1)])
        self.fc = nn.Linear(hidden + top_k, 1)

    def help_logit(self, i: int, feature: torch.Tensor, mean_logits: torch.Tensor
                   ) -> torch.Tensor:
        """``(B,)`` logit that experts after ``i`` are needed, from expert ``i``'s pooled feature
        and the running mean logits of experts ``0..i``."""
        h = F.relu(self.hidden[i](F.normalize(feature, dim=1)))
        top = mean_logits.topk(self.top_k, dim=1).values
        return self.fc(torch.cat((top, h), dim=1)).squeeze(1)

    def loss(self, expert_features: torch.Tensor, expert_logits: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        """Mean over decisions of ``BCE(help_logit_i, router_targets[:, i]; pos_weight)``."""
        targets = router_targets(expert_logits, labels)
        running = expert_logits.cumsum(dim=0)
        total = expert_logits.new_zeros(())
        for i in range(self.num_experts - 1):
            logit = self.help_logit(i, expert_features[i], running[i] / (i + 1))
            total = total + F.binary_cross_entropy_with_logits(
                logit, targets[:, i].float(), pos_weight=logit.new_tensor([self.pos_weight]))
        return total / (self.num_experts - 1)


def router_targets(expert_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, E - 1)`` bool: decision ``i`` should send on when the mean of experts ``0..i`` is
    wrong and the mean of experts ``0..j`` is right for some ``j > i``."""
    correct = expert_logits.cumsum(dim=0).argmax(dim=2) == labels.view(1, -1)   # (E, B)
    later_right = correct.flip(0).cumsum(0).flip(0) > 0                          # any j >= i
    return (~correct[:-1] & later_right[1:]).t()


def build_ride_resnet(arch: str, num_classes: int, num_experts: int = 3,
                      reduce_dimension: bool = True, use_norm: bool = True, s: float = 30.0,
                      in_channels: int = 3, layer3_planes: Optional[int] = None,
                      layer4_planes: Optional[int] = None) -> MultiExpertNet:
    """The reference's RIDE ResNet / ResNeXt with ``num_experts`` experts."""
    if arch not in RIDE_ARCHS:
        raise ConfigError(f"unknown RIDE backbone {arch!r}; expected one of "
                          f"{', '.join(RIDE_ARCHS)}")
    if num_experts < 1:
        raise ConfigError(f"num_experts must be >= 1, got {num_experts}")
    block, layers, groups, width = RIDE_ARCHS[arch]
    p3 = layer3_planes or (192 if reduce_dimension else 256)
    p4 = layer4_planes or (384 if reduce_dimension else 512)
    shared = SharedStem(block, layers, groups, width, in_channels)
    experts, heads = [], []
    for _ in range(num_experts):
        l3 = make_resnet_stage(block, shared.out_channels, p3, layers[2], 2, groups, width)
        l4 = make_resnet_stage(block, p3 * block.expansion, p4, layers[3], 2, groups, width)
        experts.append(ExpertTrunk([l3, l4], p4 * block.expansion))
        heads.append(NormedLinearHead(p4 * block.expansion, num_classes, scale=s) if use_norm
                     else nn.Linear(p4 * block.expansion, num_classes))
    net = MultiExpertNet(shared, experts, heads)
    init_like_reference(net)
    return net
