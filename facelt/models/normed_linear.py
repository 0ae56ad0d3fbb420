"""The normalised linear classifier of LDAM-DRW and RIDE (``NormedLinear`` with ``use_norm``):
``logits = scale * normalize(v) . normalize(w_k)``, no bias, no squashing.

LDAM-DRW (kaidic/LDAM-DRW ``models/resnet_cifar.py``) uses scale 1 and lets the loss multiply by
``s = 30`` (:class:`facelt.losses.ldam.LDAMLoss`); RIDE's experts (``model/fb_resnets/
RIDEResNeXt.py``) multiply by ``s = 30`` in the network. Weights start as random directions
(uniform in [-1, 1], each class vector rescaled to unit norm: what the reference's
``uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`` leaves).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.models.heads import Aux, Head


class NormedLinearHead(Head):
    """Cosine classifier ``scale * cos(v, w_k)`` over ``(K, d)`` weights."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ConfigError(f"normed linear scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Aux]:
        cos = F.normalize(v, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.scale * cos, {}

    def class_weight(self) -> nn.Parameter:
        return self.weight
