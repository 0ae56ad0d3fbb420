"""The OLTR network: a body (backbone -> (modulated attention) -> neck -> (fc_add)) and a head.

:class:`Body` maps images to the paper's direct feature ``v``; everything that needs ``v``
(training, centroid passes, feature extraction, ONNX export, the class-sharded path and every
evaluation copy of a network) calls that one module. :func:`facelt.models.build.build_net` is the
one place it is assembled from a config.
"""
from __future__ import annotations

import torch
from torch import nn

#: the body's parts, in the order they run (its state-dict keys are ``body.<part>.*``)
BODY_PARTS = ("backbone", "attention", "neck", "fc_add")


class Body(nn.Module):
    """``backbone -> attention (optional) -> neck -> fc_add (optional)``: ``(B, C, H, W) -> (B, d)``.

    ``out_dim`` is the width of ``v`` (``fc_add``'s when there is one, else the neck's)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, attention: nn.Module | None = None,
                 fc_add: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.neck = neck
        self.fc_add = fc_add

    @property
    def out_dim(self) -> int:
        return (self.fc_add if self.fc_add is not None else self.neck).out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone(x)
        if self.attention is not None:
            fmap = self.attention(fmap)
        v = self.neck(fmap)
        return self.fc_add(v) if self.fc_add is not None else v


class OLTRNet(nn.Module):
    """A body and a head. ``forward(x, labels)`` returns ``dict(logits, features, aux)`` where
    ``features`` is the body's output ``v``; ``embed(x)`` is the body alone.

    ``body`` may be a wrapper of a :class:`Body` that maps images to ``v`` too (the class-sharded
    path calls the same network with its body under DDP)."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The direct feature ``v`` (``self.body(x)``)."""
        return self.body(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        features = self.body(x)
        logits, aux = self.head(features, labels)
        return {"logits": logits, "features": features, "aux": aux}


def upgrade_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state dict in the current layout: checkpoints written before :class:`Body` existed
    hold ``backbone.* / attention.* / neck.* / fc_add.*`` at the top; they become ``body.*``
    (order kept). A state dict already in the current layout is returned unchanged."""
    old = tuple(part + "." for part in BODY_PARTS)
    if not any(k.startswith(old) for k in state):
        return state
    return {("body." + k if k.startswith(old) else k): v for k, v in state.items()}


def param_groups(net: OLTRNet) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: backbone (+ neck, + fc_add: the reference's feature model), attention,
    classifier (head minus centroids), centroids.

    Every parameter appears in exactly one group, frozen ones included (the caller filters on
    ``requires_grad`` when it builds the optimizer).
    """
    body = net.body
    centroids = getattr(net.head, "centroids", None)
    centroid_params = [centroids] if isinstance(centroids, nn.Parameter) else []
    classifier = [p for p in net.head.parameters() if not any(p is c for c in centroid_params)]
    attention = list(body.attention.parameters()) if body.attention is not None else []
    return {
        "backbone": (list(body.backbone.parameters()) + list(body.neck.parameters())
                     + (list(body.fc_add.parameters()) if body.fc_add is not None else [])),
        "attention": attention,
        "classifier": classifier,
        "centroids": centroid_params,
    }
