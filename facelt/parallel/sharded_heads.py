"""Class-sharded heads (Partial-FC style) for identity-scale training under torchrun.

Each rank owns a contiguous slice of the K classes (:func:`class_range`: the first ``K mod N``
ranks one class more) and that slice's rows of every ``K x d`` table: classifier, centroids,
hallucinator.  Each rank's batch rows are all-gathered (:func:`facelt.parallel.collectives.gather_rows`),
every rank computes the logits of its own classes for the whole global batch, and everything that
needs all K classes goes through a reduction (:mod:`facelt.parallel.collectives`):

* hallucinator softmax over K: all-reduced row maximum (detached) and all-reduced sum of exps;
  memory ``softmax(T_hal v) @ C`` = all-reduced sum of the local ``exp(.) @ C_local`` / that sum;
* reachability ``min_k ||v - c_k||``: local squared distances from one matmul (float32 at least),
  local row minimum, all-reduced minimum (gradient to the rank that holds it);
* the cosine classifier's cross-entropy and the centroid loss: :mod:`facelt.parallel.sharded_losses`.

No rank holds a ``B x K`` tensor of all classes (only ``B x K/N``) nor anything ``B x K x d``.
The heads subclass the single-process ones built with ``K_local`` classes, so their parameter
names are the unsharded head's; :func:`shard_state` / :meth:`ShardedHeadMixin.load_shard` cut an
unsharded state dict for a rank (the consolidation back, for checkpoints, is
:mod:`facelt.parallel.sharded_state`).  With one process every collective is the identity, and
the heads compute exactly what the unsharded ones do.

Each sharded head is the twin of one unsharded head: :data:`SHARDED_TWINS` (head name of
:data:`facelt.models.head_table.HEADS` -> sharded class) is the one table of that relation. A
twin builds itself from its unsharded head (:meth:`from_head`: same settings, this rank's rows of
its weights) and gives back an empty unsharded head of the same settings (:meth:`unsharded`, for
the evaluation copy); both are built on the meta device, so neither draws from the RNG. Adding a
sharded twin = its class here + one entry in :data:`SHARDED_TWINS`.

The ``B`` rows each rank sees are the concatenation of every rank's batch in rank order; the
heads' ``aux["labels"]`` is the matching label vector and ``aux["targets"]`` each row's column in
this rank's logits (-1 where the class lives on another rank), which the sharded losses take.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from facelt.parallel import collectives as col
from facelt.models.head_math import at_least_float32, nearest_squared, normalize_rows
from facelt.models.heads import (Aux, Head, LinearHead, MarginHead, MetaEmbeddingHead,
                                 copy_class_means)


def class_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of the classes rank ``rank`` of ``world`` owns: contiguous slices, the
    first ``num_classes % world`` ranks one class more than the last ones."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    if num_classes < world:
        raise ValueError(f"{num_classes} classes cannot be sharded over {world} processes "
                         "(every rank needs at least one class)")
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_state(state: dict[str, torch.Tensor], sharded_keys: tuple[str, ...], num_classes: int,
                rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s part of an unsharded head state dict: the rows ``class_range`` of every
    key in ``sharded_keys``; every other entry unchanged."""
    start, stop = class_range(num_classes, rank, world)
    out = {}
    for key, value in state.items():
        if key in sharded_keys:
            if value.shape[0] != num_classes:
                raise ValueError(f"head state '{key}' has {value.shape[0]} rows, expected "
                                 f"{num_classes} (one per class)")
            value = value[start:stop]
        out[key] = value
    return out


@torch.no_grad()
def accumulate_shard_sums(sums: torch.Tensor, counts: torch.Tensor, features: torch.Tensor,
                          labels: torch.Tensor, class_start: int, group=None) -> None:
    """Per-shard centroid initialisation: add every rank's ``(features, labels)`` rows whose class
    lies in ``[class_start, class_start + len(sums))`` into this shard's ``sums (K_local, d)`` and
    ``counts (K_local,)`` (in place, in their dtype; float64 recommended).  Collective: every rank
    calls it once per batch of its own data share (row counts may differ, labels -1 are skipped);
    afterwards each shard holds its classes' sums over ALL ranks' data, no further reduction needed
    (then ``head.init_centroids_from_sums(sums, counts)``)."""
    feats = torch.cat(col.all_gather_padded(features.detach(), group), 0)
    labels = torch.cat(col.all_gather_padded(labels.long(), group), 0)
    keep = (labels >= class_start) & (labels < class_start + sums.shape[0])
    local = labels[keep] - class_start
    sums.index_add_(0, local, feats[keep].to(sums.dtype))
    counts.index_add_(0, local, torch.ones_like(local, dtype=counts.dtype))


def build_on_meta(factory: Callable[[], nn.Module], device: torch.device | str) -> nn.Module:
    """``factory()`` built on the meta device, then given uninitialised storage on ``device``: no
    initialisation is computed and nothing is drawn from the RNG (load a state dict into it)."""
    with torch.device("meta"):
        module = factory()
    return module.to_empty(device=device)


class ShardedHeadMixin:
    """Shard bookkeeping shared by the sharded heads (set up by :meth:`_setup_shard`).

    A sharded class declares ``unsharded_class`` (the head it shards), ``sharded_keys`` (its
    per-class tables, one row per class), ``samples_classes`` (Partial-FC ``sample_rate``
    support) and :meth:`settings` (the constructor settings both classes share)."""

    unsharded_class: type[Head]
    sharded_keys: tuple[str, ...] = ()
    samples_classes = False

    @staticmethod
    def settings(head: Head) -> dict:
        """The constructor keyword arguments (besides ``num_classes``) that ``head`` (sharded or
        not) was built with."""
        raise NotImplementedError

    @classmethod
    def from_head(cls, head: Head, rank: int, world: int, group=None,
                  feature_grad_scale: float = 1.0, **options) -> "ShardedHeadMixin":
        """Rank ``rank``'s twin of the unsharded ``head``: the same settings and this rank's rows
        of ``head``'s weights, on ``head``'s device (nothing drawn from the RNG). ``options``:
        ``sample_rate`` / ``sample_seed`` for the heads that sample classes."""
        state = head.state_dict()
        rows = state[cls.sharded_keys[0]]
        twin = build_on_meta(lambda: cls(num_classes=rows.shape[0], rank=rank, world=world,
                                         group=group, feature_grad_scale=feature_grad_scale,
                                         **cls.settings(head), **options), rows.device)
        twin.load_shard(state)
        trainable = {n: p.requires_grad for n, p in head.named_parameters()}
        for name, p in twin.named_parameters():
            p.requires_grad_(trainable[name])
        return twin

    def unsharded(self) -> Head:
        """An EMPTY unsharded head of this kind and settings for all K classes, on this head's
        device (nothing drawn from the RNG): load the consolidated state dict into it."""
        device = next(iter(self.state_dict().values())).device
        return build_on_meta(lambda: self.unsharded_class(num_classes=self.num_classes,
                                                          **self.settings(self)), device)

    def _setup_shard(self, num_classes: int, rank: int | None, world: int | None, group,
                     feature_grad_scale: float) -> tuple[int, int]:
        self.group = group
        self.world = col.world_size(group) if world is None else world
        self.shard_rank = col.rank(group) if rank is None else rank
        self.num_classes = num_classes
        self.class_start, self.class_stop = class_range(num_classes, self.shard_rank, self.world)
        self.feature_grad_scale = feature_grad_scale
        return self.class_start, self.class_stop

    @property
    def local_classes(self) -> int:
        return self.class_stop - self.class_start

    def gather_batch(self, v: torch.Tensor, labels: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every rank's features (autograd-aware) and labels, concatenated in rank order."""
        feats = col.gather_rows(v, self.group, self.feature_grad_scale)
        if labels is not None:
            labels = col.gather_rows(labels.long(), self.group)
        return feats, labels

    def local_targets(self, labels: torch.Tensor | None, rows: int, device) -> torch.Tensor:
        """Each row's column in this rank's logits, -1 where its class lives on another rank."""
        if labels is None:
            return torch.full((rows,), -1, dtype=torch.int64, device=device)
        mine = (labels >= self.class_start) & (labels < self.class_stop)
        return torch.where(mine, labels - self.class_start, torch.full_like(labels, -1))

    def _setup_sampling(self, sample_rate: float, sample_seed: int) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.sample_seed = int(sample_seed)
        self.sample_step = 0

    def set_sample_step(self, step: int) -> None:
        """The step the next training forward samples for (set it on resume)."""
        self.sample_step = int(step)

    def sampled_classes(self, labels: torch.Tensor, step: int) -> torch.Tensor:
        """This rank's sampled classes (LOCAL indices, sorted) for a global batch's ``labels``:
        every class present in ``labels`` and each other class ``k`` with ``u_k < sample_rate``,
        ``u = torch.rand(K)`` from a generator seeded with ``sample_seed + step``."""
        gen = torch.Generator().manual_seed(self.sample_seed + step)
        u = torch.rand(self.num_classes, generator=gen)[self.class_start:self.class_stop]
        keep = u < self.sample_rate
        mine = labels[(labels >= self.class_start) & (labels < self.class_stop)] - self.class_start
        keep[mine.cpu()] = True
        return torch.nonzero(keep, as_tuple=True)[0].to(labels.device)

    def sample_rows(self, labels: torch.Tensor | None, targets: torch.Tensor, aux: Aux
                    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(chosen local classes or None, targets remapped to the chosen columns)``; sampling
        happens in training with labels and ``sample_rate < 1`` only (``aux["sampled"]``: the
        chosen classes' global indices)."""
        if labels is None or not self.training or self.sample_rate >= 1.0:
            return None, targets
        chosen = self.sampled_classes(labels, self.sample_step)
        self.sample_step += 1
        column = torch.full((self.local_classes,), -1, dtype=torch.int64, device=targets.device)
        column[chosen] = torch.arange(chosen.numel(), device=targets.device)
        aux["sampled"] = chosen + self.class_start
        return chosen, torch.where(targets >= 0, column[targets.clamp_min(0)], targets)

    def load_shard(self, state: dict[str, torch.Tensor], strict: bool = True):
        """Load this rank's part of an UNSHARDED head state dict."""
        return self.load_state_dict(shard_state(state, self.sharded_keys, self.num_classes,
                                                self.shard_rank, self.world), strict=strict)

    def shard_rows(self, table: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a per-class table ``(K, ...)`` (class counts, class means)."""
        if table.shape[0] != self.num_classes:
            raise ValueError(f"per-class table has {table.shape[0]} rows, expected {self.num_classes}")
        return table[self.class_start:self.class_stop]


class ShardedMetaEmbeddingHead(ShardedHeadMixin, MetaEmbeddingHead):
    """:class:`MetaEmbeddingHead` with the class tables sharded over the ranks of ``group``.

    ``forward(v_local, labels_local)`` returns this rank's logits ``(B, K_local)`` for the global
    batch ``B`` (every rank's rows) and ``aux`` with the replicated ``direct`` (gathered features),
    ``labels``, ``memory``, ``selector``, ``reachability``, ``meta``, ``nearest`` (global class
    index) and ``targets`` (local columns).  ``feature_grad_scale``: see
    :func:`facelt.parallel.collectives.gather_rows` (the world size when the backbone is under DDP).
    """

    unsharded_class = MetaEmbeddingHead
    sharded_keys = ("centroids", "hallucinator.weight", "hallucinator.bias", "cosine.weight")

    @staticmethod
    def settings(head: MetaEmbeddingHead) -> dict:
        return {"in_dim": head.selector.in_features, "reach_scale": head.reach_scale,
                "cos_scale": head.cosine.scale, "eps": head.eps}

    def __init__(self, in_dim: int, num_classes: int, rank: int | None = None,
                 world: int | None = None, group=None, reach_scale: float = 10.0,
                 cos_scale: float = 16.0, eps: float = 1e-6, feature_grad_scale: float = 1.0) -> None:
        start, stop = class_range(num_classes, col.rank(group) if rank is None else rank,
                                  col.world_size(group) if world is None else world)
        MetaEmbeddingHead.__init__(self, in_dim, stop - start, reach_scale=reach_scale,
                                   cos_scale=cos_scale, eps=eps)
        self._setup_shard(num_classes, rank, world, group, feature_grad_scale)

    def init_centroids(self, centroids: torch.Tensor) -> None:
        """Copy this rank's rows of the per-class means ``(K, d)`` into its centroids."""
        copy_class_means(self.centroids, self.shard_rows(centroids))

    def init_centroids_from_sums(self, local_sums: torch.Tensor, local_counts: torch.Tensor) -> None:
        """Centroids from this shard's per-class feature sums ``(K_local, d)`` and counts
        ``(K_local,)`` (already summed over ranks); a class with no image gets a zero row."""
        means = local_sums / local_counts.clamp(min=1).to(local_sums.dtype).unsqueeze(1)
        copy_class_means(self.centroids, means.to(self.centroids.dtype))

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        g = self.group
        feats, labels = self.gather_batch(v, labels)
        centroids = self.centroids.detach()          # read detached, as the unsharded head
        with torch.autocast(feats.device.type, enabled=False):
            v32 = at_least_float32(feats)                        # replicated (B, d)
            local_in = col.copy_to_shards(v32, g)                # enters rank-local work
            c = centroids.to(v32.dtype)
            d2_local, idx_local = nearest_squared(local_in, c)   # (B,) over this rank's classes
            d2_min, owner = col.reduce_min_from_shards(d2_local, g)
            gamma = d2_min.clamp_min(self.eps ** 2).sqrt()
            reachability = self.reach_scale / gamma
            nearest = col.reduce_from_shards(
                torch.where(owner == self.shard_rank, idx_local + self.class_start,
                            torch.zeros_like(idx_local)), g)
            hal = self.hallucinator(local_in)                    # (B, K_local)
            top = col.all_reduce_max(hal.max(1).values, g)
            exp = torch.exp(hal - top.unsqueeze(1))
            sum_exp = col.reduce_from_shards(exp.sum(1), g)
            memory = col.reduce_from_shards(exp @ c, g) / sum_exp.unsqueeze(1)
            selector = torch.tanh(self.selector(v32))            # replicated weights, full grads
            meta = reachability.unsqueeze(1) * (v32 + selector * memory)
        logits, _ = self.cosine(col.copy_to_shards(meta, g))
        aux = {"direct": feats, "labels": labels, "memory": memory, "selector": selector,
               "reachability": reachability, "meta": meta, "nearest": nearest,
               "targets": self.local_targets(labels, feats.shape[0], feats.device)}
        return logits, aux


class ShardedMarginHead(ShardedHeadMixin, MarginHead):
    """:class:`MarginHead` (ArcFace / CosFace) with the class weights sharded, as Partial FC.

    The margin goes on the target column of the rank that owns it.  ``sample_rate < 1`` (training
    with labels only) keeps, of this rank's classes, every class present in the global batch and
    each other class ``k`` with ``u_k < sample_rate``, where ``u = torch.rand(K)`` from a
    ``torch.Generator`` seeded with ``sample_seed + step`` (``step`` counts training forwards;
    :meth:`set_sample_step` sets it on resume).  Every rank draws the same ``u`` and reads its own
    slice, so the sampled classes do not depend on the number of processes and the ranks agree
    without communicating.  The logits then have one column per sampled class
    (``aux["sampled"]``: their global indices); unsampled classes get no gradient.
    """

    unsharded_class = MarginHead
    sharded_keys = ("weight",)
    samples_classes = True

    @staticmethod
    def settings(head: MarginHead) -> dict:
        return {"in_dim": head.weight.shape[1], "kind": head.kind, "s": head.s, "m": head.m}

    def __init__(self, in_dim: int, num_classes: int, kind: str = "arcface", s: float = 64.0,
                 m: float | None = None, rank: int | None = None, world: int | None = None,
                 group=None, sample_rate: float = 1.0, sample_seed: int = 0,
                 feature_grad_scale: float = 1.0) -> None:
        start, stop = class_range(num_classes, col.rank(group) if rank is None else rank,
                                  col.world_size(group) if world is None else world)
        MarginHead.__init__(self, in_dim, stop - start, kind=kind, s=s, m=m)
        self._setup_shard(num_classes, rank, world, group, feature_grad_scale)
        self._setup_sampling(sample_rate, sample_seed)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        feats, labels = self.gather_batch(v, labels)
        weight = self.weight
        targets = self.local_targets(labels, feats.shape[0], feats.device)
        aux: Aux = {"direct": feats, "labels": labels}
        chosen, targets = self.sample_rows(labels, targets, aux)
        if chosen is not None:
            weight = weight.index_select(0, chosen)
        cos = col.copy_to_shards(F.normalize(feats, dim=1), self.group) @ normalize_rows(weight).t()
        cos = cos.clamp(-1.0, 1.0)
        if labels is not None:
            rows = torch.nonzero(targets >= 0, as_tuple=True)[0]
            cols = targets[rows]
            cos = cos.index_put((rows, cols), self.target_logit(cos[rows, cols]))
        aux["targets"] = targets
        return self.s * cos, aux


class ShardedLinearHead(ShardedHeadMixin, LinearHead):
    """:class:`LinearHead` (the plain stage's classifier) with its rows sharded by class, and the
    same ``sample_rate`` option as :class:`ShardedMarginHead`."""

    unsharded_class = LinearHead
    sharded_keys = ("fc.weight", "fc.bias")
    samples_classes = True

    @staticmethod
    def settings(head: LinearHead) -> dict:
        return {"in_dim": head.fc.in_features}

    def __init__(self, in_dim: int, num_classes: int, rank: int | None = None,
                 world: int | None = None, group=None, sample_rate: float = 1.0,
                 sample_seed: int = 0, feature_grad_scale: float = 1.0) -> None:
        start, stop = class_range(num_classes, col.rank(group) if rank is None else rank,
                                  col.world_size(group) if world is None else world)
        LinearHead.__init__(self, in_dim, stop - start)
        self._setup_shard(num_classes, rank, world, group, feature_grad_scale)
        self._setup_sampling(sample_rate, sample_seed)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Aux]:
        feats, labels = self.gather_batch(v, labels)
        aux: Aux = {"direct": feats, "labels": labels}
        targets = self.local_targets(labels, feats.shape[0], feats.device)
        chosen, targets = self.sample_rows(labels, targets, aux)
        weight, bias = self.fc.weight, self.fc.bias
        if chosen is not None:
            weight, bias = weight.index_select(0, chosen), bias.index_select(0, chosen)
        aux["targets"] = targets
        return F.linear(col.copy_to_shards(feats, self.group), weight, bias), aux


#: head name -> its class-sharded twin (the names of facelt.models.head_table.HEADS)
SHARDED_TWINS: dict[str, type[ShardedHeadMixin]] = {
    "meta": ShardedMetaEmbeddingHead,
    "arcface": ShardedMarginHead,
    "cosface": ShardedMarginHead,
    "linear": ShardedLinearHead,
}


__all__ = ["class_range", "accumulate_shard_sums", "shard_state", "build_on_meta",
           "ShardedHeadMixin", "ShardedMetaEmbeddingHead", "ShardedMarginHead", "ShardedLinearHead",
           "SHARDED_TWINS"]
