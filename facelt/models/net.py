"""The OLTR network: backbone -> (modulated attention) -> neck -> head."""
from __future__ import annotations

import torch
from torch import nn


class OLTRNet(nn.Module):
    """Compose a backbone, an optional attention, a neck, an optional ``fc_add`` and a head.

    ``forward(x, labels)`` returns ``dict(logits, features, aux)`` where ``features`` is the neck
    (then ``fc_add``) output, the paper's direct feature ``v``; ``embed(x)`` returns only ``v``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module,
                 attention: nn.Module | None = None, fc_add: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.neck = neck
        self.fc_add = fc_add
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Direct feature ``v`` (used for centroids and face feature extraction)."""
        fmap = self.backbone(x)
        if self.attention is not None:
            fmap = self.attention(fmap)
        v = self.neck(fmap)
        return self.fc_add(v) if self.fc_add is not None else v

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        features = self.embed(x)
        logits, aux = self.head(features, labels)
        return {"logits": logits, "features": features, "aux": aux}


def param_groups(net: OLTRNet) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: backbone (+ neck, + fc_add: the reference's feature model), attention,
    classifier (head minus centroids), centroids.

    Every parameter appears in exactly one group, frozen ones included (the caller filters on
    ``requires_grad`` when it builds the optimizer).
    """
    centroids = getattr(net.head, "centroids", None)
    centroid_params = [centroids] if isinstance(centroids, nn.Parameter) else []
    classifier = [p for p in net.head.parameters() if not any(p is c for c in centroid_params)]
    attention = list(net.attention.parameters()) if net.attention is not None else []
    return {
        "backbone": (list(net.backbone.parameters()) + list(net.neck.parameters())
                     + (list(net.fc_add.parameters()) if net.fc_add is not None else [])),
        "attention": attention,
        "classifier": classifier,
        "centroids": centroid_params,
    }
