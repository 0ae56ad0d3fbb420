"""Necks: a backbone's feature map -> the direct feature vector ``v``."""
from __future__ import annotations

import torch
from torch import nn

from facelt.errors import ConfigError

#: BatchNorm eps of insightface's MXNet-trained models and of arcface_torch's (PyTorch) IResNet
MXNET_BN_EPS = 2e-5
ARCFACE_TORCH_BN_EPS = 1e-5


class PoolNeck(nn.Module):
    """Global average pooling and flatten: ``(B, C, h, w) -> (B, C)``."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim: int = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


class FaceNeck(nn.Module):
    """insightface's "E" output layer: BN2d -> Dropout -> Flatten -> Linear(C*s*s, d) -> BN1d.

    The last batch norm has its scale fixed at 1 (MXNet ``fix_gamma=True``): its weight is a
    constant, not trained. ``bn_eps``: the batch norms' eps, 2e-5 in insightface's MXNet models
    (the default), 1e-5 in arcface_torch's IResNet (``bn2``, ``features``).
    """

    def __init__(self, in_channels: int, spatial: int, embedding_dim: int = 512,
                 dropout: float = 0.0, bn_eps: float = MXNET_BN_EPS) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"face neck dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.spatial = spatial
        self.bn2d = nn.BatchNorm2d(in_channels, eps=bn_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels * spatial * spatial, embedding_dim)
        self.bn1d = nn.BatchNorm1d(embedding_dim, eps=bn_eps)
        nn.init.constant_(self.bn1d.weight, 1.0)
        self.bn1d.weight.requires_grad_(False)
        self.out_dim: int = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, self.spatial, self.spatial):
            raise ConfigError(
                f"face neck expects feature maps of shape ({self.in_channels}, {self.spatial}, "
                f"{self.spatial}), got {tuple(x.shape[1:])}: check the image size "
                "(112x112 with the face stem gives 7x7)")
        x = torch.flatten(self.dropout(self.bn2d(x)), 1)
        return self.bn1d(self.fc(x))


class FCAdd(nn.Module):
    """The reference's ``use_fc``: ``ReLU(Linear(in_dim, out_dim))`` after pooling."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.out_dim: int = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))
