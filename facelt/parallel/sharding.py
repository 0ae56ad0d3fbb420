"""``stageN.shard_head: true``: train with the class-sharded heads of :mod:`facelt.parallel.sharded_heads`.

Each process owns a contiguous slice of the K classes and their rows of every ``K x d`` table
(classifier, centroids, hallucinator). This module joins those heads to the trainer:

* :func:`check_shard_config` refuses what the sharded path does not do (heads other than
  ``meta`` / ``arcface`` / ``cosface`` / ``linear``, losses other than ``ce``, feature losses,
  ``grad_clip``, ``sample_rate < 1`` without a sampling head);
* :func:`shard_head` replaces ``net.head`` (built unsharded from the seed, the same on every rank)
  by this rank's sharded head, cut from the unsharded one, so a sharded run starts from the very
  weights an unsharded run starts from;
* :class:`ShardedModel` is what the loop calls under torchrun: the embedding part (backbone,
  attention, neck) wrapped in DDP, the head outside it (its sharded tables differ by rank; its
  replicated selector receives the full gradient on every rank from the collectives, so it needs
  no averaging). The features' gradient is scaled by the world size (``feature_grad_scale``) so
  DDP's average gives the backbone the global batch's gradient, as Partial FC does;
* :class:`ShardedStageLoss`: sharded cross-entropy + the sharded discriminative-centroid loss over
  the all-gathered batch; train accuracy from a distributed top-1 (counted once, on rank 0);
* :func:`init_sharded_centroids`: per-class means per shard, each rank embedding its own share of
  the training set; nothing ``K x d`` is built;
* checkpoints are consolidated (:func:`consolidated_model_state`,
  :func:`consolidated_optimizer_state`: same keys and shapes as an unsharded run, SGD momentum
  included) and cut again on load (:func:`shard_model_state`, :func:`shard_optimizer_state`), so
  sharded and unsharded checkpoints are interchangeable; the world size may change on resume;
* validation uses :func:`evaluation_net`: the consolidated, unsharded network on rank 0.

With one process ``shard_head`` builds the sharded head over a world of one: every collective is
the identity and the run computes what the unsharded head computes (``sample_rate`` still works).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from facelt.parallel import collectives as col
from facelt.config import StageConfig
from facelt.errors import ConfigError
from facelt.parallel.sharded_losses import ShardedDiscCentroidLoss, sharded_cross_entropy
from facelt.models.heads import Head
from facelt.models.net import OLTRNet
from facelt.parallel.sharded_heads import (ShardedHeadMixin, ShardedLinearHead, ShardedMarginHead,
                                   ShardedMetaEmbeddingHead, accumulate_shard_sums, class_range,
                                   shard_state)
from facelt.parallel import process as D
from facelt.utils.progress import progress

SHARDABLE_HEADS = ("meta", "arcface", "cosface", "linear")
SAMPLING_HEADS = ("arcface", "cosface", "linear")


def check_shard_config(st: StageConfig, stage: int) -> None:
    """Refuse the settings the sharded path does not support, naming the key."""
    key = f"stage{stage}"
    if st.sample_rate < 1.0 and not (st.shard_head and st.head in SAMPLING_HEADS):
        raise ConfigError(f"{key}.sample_rate = {st.sample_rate} needs {key}.shard_head: true and "
                          f"a head among {', '.join(SAMPLING_HEADS)} (got head '{st.head}', "
                          f"shard_head {st.shard_head})")
    if not st.shard_head:
        return
    if st.head not in SHARDABLE_HEADS:
        raise ConfigError(f"{key}.shard_head: head '{st.head}' cannot be sharded "
                          f"(shardable: {', '.join(SHARDABLE_HEADS)})")
    if st.loss != "ce":
        raise ConfigError(f"{key}.shard_head: only loss 'ce' is sharded, got {key}.loss = '{st.loss}'")
    if st.aux_loss != "none":
        raise ConfigError(f"{key}.shard_head: feature losses are not sharded, got "
                          f"{key}.aux_loss = '{st.aux_loss}'")
    if st.grad_clip > 0:
        raise ConfigError(f"{key}.shard_head: grad_clip is not supported with a sharded head "
                          f"(got {key}.grad_clip = {st.grad_clip})")


def is_sharded(head: nn.Module) -> bool:
    return isinstance(head, ShardedHeadMixin)


def build_sharded_head(st: StageConfig, in_dim: int, num_classes: int, dist: D.DistInfo,
                       sample_seed: int) -> Head:
    """This rank's sharded head named by ``st.head`` (freshly initialised)."""
    rank, world, scale = dist.rank, dist.world_size, float(dist.world_size)
    if st.head == "meta":
        return ShardedMetaEmbeddingHead(in_dim, num_classes, rank=rank, world=world,
                                        reach_scale=st.meta.reach_scale, cos_scale=st.cosine.scale,
                                        feature_grad_scale=scale)
    if st.head in ("arcface", "cosface"):
        return ShardedMarginHead(in_dim, num_classes, kind=st.head, s=st.margin.s, m=st.margin.m,
                                 rank=rank, world=world, sample_rate=st.sample_rate,
                                 sample_seed=sample_seed, feature_grad_scale=scale)
    if st.head == "linear":
        return ShardedLinearHead(in_dim, num_classes, rank=rank, world=world,
                                 sample_rate=st.sample_rate, sample_seed=sample_seed,
                                 feature_grad_scale=scale)
    raise ConfigError(f"head '{st.head}' cannot be sharded (shardable: {', '.join(SHARDABLE_HEADS)})")


def shard_head(net: OLTRNet, st: StageConfig, num_classes: int, dist: D.DistInfo,
               sample_seed: int) -> None:
    """Replace ``net.head`` (unsharded, identical on every rank) by this rank's shard of it."""
    full = net.head.state_dict()
    head = build_sharded_head(st, net.neck.out_dim, num_classes, dist, sample_seed)
    head.load_shard(full)
    net.head = head


class EmbeddingPart(nn.Module):
    """The network minus its head (backbone -> attention -> neck), sharing ``net``'s modules: the
    part DDP wraps when the head is sharded."""

    def __init__(self, net: OLTRNet) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.attention = net.attention
        self.neck = net.neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.backbone(x)
        if self.attention is not None:
            fmap = self.attention(fmap)
        return self.neck(fmap)


class ShardedModel(nn.Module):
    """``net`` with its embedding part under DDP and its sharded head outside it; called like
    ``net``: ``model(x, labels) -> dict(logits, features, aux)``."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
        features = self.body(x)
        logits, aux = self.head(features, labels)
        return {"logits": logits, "features": features, "aux": aux}


def wrap_sharded_for_ddp(net: OLTRNet, dist: D.DistInfo) -> nn.Module:
    """The model the loop calls: ``net`` in one process, else :class:`ShardedModel` (DDP around
    the embedding part when it has anything to train)."""
    if not dist.distributed:
        return net
    body: nn.Module = EmbeddingPart(net)
    if any(p.requires_grad for p in body.parameters()):
        from torch.nn.parallel import DistributedDataParallel as DDP
        dev = [dist.device.index] if dist.device.type == "cuda" else None
        body = DDP(body, device_ids=dev)
    return ShardedModel(body, net.head)


@torch.no_grad()
def sharded_predictions(logits: torch.Tensor, aux: dict, head: ShardedHeadMixin) -> torch.Tensor:
    """The arg-max class over all K (lowest index on ties) of every row of the global batch, from
    this rank's columns (the sampled ones when ``aux["sampled"]`` is set)."""
    logits = logits.detach().float()
    classes = aux.get("sampled")
    if classes is None:
        classes = torch.arange(logits.shape[1], device=logits.device) + head.class_start
    rows = logits.shape[0]
    if logits.shape[1]:
        local_top = logits.max(1).values
    else:
        local_top = logits.new_full((rows,), float("-inf"))
    top = col.all_reduce_max(local_top, head.group)
    big = torch.iinfo(torch.int64).max
    if logits.shape[1]:
        cand = torch.where(logits == top.unsqueeze(1), classes.unsqueeze(0),
                           torch.full_like(logits, big, dtype=torch.int64)).min(1).values
    else:
        cand = torch.full((rows,), big, dtype=torch.int64, device=logits.device)
    return col.all_reduce_min(cand, head.group)


class ShardedStageLoss:
    """The objective of a stage with a sharded head: ``sharded_cross_entropy`` (+ the sharded
    centroid loss for the meta head). Its terms are replicated (the global batch's means); the
    logged ``correct`` is the global batch's count on rank 0 and 0 elsewhere, so sums over ranks
    count each image once."""

    def __init__(self, st: StageConfig, head: ShardedHeadMixin, num_classes: int) -> None:
        self.head = head
        self.num_classes = num_classes
        cl = st.centroid_loss
        self.centroid = None
        self.centroid_weight = cl.weight
        if head.uses_centroid_loss and cl.weight > 0:
            self.centroid = ShardedDiscCentroidLoss(margin=cl.margin, repel_weight=cl.repel_weight,
                                                    centroid_update=cl.update, group=head.group)

    def to(self, device: torch.device) -> "ShardedStageLoss":
        return self

    def __call__(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        aux = out["aux"]
        ce = sharded_cross_entropy(out["logits"], aux["targets"], self.head.group)
        loss, parts = ce, {"ce": ce.detach()}
        if self.centroid is not None:
            cl = self.centroid(aux["direct"].float(), aux["targets"], self.head.centroids,
                               self.num_classes)
            loss = loss + self.centroid_weight * cl
            parts["centroid"] = cl.detach()
        best = sharded_predictions(out["logits"], aux, self.head)
        correct = (best == aux["labels"]).sum() if col.rank(self.head.group) == 0 else best.new_zeros(())
        parts["correct"] = correct
        return loss, parts


@torch.no_grad()
def agree_on_overflow(net: OLTRNet, scaler: torch.amp.GradScaler) -> None:
    """AMP with a sharded head: after ``backward``, before ``scaler.step``. The scaler skips a step
    when the gradients ITS rank sees overflowed; the sharded tables' gradients differ by rank, so
    when any rank's are non-finite every rank marks one of its gradients non-finite too, and all
    ranks skip the step and lower the scale together (collective; no-op without AMP or in one
    process)."""
    head = net.head
    if not scaler.is_enabled() or not is_sharded(head) or head.world == 1:
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


@torch.no_grad()
def init_sharded_centroids(net: OLTRNet, dataset, batch_size: int, num_workers: int,
                           dist: D.DistInfo) -> torch.Tensor:
    """Centroids of a sharded head = per-class mean direct feature over ``dataset`` (test
    transforms): each rank embeds its unpadded share; every batch's rows are gathered and each
    shard adds those of its own classes (float64 sums). Returns this shard's class counts."""
    from torch.utils.data import Subset

    from facelt.data.build import eval_indices, make_loader
    head = net.head
    was_training = net.training
    net.eval()
    idx = eval_indices(len(dataset), dist.rank, dist.world_size)
    loader = make_loader(Subset(dataset, idx), batch_size, num_workers)
    steps = torch.tensor([float(len(loader))], device=dist.device)
    steps = int(col.all_reduce_max(steps).item())  # every rank joins every gather
    dim = head.centroids.shape[1]
    sums = torch.zeros(head.local_classes, dim, dtype=torch.float64, device=dist.device)
    counts = torch.zeros(head.local_classes, dtype=torch.float64, device=dist.device)
    batches = iter(loader)
    for _ in progress(range(steps), desc="centroids (sharded)", unit="batch",
                      disable=not dist.is_primary):
        batch = next(batches, None)
        if batch is None:
            f = torch.zeros(0, dim, dtype=torch.float64, device=dist.device)
            y = torch.zeros(0, dtype=torch.int64, device=dist.device)
        else:
            x, y, _ = batch
            f = net.embed(x.to(dist.device, non_blocking=True)).double()
            y = torch.as_tensor(y, device=dist.device).long()
        accumulate_shard_sums(sums, counts, f, y, head.class_start, head.group)
    head.init_centroids_from_sums(sums, counts)
    net.train(was_training)
    return counts


# ---- checkpoints: consolidated on save, cut on load -------------------------------------------

def gather_shards_to_primary(local: torch.Tensor, head: ShardedHeadMixin) -> torch.Tensor:
    """The whole ``(K, ...)`` table from every rank's rows of it, on rank 0 and on the CPU
    (collective); other ranks get their own rows back. Only rank 0 ever holds all K rows (one
    table at a time, on its device while gathering), never every rank."""
    import torch.distributed as tdist
    world, rank = head.world, head.shard_rank
    local = local.detach()
    if world == 1:
        return local.cpu().clone()
    sizes = [class_range(head.num_classes, r, world)[1] - class_range(head.num_classes, r, world)[0]
             for r in range(world)]
    pad = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
    pad[: local.shape[0]] = local
    bufs = [torch.empty_like(pad) for _ in range(world)] if rank == 0 else None
    tdist.gather(pad, bufs, dst=0, group=head.group)
    if rank != 0:
        return local
    return torch.cat([b[:n].cpu() for b, n in zip(bufs, sizes)], 0)


def consolidated_model_state(net: OLTRNet) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` with the head unsharded (collective when the head is sharded): on
    rank 0 the same keys and shapes as the unsharded network (the gathered tables on the CPU);
    other ranks, which do not write checkpoints, keep their own rows."""
    state = net.state_dict()
    head = net.head
    if not is_sharded(head):
        return state
    out = {}
    for k, v in state.items():
        name = k[len("head."):] if k.startswith("head.") else None
        out[k] = gather_shards_to_primary(v, head) if name in head.sharded_keys else v
    return out


def shard_model_state(net: OLTRNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's cut of an unsharded model state dict (unchanged when the head is not sharded)."""
    head = net.head
    if not is_sharded(head):
        return state
    keys = tuple("head." + k for k in head.sharded_keys)
    return shard_state(state, keys, head.num_classes, head.shard_rank, head.world)


def sharded_parameter_indices(net: OLTRNet, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Index in ``optimizer.state_dict()["state"]`` -> name, of the sharded head parameters."""
    head = net.head
    if not is_sharded(head):
        return {}
    by_id = {id(p): n for n, p in head.named_parameters() if n in head.sharded_keys}
    out, i = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in by_id:
                out[i] = by_id[id(p)]
            i += 1
    return out


def consolidated_optimizer_state(net: OLTRNet, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with the per-parameter state (SGD momentum) of the sharded rows
    gathered on rank 0 (collective: every rank calls it in the same order)."""
    state = optimizer.state_dict()
    sharded = sharded_parameter_indices(net, optimizer)
    if not sharded:
        return state
    out = dict(state)
    out["state"] = {}
    for i in sorted(set(state["state"]) | set(sharded)):
        entry = state["state"].get(i)
        if i not in sharded:
            out["state"][i] = entry
            continue
        # every rank has the same entries (same steps), so the gathers line up
        new = {}
        for k, v in (entry or {}).items():
            if torch.is_tensor(v) and v.dim() >= 1:
                v = gather_shards_to_primary(v, net.head)
            new[k] = v
        if entry is not None:
            out["state"][i] = new
    return out


def shard_optimizer_state(net: OLTRNet, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """This rank's cut of an unsharded optimizer state dict (rows of the sharded parameters)."""
    sharded = sharded_parameter_indices(net, optimizer)
    if not sharded:
        return state
    head = net.head
    start, stop = class_range(head.num_classes, head.shard_rank, head.world)
    out = dict(state)
    out["state"] = {}
    for i, entry in state["state"].items():
        i = int(i)
        if i in sharded and entry is not None:
            entry = {k: (v[start:stop] if torch.is_tensor(v) and v.dim() >= 1 else v)
                     for k, v in entry.items()}
        out["state"][i] = entry
    return out


def evaluation_net(net: OLTRNet, is_primary: bool) -> Optional[OLTRNet]:
    """The network to evaluate on rank 0: ``net`` itself, or (sharded head, collective) an
    unsharded copy with the consolidated head; ``None`` on other ranks of a sharded run."""
    if not is_sharded(net.head):
        return net
    full_state = consolidated_model_state(net)  # collective
    if not is_primary:
        return None
    state = {k[len("head."):]: v for k, v in full_state.items() if k.startswith("head.")}
    device = next(net.head.parameters()).device
    full = unsharded_head(net.head)
    full.load_state_dict(state)
    full.to(device)
    twin = OLTRNet(net.backbone, net.neck, full, attention=net.attention)  # shares the body
    twin.train(net.training)
    return twin


def unsharded_head(head: ShardedHeadMixin) -> Head:
    """A fresh unsharded head of the same kind and settings as ``head`` (all K classes)."""
    k = head.num_classes
    if isinstance(head, ShardedMetaEmbeddingHead):
        from facelt.models.heads import MetaEmbeddingHead
        return MetaEmbeddingHead(head.selector.in_features, k, reach_scale=head.reach_scale,
                                 cos_scale=head.cosine.scale, eps=head.eps)
    if isinstance(head, ShardedMarginHead):
        from facelt.models.heads import MarginHead
        return MarginHead(head.weight.shape[1], k, kind=head.kind, s=head.s, m=head.m)
    if isinstance(head, ShardedLinearHead):
        from facelt.models.heads import LinearHead
        return LinearHead(head.fc.in_features, k)
    raise TypeError(f"no unsharded form of {type(head).__name__}")


__all__ = ["SHARDABLE_HEADS", "check_shard_config", "is_sharded", "build_sharded_head",
           "shard_head", "EmbeddingPart", "ShardedModel", "wrap_sharded_for_ddp",
           "sharded_predictions", "ShardedStageLoss", "agree_on_overflow", "init_sharded_centroids",
           "consolidated_model_state", "shard_model_state", "sharded_parameter_indices",
           "consolidated_optimizer_state", "shard_optimizer_state", "evaluation_net",
           "unsharded_head"]
