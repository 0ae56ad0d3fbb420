"""RIDE's per-expert classifiers as one head (``head: ride``): ``v = [v_1, ..., v_E]`` (the
multi-expert trunk's pooled features, :mod:`facelt.models.expert_body`) is cut into ``E`` equal
slices and expert ``e`` scores its slice with its own normalised linear classifier
(:class:`facelt.models.normed_linear.NormedLinearHead`, scale ``s`` = 30 as the reference's
``use_norm``).

``forward(v) -> (mean_e z_e, {"expert_logits": (E, B, K)})``: the prediction, and every open-set
score computed from the logits (max softmax, energy, max-logit), are those of the experts' mean
logits, as the reference evaluates the model without its router; the RIDE loss reads the
per-expert logits (``loss: ride``).
"""
from __future__ import annotations

import torch
from torch import nn

from facelt.errors import ConfigError
from facelt.models.heads import Aux, Head
from facelt.models.normed_linear import NormedLinearHead


class MultiExpertHead(Head):
    """``E`` normalised linear classifiers on the ``E`` slices of ``v``; their mean logits."""

    def __init__(self, in_dim: int, num_classes: int, experts: int, scale: float = 30.0) -> None:
        super().__init__()
        if experts < 1 or in_dim % experts:
            raise ConfigError(f"head ride: the feature width {in_dim} must split into "
                              f"stageN.experts = {experts} equal slices")
        self.slice = in_dim // experts
        self.heads = nn.ModuleList([NormedLinearHead(self.slice, num_classes, scale=scale)
                                    for _ in range(experts)])

    @property
    def num_experts(self) -> int:
        return len(self.heads)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Aux]:
        parts = v.split(self.slice, dim=1)
        z = torch.stack([h(p)[0] for h, p in zip(self.heads, parts)], dim=0)
        return z.mean(dim=0), {"expert_logits": z}
