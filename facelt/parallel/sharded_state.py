"""Checkpoints of a class-sharded head: consolidated on save, cut again on load.

A checkpoint holds the UNSHARDED network and optimizer state whatever the run: the rows of every
sharded table (and their SGD momentum) are gathered on rank 0, one table at a time, on the CPU
(:func:`consolidated_model_state`, :func:`consolidated_optimizer_state`); loading cuts this rank's
rows out again (:func:`shard_model_state`, :func:`shard_optimizer_state`). So a sharded
checkpoint evaluates, exports and resumes unsharded, an unsharded one resumes sharded, and the
number of processes may change between them (the RNG states need the same number).

``prefix`` is the head's key prefix in the network's state dict (``head.``).
"""
from __future__ import annotations

import torch

from facelt.parallel import collectives as col
from facelt.parallel.sharded_heads import ShardedHeadMixin, class_range, shard_state


def gather_shards_to_primary(local: torch.Tensor, head: ShardedHeadMixin) -> torch.Tensor:
    """The whole ``(K, ...)`` table from every rank's rows of it, on rank 0 and on the CPU
    (collective); other ranks get their own rows back. Only rank 0 ever holds all K rows (one
    table at a time, on its device while gathering), never every rank."""
    local = local.detach()
    if head.world == 1:
        return local.cpu().clone()
    sizes = [stop - start for start, stop in
             (class_range(head.num_classes, r, head.world) for r in range(head.world))]
    parts = col.gather_to_primary(local, sizes, head.group)
    if parts is None:
        return local
    return torch.cat([p.cpu() for p in parts], 0)


def consolidated_model_state(state: dict[str, torch.Tensor], head: ShardedHeadMixin,
                             prefix: str = "head.") -> dict[str, torch.Tensor]:
    """The network's ``state`` with ``head``'s tables unsharded (collective): on rank 0 the keys
    and shapes of the unsharded network (gathered tables on the CPU); other ranks, which write no
    checkpoint, keep their own rows."""
    keys = {prefix + k for k in head.sharded_keys}
    return {k: (gather_shards_to_primary(v, head) if k in keys else v) for k, v in state.items()}


def shard_model_state(state: dict[str, torch.Tensor], head: ShardedHeadMixin,
                      prefix: str = "head.") -> dict[str, torch.Tensor]:
    """This rank's cut of an unsharded network state dict."""
    keys = tuple(prefix + k for k in head.sharded_keys)
    return shard_state(state, keys, head.num_classes, head.shard_rank, head.world)


def sharded_parameter_indices(head: ShardedHeadMixin, optimizer: torch.optim.Optimizer
                              ) -> dict[int, str]:
    """Index in ``optimizer.state_dict()["state"]`` -> name, of ``head``'s sharded parameters."""
    by_id = {id(p): n for n, p in head.named_parameters() if n in head.sharded_keys}
    out, i = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in by_id:
                out[i] = by_id[id(p)]
            i += 1
    return out


def consolidated_optimizer_state(head: ShardedHeadMixin, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with the per-parameter state (SGD momentum) of the sharded rows
    gathered on rank 0 (collective: every rank calls it in the same order)."""
    state = optimizer.state_dict()
    sharded = sharded_parameter_indices(head, optimizer)
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
                v = gather_shards_to_primary(v, head)
            new[k] = v
        if entry is not None:
            out["state"][i] = new
    return out


def shard_optimizer_state(head: ShardedHeadMixin, optimizer: torch.optim.Optimizer,
                          state: dict) -> dict:
    """This rank's cut of an unsharded optimizer state dict (rows of the sharded parameters)."""
    sharded = sharded_parameter_indices(head, optimizer)
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


__all__ = ["gather_shards_to_primary", "consolidated_model_state", "shard_model_state",
           "sharded_parameter_indices", "consolidated_optimizer_state", "shard_optimizer_state"]
