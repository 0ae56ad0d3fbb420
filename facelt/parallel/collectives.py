"""Every collective of facelt: plain reductions and gathers, and the autograd-aware ones of the
class-sharded (tensor-parallel) heads.

Plain: :func:`all_reduce_sum` (in place), :func:`all_reduce_max` / :func:`all_reduce_min`
(detached copies), :func:`barrier`, :func:`all_gather_padded` (rows of any count),
:func:`gather_to_primary` (rows on rank 0 only), :func:`all_gather_objects` (picklable values).

Two kinds of tensors meet in a sharded head: *replicated* ones, equal on every rank (the
all-gathered batch, the memory feature, the loss), and *local* ones, different on each rank (a
rank's slice of the logits, its centroids).  The convention (Megatron's conjugate ``f`` / ``g``
pair) is that a replicated tensor carries its FULL gradient on every rank:

* :func:`copy_to_shards` (``f``) marks where a replicated tensor enters rank-local work: identity
  forward; backward all-reduce-sums the rank-local partial gradients into the full one.
* :func:`reduce_from_shards` (``g``) sums local tensors into a replicated one: all-reduce-sum
  forward; identity backward.
* :func:`gather_rows` all-gathers each rank's batch rows (sizes may differ); its backward returns
  each rank its own rows of the (full, summed) gradient, times ``grad_scale``.  When the backbone
  is wrapped in DDP, which AVERAGES its gradients over ranks, pass ``grad_scale = world_size`` (as
  insightface's Partial FC does) so the backbone ends with the gradient of the global-batch loss.
* :func:`reduce_min_from_shards` is the all-reduced minimum; its gradient goes to the one rank
  holding the minimum (the lowest rank on ties, so it agrees with ``argmin`` over all classes).
* :func:`all_reduce_max` is a detached all-reduced maximum (for softmax stabilisation).

Outside an initialised process group (or with one process) every collective is the identity, so
the same code runs unsharded.  A ``group`` argument selects a sub-group (default: the world).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size(group=None) -> int:
    """Processes in ``group`` (1 outside an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def rank(group=None) -> int:
    """This process's rank in ``group`` (0 outside an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``t`` over the ranks IN PLACE and return it (identity in one process). NCCL reduces
    device tensors only: pass a tensor on this rank's device."""
    return _all_reduce(t, dist.ReduceOp.SUM, group)


def barrier(group=None) -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if world_size(group) > 1:
        dist.barrier(group=group)


def all_gather_objects(obj, group=None) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    world = world_size(group)
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def gather_to_primary(x: torch.Tensor, sizes: list[int], group=None) -> list[torch.Tensor] | None:
    """Every rank's rows of ``x`` (rank r holds ``sizes[r]`` rows; other dimensions equal) on
    rank 0 only, in rank order, on rank 0's device; ``None`` on the other ranks (collective). Rank 0
    holds the whole table while gathering, the others never do."""
    world = world_size(group)
    if world == 1:
        return [x]
    pad = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x
    bufs = [torch.empty_like(pad) for _ in range(world)] if rank(group) == 0 else None
    dist.gather(pad, bufs, dst=dist.get_global_rank(group, 0) if group is not None else 0,
                group=group)
    if bufs is None:
        return None
    return [b[:n] for b, n in zip(bufs, sizes)]


class _CopyToShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.contiguous().clone(), dist.ReduceOp.SUM, ctx.group), None


class _ReduceFromShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.contiguous().clone(), dist.ReduceOp.SUM, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_shards(x: torch.Tensor, group=None) -> torch.Tensor:
    """Identity; backward sums the gradient over ranks (a replicated tensor entering local work)."""
    if world_size(group) == 1:
        return x
    return _CopyToShards.apply(x, group)


def reduce_from_shards(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over ranks (replicated result); backward passes the gradient through."""
    if world_size(group) == 1:
        return x
    return _ReduceFromShards.apply(x, group)


def all_reduce_max(x: torch.Tensor, group=None) -> torch.Tensor:
    """Element-wise maximum over ranks, detached (no gradient)."""
    return _all_reduce(x.detach().contiguous().clone(), dist.ReduceOp.MAX, group)


def all_reduce_min(x: torch.Tensor, group=None) -> torch.Tensor:
    """Element-wise minimum over ranks, detached (no gradient)."""
    return _all_reduce(x.detach().contiguous().clone(), dist.ReduceOp.MIN, group)


def gather_sizes(n: int, device: torch.device, group=None) -> list[int]:
    """Every rank's row count, in rank order."""
    world = world_size(group)
    if world == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine, group=group)
    return [int(t.item()) for t in out]


def all_gather_padded(x: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Each rank's ``x`` (first dimensions may differ), in rank order, as plain tensors (no grad)."""
    world = world_size(group)
    if world == 1:
        return [x.detach()]
    sizes = gather_sizes(x.shape[0], x.device, group)
    top = max(sizes)
    pad = x.detach().new_zeros((top,) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x.detach()
    out = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(out, pad.contiguous(), group=group)
    return [t[:n] for t, n in zip(out, sizes)]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, grad_scale):
        parts = all_gather_padded(x, group)
        me = rank(group)
        ctx.start = sum(p.shape[0] for p in parts[:me])
        ctx.rows = x.shape[0]
        ctx.grad_scale = grad_scale
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        mine = grad[ctx.start: ctx.start + ctx.rows]
        if ctx.grad_scale != 1.0:
            mine = mine * ctx.grad_scale
        return mine, None, None


def gather_rows(x: torch.Tensor, group=None, grad_scale: float = 1.0) -> torch.Tensor:
    """Concatenate every rank's rows of ``x`` in rank order (a replicated tensor).

    Backward: this rank's rows of the full gradient, times ``grad_scale``.  Row counts may differ
    between ranks.  Integer tensors (labels) are gathered the same way, without autograd.
    """
    if world_size(group) == 1:
        return x if grad_scale == 1.0 or not x.requires_grad else _scale_grad(x, grad_scale)
    if not x.is_floating_point():
        return torch.cat(all_gather_padded(x, group), 0)
    return _GatherRows.apply(x, group, float(grad_scale))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGrad.apply(x, float(scale))


class _ReduceMin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        total = _all_reduce(x.detach().contiguous().clone(), dist.ReduceOp.MIN, group)
        world, me = world_size(group), rank(group)
        # the lowest rank that holds each minimum owns its gradient
        holder = torch.where(x.detach() == total, torch.full_like(x, me, dtype=torch.int64),
                             torch.full_like(x, world, dtype=torch.int64))
        owner = _all_reduce(holder, dist.ReduceOp.MIN, group)
        ctx.save_for_backward(owner == me)
        ctx.mark_non_differentiable(owner)
        return total, owner

    @staticmethod
    def backward(ctx, grad, _grad_owner):
        (mine,) = ctx.saved_tensors
        return grad * mine.to(grad.dtype), None


def reduce_min_from_shards(x: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise minimum of ``x`` over ranks and the rank holding it (lowest on ties).

    Returns ``(minimum, owner_rank)``, both replicated; the gradient of ``minimum`` goes to the
    owning rank's ``x`` only.
    """
    if world_size(group) == 1:
        return x, torch.zeros_like(x, dtype=torch.int64)
    return _ReduceMin.apply(x, group)
