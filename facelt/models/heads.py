"""Classifier heads.  Every head's ``forward(v, labels=None)`` returns ``(logits, aux)``.

Distances to class centroids are computed as ``||v||^2 - 2 v C^T + ||C||^2`` with one matmul, so
a batch against K = 74.5K identities costs ``B x K`` memory, never ``B x K x d``; the per-class
arithmetic and its cheap backward passes are :mod:`facelt.models.head_math`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facelt.errors import ConfigError
from facelt.models.head_math import (at_least_float32, nearest_squared, normalize_rows, squash,
                                     squared_distances)  # noqa: F401 (also imported from here)

Aux = dict[str, torch.Tensor]


class Head(nn.Module):
    """Base of every classifier head: ``forward(v, labels=None) -> (logits, aux)``.

    A head declares what the trainer has to give it (class attributes, all false by default):

    * ``needs_centroids``: ``init_centroids(means (K, d))`` with the per-class mean features of the
      training set before the first step of a fresh stage;
    * ``needs_class_counts``: ``init_class_counts(counts (K,))`` too (training images per class);
    * ``uses_centroid_loss``: its ``centroids`` parameter is trained by the discriminative-centroid
      loss (and frozen when that loss has weight 0);
    * ``may_skip_parameters``: some parameters get no gradient in some steps (DDP must look for
      unused parameters).
    """

    needs_centroids = False
    needs_class_counts = False
    uses_centroid_loss = False
    may_skip_parameters = False

    def init_centroids(self, centroids: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no centroids")

    def lr_factor(self, param: nn.Parameter) -> float:
        """The factor on ``classifier_lr`` that ``param`` (one of this head's) trains at."""
        return 1.0

    def class_weight(self) -> nn.Parameter:
        """The ``(K, d)`` per-class weight matrix (what MaxNorm constrains)."""
        raise ConfigError(f"{type(self).__name__} has no per-class weight matrix to constrain")

    def init_class_counts(self, counts: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no class counts")


@torch.no_grad()
def copy_class_means(dst: torch.Tensor, means: torch.Tensor) -> None:
    """Copy per-class mean features ``(K, d)`` into a head's ``dst`` of the same shape."""
    if tuple(means.shape) != tuple(dst.shape):
        raise ValueError(f"centroids have shape {tuple(means.shape)}, "
                         f"expected {tuple(dst.shape)} (num_classes, feature dim)")
    dst.copy_(means)


class LinearHead(Head):
    """Plain linear classifier (stage 1): ``logits = W v + b``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        return self.fc(v), {}

    def class_weight(self) -> nn.Parameter:
        return self.fc.weight


class CosineHead(Head):
    """Cosine classifier with squashing: ``logits = scale * squash(x) @ normalize(W)^T``."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.scale = scale
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).uniform_(-bound, bound))

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        return self.scale * squash(v) @ normalize_rows(self.weight).t(), {}


class MetaEmbeddingHead(Head):
    """OLTR dynamic meta-embedding followed by the cosine classifier.

    ``memory = softmax(T_hal(v)) @ C``, ``e = tanh(T_sel(v))``, ``gamma = min_k ||v - c_k||``,
    ``v_meta = (reach_scale / gamma) * (v + e * memory)``, ``logits = cosine(v_meta)``.
    """

    needs_centroids = True
    uses_centroid_loss = True

    def __init__(self, in_dim: int, num_classes: int, reach_scale: float = 10.0,
                 cos_scale: float = 16.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.reach_scale = reach_scale
        self.eps = eps
        self.centroids = nn.Parameter(torch.zeros(num_classes, in_dim))
        self.hallucinator = nn.Linear(in_dim, num_classes)
        self.selector = nn.Linear(in_dim, in_dim)
        self.cosine = CosineHead(in_dim, num_classes, scale=cos_scale)

    def init_centroids(self, centroids: torch.Tensor) -> None:
        """Copy per-class mean features ``(K, d)`` into the centroid memory."""
        copy_class_means(self.centroids, centroids)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        # As in the reference, the head reads the centroids detached: only the discriminative-
        # centroid loss moves them, not the classification loss through the memory.
        centroids = self.centroids.detach()
        # Distances and the reachability scale in float32 even under autocast: in float16 the
        # expansion ||v||^2 - 2 v.c + ||c||^2 loses everything below ~1 at feature norms of ~20
        # and a nearest distance rounded to 0 would make the scale infinite.
        with torch.autocast(v.device.type, enabled=False):
            v32 = at_least_float32(v)
            d2_min, nearest = nearest_squared(v32, centroids.to(v32.dtype))
            gamma = d2_min.clamp_min(self.eps ** 2).sqrt()      # (B,), never 0
            reachability = self.reach_scale / gamma
            memory = torch.softmax(self.hallucinator(v32), dim=1) @ centroids.to(v32.dtype)
            selector = torch.tanh(self.selector(v32))
            meta = reachability.unsqueeze(1) * (v32 + selector * memory)
        logits, _ = self.cosine(meta)
        aux = {"direct": v, "memory": memory, "selector": selector,
               "reachability": reachability, "meta": meta, "nearest": nearest}
        return logits, aux


class MarginHead(Head):
    """ArcFace ``s*cos(theta + m)`` or CosFace ``s*(cos(theta) - m)`` margin softmax head.

    Features and class weights are L2-normalised; the margin goes on the target logit only when
    ``labels`` are given (training); samples labelled -1 get no margin.  ArcFace uses the
    standard non-easy-margin rule: where ``theta + m`` would pass pi (``cos <= cos(pi - m)``) the
    target logit becomes ``cos - sin(pi - m) * m``.
    """

    def __init__(self, in_dim: int, num_classes: int, kind: str = "arcface", s: float = 64.0,
                 m: float | None = None) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ConfigError(f"margin head kind must be 'arcface' or 'cosface', got {kind!r}")
        self.kind = kind
        self.s = s
        self.m = (0.5 if kind == "arcface" else 0.35) if m is None else m
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim).normal_(0.0, 0.01))
        self.cos_m, self.sin_m = math.cos(self.m), math.sin(self.m)
        self.th = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The target class's margin logit (before the scale ``s``) from its cosine."""
        if self.kind == "cosface":
            return cos - self.m
        sin = (1.0 - cos * cos).clamp_min(1e-12).sqrt()
        phi = cos * self.cos_m - sin * self.sin_m
        return torch.where(cos > self.th, phi, cos - self.mm)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        cos = F.normalize(v, dim=1) @ normalize_rows(self.weight).t()
        cos = cos.clamp(-1.0, 1.0)
        if labels is None:
            return self.s * cos, {}
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        cols = labels[rows]
        target = self.target_logit(cos[rows, cols])
        cos = cos.index_put((rows, cols), target)
        return self.s * cos, {}


class LWSHead(Head):
    """Learnable weight scaling (Kang et al., ICLR 2020): stage 1's linear classifier, frozen, with
    one learnable scale per class: ``logits_k = s_k * (w_k . v + b_k)``. With ``train_classifier``
the classifier trains too (at ``classifier_lr_factor`` of the LR: MiSLAS's stage 2).

    Its ``fc`` has the parameter names of :class:`LinearHead`, so stage 1's classifier loads into it.
    """

    def __init__(self, in_dim: int, num_classes: int, train_classifier: bool = False,
                 classifier_lr_factor: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.fc.requires_grad_(train_classifier)
        self.scales = nn.Parameter(torch.ones(num_classes))
        self.classifier_lr_factor = float(classifier_lr_factor)

    def lr_factor(self, param: nn.Parameter) -> float:
        """``fc`` (with ``train_classifier``) trains at ``classifier_lr_factor`` of the LR."""
        return self.classifier_lr_factor if any(param is p for p in self.fc.parameters()) else 1.0

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        return self.fc(v) * self.scales, {}
