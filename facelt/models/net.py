"""The OLTR network: backbone -> (modulated attention) -> neck -> head."""
from __future__ import annotations

import torch
from torch import nn


class OLTRNet(nn.Module):
    """Compose a backbone, an optional attention, a neck and a head.

    ``forward(x, labels)`` returns ``dict(logits, features, aux)`` where ``features`` is the neck
    output, the paper's direct feature ``v``; ``embed(x)`` returns only ``v``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module,
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.neck = neck
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Direct feature ``v`` (used for centroids and face feature extraction)."""
        fmap = self.backbone(x)
        if self.attention is not None:
            fmap = self.attention(fmap)
        return self.neck(fmap)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        features = self.embed(x)
        logits, aux = self.head(features, labels)
        return {"logits": logits, "features": features, "aux": aux}


def param_groups(net: OLTRNet) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: backbone (+ neck), attention, classifier (head minus centroids), centroids.

    Every parameter appears in exactly one group, frozen ones included (the caller filters on
    ``requires_grad`` when it builds the optimizer).
    """
    centroids = getattr(net.head, "centroids", None)
    centroid_params = [centroids] if isinstance(centroids, nn.Parameter) else []
    classifier = [p for p in net.head.parameters() if not any(p is c for c in centroid_params)]
    attention = list(net.attention.parameters()) if net.attention is not None else []
    return {
        "backbone": list(net.backbone.parameters()) + list(net.neck.parameters()),
        "attention": attention,
        "classifier": classifier,
        "centroids": centroid_params,
    }
