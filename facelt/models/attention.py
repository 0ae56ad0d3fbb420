"""OLTR modulated attention: ``f_att = f + SA(f) * NL(f)``.

``NL`` is an embedded-Gaussian non-local block (Wang et al., 2018) without its residual: theta, phi
and g are 1x1 convolutions to ``C / reduction`` channels, the affinity ``softmax(theta^T phi)`` is
taken over the ``h*w`` positions, and an output 1x1 convolution maps back to ``C``.

Initialisation (``init``): ``reference`` is what the OLTR reference ends with. Its
``ModulatedAttLayer.init_weights`` draws theta / phi / g with Kaiming (fan-in) and zeroes the output
conv, but the layer is built inside its ResNet, whose init loop then runs over every module and
redraws EVERY ``Conv2d`` weight, the four of the attention included, from ``normal(0, sqrt(2 / n))``
with ``n = kernel_h * kernel_w * out_channels`` (BatchNorm weights 1, biases 0; the attention has
none); the conv biases stay 0 and its ``fc_spatial`` Linear keeps PyTorch's default. So the
reference's attention is NOT the identity at start, and its stage-2 centroids are computed
through it. ``identity``: facelt's former variant, the output conv at zero, so
``f_att = f`` at start.

``SA`` is a spatial softmax attention: a 1x1 convolution scores every position of the input map and
a softmax over the ``h*w`` positions turns the scores into a ``(B, 1, h, w)`` mask that modulates
the non-local response.  As in the OLTR reference the scores are computed from ``f`` itself.  Two
forms: :class:`ReferenceSpatialAttention`, the reference's ``fc_spatial`` (a Linear from the
flattened ``C*h*w`` map to ``h*w`` scores: every position has its own weights and sees the whole
map; defined for the map size it was built for, 7x7 in the reference), and
:class:`SpatialAttention`, a 1x1 convolution shared across positions (any ``h, w``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from facelt.errors import ConfigError


#: the initialisations of the modulated attention (see the module docstring)
ATTENTION_INITS = ("reference", "identity")


@torch.no_grad()
def resnet_init_conv(conv: nn.Conv2d) -> None:
    """The OLTR reference ResNet's init of a convolution weight: ``normal(0, sqrt(2 / n))``,
    ``n = kernel_h * kernel_w * out_channels`` (the bias, if any, is left as it is)."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    conv.weight.normal_(0.0, math.sqrt(2.0 / n))


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local response ``W_z(softmax(theta^T phi) g)``; ``init``: one of
    :data:`ATTENTION_INITS` (``identity``: zero at start)."""

    def __init__(self, channels: int, reduction: int = 2, init: str = "reference") -> None:
        super().__init__()
        if init not in ATTENTION_INITS:
            raise ConfigError(f"attention init must be one of {', '.join(ATTENTION_INITS)}, "
                              f"got {init!r}")
        inter = max(1, channels // reduction)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Conv2d(inter, channels, 1, bias=False)
        for conv in (self.theta, self.phi, self.g):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        if init == "reference":  # the reference ResNet's loop, run after the layer's own init
            for conv in (self.theta, self.phi, self.g, self.out):
                resnet_init_conv(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)     # (B, hw, C')
        phi = self.phi(x).flatten(2)                           # (B, C', hw)
        g = self.g(x).flatten(2).transpose(1, 2)             # (B, hw, C')
        affinity = torch.softmax(torch.bmm(theta, phi), dim=-1)  # (B, hw, hw)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(y)


class SpatialAttention(nn.Module):
    """A softmax over positions of a 1x1-conv score: ``(B, C, h, w) -> (B, 1, h, w)``, sums to 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        scores = self.score(x).flatten(1)                      # (B, hw)
        return torch.softmax(scores, dim=1).view(b, 1, h, w)


class ReferenceSpatialAttention(nn.Module):
    """The reference's spatial attention: ``softmax(Linear(flatten(f)))`` over the ``h*w`` positions,
    ``(B, C, h, w) -> (B, 1, h, w)``. The flatten is channel-major (``C, h, w``), as ``view`` of an
    NCHW map; the map must have the size given at construction."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.fc = nn.Linear(channels * size * size, size * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.channels, self.size, self.size):
            raise ConfigError(f"reference spatial attention was built for ({self.channels}, "
                              f"{self.size}, {self.size}) maps, got {(c, h, w)}: feed images of "
                              "the data.image_size it was trained at, or use the conv form "
                              "(stageN.spatial_attention: conv) for other map sizes")
        scores = self.fc(x.reshape(b, -1))                    # (B, hw)
        return torch.softmax(scores, dim=1).view(b, 1, h, w)


class ModulatedAttention(nn.Module):
    """``f + SA(f) * NL(f)``: the OLTR modulated attention after the last backbone stage.

    ``map_size`` given: the reference's position-specific spatial attention over maps of that size;
    ``None``: the 1x1-convolution form (any map size). ``init``: the non-local block's
    initialisation, ``reference`` or ``identity`` (module docstring); the spatial attention keeps
    PyTorch's default init either way (the reference's loop leaves its Linear alone)."""

    def __init__(self, channels: int, reduction: int = 2, map_size: int | None = None,
                 init: str = "reference") -> None:
        super().__init__()
        self.nonlocal_block = NonLocal(channels, reduction, init=init)
        self.spatial = (SpatialAttention(channels) if map_size is None
                        else ReferenceSpatialAttention(channels, map_size))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.spatial(f) * self.nonlocal_block(f)
