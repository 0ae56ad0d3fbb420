"""The per-class arithmetic of the heads, with backward passes that touch a ``K x d`` table once.

At identity scale (K = 74.5K .. 2M classes) a head step is bound by passes over its ``K x d``
tables and ``B x K`` matrices, and on the CPU each freshly allocated table costs a page-fault pass
of its own. Autograd's generic backward of ``F.normalize(W)`` makes about seven ``K x d``
temporaries, and the backward of a row minimum over ``||v||^2 - 2 v C^T + ||C||^2`` is a full
``B x K x d`` matrix product although only one entry per row has a gradient. These functions
compute the same values, with hand-written gradients (the same formulas, rounded differently):

* :func:`squared_distances` -- ``(B, K)`` squared distances from one matmul, clamped at 0;
* :func:`nearest_squared` -- each row's smallest squared distance and its class; gradient
  ``2 g (v - c_nearest)`` (``B x d``), none through the ``B x K`` matrix;
* :func:`normalize_rows` -- ``W / max(||w_k||, eps)`` row-wise (``F.normalize``); gradient
  ``g / n - w (w . g) / n^3`` in one ``K x d`` buffer.

Every custom function here is linear in its incoming gradient, so a GradScaler's loss scale passes
through it unchanged, and its backward does not depend on the autocast state (it computes in the
dtypes its forward saved).
"""
from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a half type (float16 / bfloat16); float32 / float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def squash(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``(||x|| / (1 + ||x||)) * x / ||x||``, written as ``x / (1 + ||x||)`` (0 at 0)."""
    return x / (1.0 + x.norm(dim=1, keepdim=True))


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` for ``(K, d)`` tables, the same value row by row; on the CPU in blocks of
    about 2 MiB, so no ``K x d`` product is allocated (a fresh table costs a page-fault pass)."""
    if a.device.type != "cpu" or a.shape[0] * a.shape[1] <= (1 << 19):
        return (a * b).sum(1)
    rows = max(1, (1 << 19) // max(1, a.shape[1]))
    return torch.cat([(x * y).sum(1) for x, y in zip(a.split(rows), b.split(rows))])


def squared_distances(v: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` squared Euclidean distances from one matmul, clamped at 0 against rounding.
    Without autograd the sum is formed in one ``B x K`` buffer (the same arithmetic)."""
    v_sq = v.pow(2).sum(1, keepdim=True)                      # (B, 1)
    c_sq = row_dots(centroids, centroids).unsqueeze(0)        # (1, K)
    if torch.is_grad_enabled() and (v.requires_grad or centroids.requires_grad):
        d2 = torch.addmm(v_sq + c_sq, v, centroids.t(), beta=1.0, alpha=-2.0)
        return d2.clamp_min(0.0)
    d2 = v_sq + c_sq
    d2.addmm_(v, centroids.t(), beta=1.0, alpha=-2.0)
    return d2.clamp_min_(0.0)


class _NearestSquared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, centroids):
        d2_min, nearest = squared_distances(v, centroids).min(dim=1)
        ctx.save_for_backward(v, centroids, nearest, d2_min)
        ctx.mark_non_differentiable(nearest)
        return d2_min, nearest

    @staticmethod
    def backward(ctx, grad, _grad_nearest):
        v, centroids, nearest, d2_min = ctx.saved_tensors
        # d/dv (||v||^2 - 2 v.c + ||c||^2) = 2 (v - c) at the nearest class; none where the
        # distance was clamped to 0
        scale = torch.where(d2_min > 0, 2.0 * grad, torch.zeros_like(grad)).unsqueeze(1)
        step = scale * (v - centroids.index_select(0, nearest))         # (B, d)
        grad_v = step if ctx.needs_input_grad[0] else None
        grad_c = None
        if ctx.needs_input_grad[1]:
            grad_c = torch.zeros_like(centroids).index_add_(0, nearest, step.to(centroids.dtype),
                                                            alpha=-1.0)
        return grad_v, grad_c


def nearest_squared(v: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to the nearest centroid and its index (first on ties): ``((B,), (B,))``.
    The gradient is ``2 g (v - c_nearest)`` (and its negative, summed per class, for the
    centroids): ``O(B d)``, no ``B x K`` matrix in the backward."""
    if torch.is_grad_enabled() and (v.requires_grad or centroids.requires_grad):
        return _NearestSquared.apply(v, centroids)
    return squared_distances(v, centroids).min(dim=1)


class _NormalizeRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, eps):
        with torch.autocast(weight.device.type, enabled=False):
            norm = weight.norm(dim=1, keepdim=True)                    # (K, 1)
            denom = norm.clamp_min(eps)
            ctx.save_for_backward(weight, norm, denom)
            ctx.eps = eps
            return weight / denom

    @staticmethod
    def backward(ctx, grad):
        weight, norm, denom = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        # d(w / ||w||) g = g / n - w (w . g) / n^3; where the norm is clamped at eps, g / eps
        dots = row_dots(grad, weight).unsqueeze(1)
        coef = torch.where(norm >= ctx.eps, dots / (denom * denom * denom), torch.zeros_like(dots))
        out = grad / denom                                             # the one K x d buffer
        return out.addcmul_(weight, coef, value=-1.0), None


def normalize_rows(weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(weight, dim=1)``: each row divided by ``max(||w_k||, eps)``, in the weight's
    dtype also under autocast; its backward makes one ``K x d`` buffer."""
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return torch.nn.functional.normalize(weight, dim=1, eps=eps)
    return _NormalizeRows.apply(weight, eps)


__all__ = ["at_least_float32", "squash", "row_dots", "squared_distances", "nearest_squared", "normalize_rows"]
