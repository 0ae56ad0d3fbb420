"""Objectives that read more of the network's output than the logits: a loss with
``from_output(out, labels)`` is called with the whole output ``dict(logits, features, aux)``
(:class:`facelt.losses.stage.StageLoss` asks for that method, never for a loss by name).

* :class:`ExpertLogitsLoss`: a loss over ``out["aux"]["expert_logits"]`` ``(E, B, K)`` (RIDE's,
  from the ``ride`` head);
* :class:`PaCoObjective`: GPaCo's loss over a two-view batch (``stageN.two_views``: the batch is
  ``[view 1; view 2]``, labels repeated), the ``paco`` head's projections and logits and its queue
  of past keys (:func:`facelt.losses.paco.paco_inputs`); after the loss the batch's second-view
  keys are enqueued.

Both pass :meth:`set_epoch` on to the loss they wrap (DRW / RIDE's deferred re-weighting).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from facelt.errors import ConfigError
from facelt.losses.paco import paco_inputs


class ExpertLogitsLoss(nn.Module):
    """``loss(out["aux"]["expert_logits"], labels)``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def from_output(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        z = (out.get("aux") or {}).get("expert_logits")
        if z is None:
            raise ConfigError("a multi-expert loss (stageN.loss ride) needs the per-expert logits "
                              "of a multi-expert head (stageN.head ride)")
        return self.loss(z, labels)


class PaCoObjective(nn.Module):
    """The parametric contrastive loss of a two-view batch, with the head's queue."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.queue: Optional[nn.Module] = None

    def bind_head(self, head: nn.Module) -> None:
        """Use ``head.queue`` (the ``paco`` head's :class:`~facelt.models.paco.LabelledQueue`)."""
        self.queue = getattr(head, "queue", None)

    def from_output(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        z = (out.get("aux") or {}).get("projection")
        if z is None:
            raise ConfigError("stageN.loss paco needs the projections of stageN.head paco")
        n = z.shape[0]
        if n % 2:
            raise ValueError(f"a two-view batch has an even number of rows, got {n}")
        b = n // 2
        logits = out["logits"].float()
        y = labels[:b]
        q, k = z[:b].float(), z[b:].float()
        if self.queue is not None:
            feats, all_labels, sup = paco_inputs(q, k, y, logits[:b], logits[b:], self.queue)
        else:
            feats, all_labels, sup = torch.cat((q, k)), torch.cat((y, y)), logits
        loss = self.loss(feats, all_labels, sup)
        if self.queue is not None:
            self.queue.enqueue(k.detach(), y)
        return loss
