"""The head strategy of a stage: how its head is laid out over the processes, and everything that
depends on it. :func:`head_strategy` picks one from the config, once, when a stage is built; the
trainer calls it and never asks which one it has.

* :class:`ReplicatedHead` (``stageN.shard_head: false``): every rank holds the whole network and
  DDP averages its gradients (in one process: the network itself).
* :class:`ClassShardedHead` (``stageN.shard_head: true``): each rank holds its slice of the
  classes and their rows of every ``K x d`` table (:mod:`facelt.parallel.sharded_heads`,
  the head's sharded twin); the body alone is under DDP and the head outside it, its replicated
  parts getting the full gradient from the collectives (as arcface_torch's Partial FC). The
  features' gradient is scaled by the world size so DDP's average gives the body the global
  batch's gradient. In one process the same twin runs over a world of one (every collective is
  the identity; ``sample_rate`` works there too).

What a strategy owns, for the trainer: :meth:`~HeadStrategy.prepare` (the head this rank trains),
:meth:`~HeadStrategy.wrap` (the model the loop calls), :meth:`~HeadStrategy.build_loss`,
:meth:`~HeadStrategy.init_centroids`, the checkpointed model and optimizer state
(:meth:`~HeadStrategy.model_state` / :meth:`~HeadStrategy.load_model_state`,
:meth:`~HeadStrategy.optimizer_state` / :meth:`~HeadStrategy.load_optimizer_state`: always the
unsharded layout on disk), :meth:`~HeadStrategy.evaluation_net`, :meth:`~HeadStrategy.after_backward`
and :meth:`~HeadStrategy.resume_at_step`. Methods marked *collective* run on every rank, in the
same order.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from facelt.config import StageConfig
from facelt.errors import ConfigError
from facelt.losses import StageLoss, build_stage_loss
from facelt.models.net import OLTRNet
from facelt.models.state import load_model_state
from facelt.parallel import collectives as col
from facelt.parallel.centroids import class_means, shard_class_means
from facelt.parallel.process import DistInfo
from facelt.parallel.sharded_heads import SHARDED_TWINS
from facelt.parallel.sharded_losses import ShardedStageLoss
from facelt.parallel.sharded_state import (consolidated_model_state, consolidated_optimizer_state,
                                           shard_model_state, shard_optimizer_state)


def ddp(module: nn.Module, dist: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` under DistributedDataParallel on this rank's device."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    dev = [dist.device.index] if dist.device.type == "cuda" else None
    return DDP(module, device_ids=dev, find_unused_parameters=find_unused_parameters)


class HeadStrategy:
    """The replicated / class-sharded choice of one stage (``st``, number ``stage``) on the
    processes ``dist``. The base class is the replicated behaviour where a method has one."""

    def __init__(self, st: StageConfig, stage: int, dist: DistInfo) -> None:
        self.st = st
        self.stage = stage
        self.dist = dist

    def prepare(self, net: OLTRNet, num_classes: int) -> None:
        """Make ``net.head`` (built unsharded from the seed, the same on every rank) the head this
        rank trains; before ``net`` moves to its device."""

    def wrap(self, net: OLTRNet) -> nn.Module:
        """The model the training loop calls, ``model(x, labels) -> dict(logits, features, aux)``."""
        raise NotImplementedError

    def build_loss(self, net: OLTRNet, class_counts: np.ndarray):
        """The stage's objective ``loss(out, labels) -> (loss, logged terms)``."""
        raise NotImplementedError

    def init_centroids(self, net: OLTRNet, dataset, num_classes: int, batch_size: int,
                       num_workers: int) -> int:
        """Give a head with ``needs_centroids`` the per-class mean ``v`` over ``dataset``
        (collective); returns the number of classes without an image (on every rank)."""
        raise NotImplementedError

    def model_state(self, net: OLTRNet) -> dict[str, torch.Tensor]:
        """The network's state dict in the unsharded layout (collective; complete on rank 0)."""
        return net.state_dict()

    def load_model_state(self, net: OLTRNet, state: dict[str, torch.Tensor], where: str) -> None:
        """Load an unsharded network state dict strictly (``where`` names it in errors)."""
        load_model_state(net, state, where)

    def optimizer_state(self, net: OLTRNet, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state dict in the unsharded layout (collective; complete on rank 0)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, net: OLTRNet, optimizer: torch.optim.Optimizer,
                             state: dict) -> None:
        optimizer.load_state_dict(state)

    def evaluation_net(self, net: OLTRNet) -> Optional[OLTRNet]:
        """The network to evaluate (collective): the unsharded network, sharing ``net``'s body;
        ``None`` on a rank that has none to evaluate. Nothing is drawn from the RNG."""
        return net

    def after_backward(self, net: OLTRNet, scaler: torch.amp.GradScaler) -> None:
        """After ``backward``, before the optimizer step (collective)."""

    def resume_at_step(self, net: OLTRNet, step: int) -> None:
        """A resumed stage continues after ``step`` optimizer steps (step-seeded draws)."""


class ReplicatedHead(HeadStrategy):
    """The whole network on every rank, DDP around it (``find_unused_parameters`` when the head
    may skip parameters)."""

    def wrap(self, net: OLTRNet) -> nn.Module:
        if not self.dist.distributed:
            return net
        return ddp(net, self.dist, find_unused_parameters=net.head.may_skip_parameters)

    def build_loss(self, net: OLTRNet, class_counts: np.ndarray) -> StageLoss:
        # under DDP the centroid loss takes its global-batch terms through this sum
        global_sum = col.all_reduce_sum if self.dist.distributed else None
        return build_stage_loss(self.st, net.head, class_counts,
                                global_sum=global_sum).to(self.dist.device)

    def init_centroids(self, net: OLTRNet, dataset, num_classes: int, batch_size: int,
                       num_workers: int) -> int:
        head = net.head
        means, counts = class_means(net.body, dataset, num_classes, batch_size, num_workers,
                                    self.dist)
        head.init_centroids(means.to(self.dist.device))
        if head.needs_class_counts:
            head.init_class_counts(torch.from_numpy(counts))
        return int((counts == 0).sum())


class ClassShardedHead(HeadStrategy):
    """This rank's slice of the classes (the head's sharded twin of :data:`SHARDED_TWINS`)."""

    def __init__(self, st: StageConfig, stage: int, dist: DistInfo, sample_seed: int) -> None:
        super().__init__(st, stage, dist)
        self.sample_seed = sample_seed

    def prepare(self, net: OLTRNet, num_classes: int) -> None:
        world = self.dist.world_size
        if num_classes < world:
            raise ConfigError(
                f"stage{self.stage}.shard_head: {num_classes} classes cannot be sharded over "
                f"{world} processes (each process owns at least one class): run at most "
                f"{num_classes} processes or set stage{self.stage}.shard_head=false")
        twin = SHARDED_TWINS[self.st.head]
        options = ({"sample_rate": self.st.sample_rate, "sample_seed": self.sample_seed}
                   if twin.samples_classes else {})
        net.head = twin.from_head(net.head, self.dist.rank, world,
                                  feature_grad_scale=float(world), **options)

    def wrap(self, net: OLTRNet) -> nn.Module:
        if not self.dist.distributed:
            return net
        body = net.body
        if any(p.requires_grad for p in body.parameters()):
            body = ddp(body, self.dist)
        return OLTRNet(body, net.head)  # the same network, its body under DDP

    def build_loss(self, net: OLTRNet, class_counts: np.ndarray) -> ShardedStageLoss:
        return ShardedStageLoss(self.st, net.head, net.head.num_classes)

    def init_centroids(self, net: OLTRNet, dataset, num_classes: int, batch_size: int,
                       num_workers: int) -> int:
        counts = shard_class_means(net.body, net.head, dataset, batch_size, num_workers, self.dist)
        return int(col.all_reduce_sum((counts == 0).sum().double()).item())

    def model_state(self, net: OLTRNet) -> dict[str, torch.Tensor]:
        return consolidated_model_state(net.state_dict(), net.head)

    def load_model_state(self, net: OLTRNet, state: dict[str, torch.Tensor], where: str) -> None:
        load_model_state(net, shard_model_state(state, net.head), where)

    def optimizer_state(self, net: OLTRNet, optimizer: torch.optim.Optimizer) -> dict:
        return consolidated_optimizer_state(net.head, optimizer)

    def load_optimizer_state(self, net: OLTRNet, optimizer: torch.optim.Optimizer,
                             state: dict) -> None:
        optimizer.load_state_dict(shard_optimizer_state(net.head, optimizer, state))

    def evaluation_net(self, net: OLTRNet) -> Optional[OLTRNet]:
        """Rank 0: the unsharded head, built empty (no RNG draw: a draw here would shift rank 0's
        augmentation / dropout stream for the rest of the run) and loaded with the gathered
        tables, on ``net``'s body; ``None`` on the other ranks."""
        head = net.head
        state = consolidated_model_state(head.state_dict(), head, prefix="")  # collective
        if not self.dist.is_primary:
            return None
        full = head.unsharded()
        full.load_state_dict(state)
        full.train(head.training)
        twin = OLTRNet(net.body, full)
        twin.training = net.training
        return twin

    def after_backward(self, net: OLTRNet, scaler: torch.amp.GradScaler) -> None:
        agree_on_overflow(net, scaler)

    def resume_at_step(self, net: OLTRNet, step: int) -> None:
        net.head.set_sample_step(step)  # Partial-FC sampling continues its sequence


@torch.no_grad()
def agree_on_overflow(net: nn.Module, scaler: torch.amp.GradScaler) -> None:
    """AMP with a sharded ``net.head``: after ``backward``, before ``scaler.step``. The scaler
    skips a step when the gradients ITS rank sees overflowed; the sharded tables' gradients differ
    by rank, so when any rank's are non-finite every rank marks one of its gradients non-finite
    too, and all ranks skip the step and lower the scale together (collective; no-op without AMP
    or in one process)."""
    head = net.head
    if not scaler.is_enabled() or head.world == 1:
        return
    grads = [p.grad for n, p in head.named_parameters()
             if n in head.sharded_keys and p.grad is not None]
    bad = any(not bool(torch.isfinite(g).all()) for g in grads)
    device = next(head.parameters()).device
    flag = col.all_reduce_max(torch.tensor([1.0 if bad else 0.0], device=device), head.group)
    if flag.item() > 0 and not bad:
        for p in net.parameters():
            if p.grad is not None:
                p.grad[(0,) * p.grad.dim()] = float("inf")
                break


def check_shard_config(st: StageConfig, stage: int) -> None:
    """Refuse the settings the sharded path does not support, naming the key."""
    key = f"stage{stage}"
    twin = SHARDED_TWINS.get(st.head)
    if st.sample_rate < 1.0 and not (st.shard_head and twin is not None and twin.samples_classes):
        sampling = [name for name, cls in SHARDED_TWINS.items() if cls.samples_classes]
        raise ConfigError(f"{key}.sample_rate = {st.sample_rate} needs {key}.shard_head: true and "
                          f"a head among {', '.join(sampling)} (got head '{st.head}', "
                          f"shard_head {st.shard_head})")
    if not st.shard_head:
        return
    if twin is None:
        raise ConfigError(f"{key}.shard_head: head '{st.head}' cannot be sharded "
                          f"(shardable: {', '.join(SHARDED_TWINS)})")
    if st.loss != "ce":
        raise ConfigError(f"{key}.shard_head: only loss 'ce' is sharded, got {key}.loss = '{st.loss}'")
    if st.aux_loss != "none":
        raise ConfigError(f"{key}.shard_head: feature losses are not sharded, got "
                          f"{key}.aux_loss = '{st.aux_loss}'")
    if st.grad_clip > 0:
        raise ConfigError(f"{key}.shard_head: grad_clip is not supported with a sharded head "
                          f"(got {key}.grad_clip = {st.grad_clip})")


def head_strategy(st: StageConfig, stage: int, dist: DistInfo, sample_seed: int) -> HeadStrategy:
    """The strategy of stage ``stage`` (its config ``st``), after :func:`check_shard_config`.
    ``sample_seed`` seeds the Partial-FC class sampling of a sharded head."""
    check_shard_config(st, stage)
    if st.shard_head:
        return ClassShardedHead(st, stage, dist, sample_seed)
    return ReplicatedHead(st, stage, dist)


__all__ = ["HeadStrategy", "ReplicatedHead", "ClassShardedHead", "head_strategy",
           "check_shard_config", "agree_on_overflow", "ddp"]
