"""GPaCo's network pieces (dvlab-research/Parametric-Contrastive-Learning ``GPaCo/LT/moco/
builder.py``): the head over the pooled backbone feature, and the queue of labelled past keys.

* :class:`PaCoHead`: a linear classifier ``Linear(d, K)`` on the pooled feature (its weights are
  the learnable class centres of :class:`facelt.losses.paco.PaCoLoss`; its logits are the
  prediction) and, beside it, the projection the contrastive part uses: MoCo v2's MLP
  ``Linear(d, d) - ReLU - Linear(d, d) - ReLU - Linear(d, 128)`` (the reference replaces the
  torchvision ``fc`` by it, ``--mlp`` on by default), L2-normalised.
  ``forward(v) -> (logits, {"projection": z})``. With ``queue_size`` it holds the
  :class:`LabelledQueue` (``head.queue``) too.
* :class:`LabelledQueue`: ``size`` (8192) past keys and their labels, a ring written at a pointer.
  As in the reference it starts as Gaussian noise normalised along the queue axis (the reference's
  ``normalize(queue, dim=0)`` on a ``(K, dim)`` buffer) with random labels, and is filled by
  :meth:`LabelledQueue.enqueue` after each step with the (all-gathered, under DDP) second-view
  keys of the batch. GPaCo uses one encoder for both views (no momentum encoder), so the keys in
  the current loss carry gradients; the stored copies do not.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.models.heads import Aux, Head


class PaCoHead(Head):
    """Classifier logits plus the normalised projection of the same pooled feature."""

    def __init__(self, in_dim: int, num_classes: int, projection_dim: int = 128,
                 mlp: bool = True, queue_size: int = 0) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_dim, num_classes)
        # the queue of past keys lives with the head: saved in its checkpoint, restored on resume
        self.queue = (LabelledQueue(queue_size, projection_dim, num_classes) if queue_size > 0
                      else None)
        last = nn.Linear(in_dim, projection_dim)
        self.projection = (nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True),
                                         nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), last)
                           if mlp else last)

    def forward(self, v: torch.Tensor, labels: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Aux]:
        return self.classifier(v), {"projection": F.normalize(self.projection(v), dim=1)}

    def class_weight(self) -> nn.Parameter:
        return self.classifier.weight


class LabelledQueue(nn.Module):
    """A ring of ``size`` labelled feature vectors (buffers: saved with the model)."""

    def __init__(self, size: int, dim: int, num_classes: int,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if size < 1 or dim < 1 or num_classes < 1:
            raise ConfigError(f"queue size, dim and num_classes must be >= 1, got {size}, {dim}, "
                              f"{num_classes}")
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator),
                                                     dim=0))
        self.register_buffer("labels", torch.randint(0, num_classes, (size,), generator=generator))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached copies of the stored features and labels."""
        return self.features.clone().detach(), self.labels.clone().detach()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write ``keys`` (and labels) at the pointer, wrapping around; the pointer moves on."""
        n = keys.shape[0]
        if n > self.size or labels.shape[0] != n:
            raise ValueError(f"cannot enqueue {n} keys / {labels.shape[0]} labels into a queue of "
                             f"{self.size}")
        idx = (int(self.ptr) + torch.arange(n, device=self.features.device)) % self.size
        self.features[idx] = keys.detach().to(self.features.dtype)
        self.labels[idx] = labels.to(self.labels.device, self.labels.dtype)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
