"""Run under torchrun (gloo, CPU) by tests/test_sharded_head.py: every rank builds the same
unsharded reference heads and batch from one seed, runs the class-sharded heads on its own rows
and classes, and asserts that logits, losses and every gradient equal the single-process ones.
Prints ``SHARDED-OK <rank>`` at the end; any mismatch raises (non-zero exit)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from facelt.parallel import collectives as col
from facelt.losses import DiscCentroidLoss
from facelt.models.heads import LinearHead, MarginHead, MetaEmbeddingHead
from facelt.parallel.sharded_heads import (ShardedLinearHead, ShardedMarginHead,
                                           ShardedMetaEmbeddingHead, accumulate_shard_sums,
                                           class_range)
from facelt.parallel.sharded_state import consolidated_model_state
from facelt.parallel.sharded_losses import ShardedDiscCentroidLoss, sharded_cross_entropy
from facelt.parallel.process import teardown

K, D = 11, 6                      # 11 classes: not divisible by 2 or 3 processes
WEIGHT = 0.5                      # centroid-loss weight, large so its gradients show


def gather_logits(local_logits):
    """All ``B x K`` logits from every rank's ``B x K_local`` columns (a test instrument: this is
    exactly the tensor sharding avoids)."""
    return torch.cat(col.all_gather_padded(local_logits.t().contiguous()), 0).t()


def consolidate_state(state, sharded_keys):
    """The unsharded dict from every rank's rows of ``sharded_keys`` (on every rank)."""
    return {k: torch.cat(col.all_gather_padded(v.detach()), 0) if k in sharded_keys else v.detach()
            for k, v in state.items()}


def tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}


def close(a, b, dtype, what):
    torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m: f"{what}: {m}")


def batch(world, dtype, seed):
    """Global batch: rank r has 2 + r rows (unequal on purpose); every class appears."""
    g = torch.Generator().manual_seed(seed)
    sizes = [2 + r for r in range(world)]
    total = sum(sizes)
    v = (torch.randn(total, D, generator=g) * 2.0).to(dtype)
    y = torch.cat([torch.arange(K), torch.randint(0, K, (max(0, total - K),), generator=g)])[:total]
    y = y[torch.randperm(total, generator=g)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return v, y, sizes, starts


def my_rows(rank, sizes, starts):
    return slice(starts[rank], starts[rank] + sizes[rank])


def grads_of(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def check_meta(rank, world, dtype, update):
    torch.manual_seed(1)
    ref = MetaEmbeddingHead(D, K).to(dtype)
    ref.init_centroids(torch.randn(K, D, dtype=dtype))
    v, y, sizes, starts = batch(world, dtype, seed=2)
    mine = my_rows(rank, sizes, starts)
    margin = 200.0                # above the mean squared distance: the repel term is active
    vr = v.clone().requires_grad_(True)
    logits_ref, aux_ref = ref(vr, y)
    loss_ref = F.cross_entropy(logits_ref, y) + WEIGHT * DiscCentroidLoss(
        margin=margin, repel_weight=0.3, centroid_update=update)(vr, y, ref.centroids)
    loss_ref.backward()

    head = ShardedMetaEmbeddingHead(D, K).to(dtype)
    assert (head.class_start, head.class_stop) == class_range(K, rank, world)
    head.load_shard(ref.state_dict())
    vs = v[mine].clone().requires_grad_(True)
    logits, aux = head(vs, y[mine])
    assert logits.shape == (v.shape[0], head.class_stop - head.class_start)
    loss = sharded_cross_entropy(logits, aux["targets"]) + WEIGHT * ShardedDiscCentroidLoss(
        margin=margin, repel_weight=0.3, centroid_update=update)(
        aux["direct"], aux["targets"], head.centroids, K)
    loss.backward()

    what = f"meta {dtype} {update} rank {rank}/{world}"
    assert torch.equal(aux["labels"], y), what
    close(gather_logits(logits.detach()), logits_ref.detach(), dtype, what + " logits")
    close(loss.detach(), loss_ref.detach(), dtype, what + " loss")
    for key in ("memory", "selector", "reachability", "meta"):
        close(aux[key].detach(), aux_ref[key].detach(), dtype, f"{what} {key}")
    assert torch.equal(aux["nearest"], aux_ref["nearest"]), what + " nearest"
    grads = consolidate_state(grads_of(head), head.sharded_keys)
    ref_grads = grads_of(ref)
    assert set(grads) == set(ref_grads), (what, sorted(grads), sorted(ref_grads))
    for name, g in ref_grads.items():
        close(grads[name], g, dtype, f"{what} grad {name}")
    close(vs.grad, vr.grad[mine], dtype, what + " feature grad")
    # the checkpoint consolidation gives back the unsharded state dict on rank 0, keys and
    # shapes included (the other ranks keep their rows)
    full = consolidated_model_state(head.state_dict(), head, prefix="")
    assert list(full) == list(ref.state_dict())
    for name, t in ref.state_dict().items():
        if rank == 0 or name not in head.sharded_keys:
            assert torch.equal(full[name], t), name


def check_centroid_init(rank, world):
    means = torch.randn(K, D)
    head = ShardedMetaEmbeddingHead(D, K)
    head.init_centroids(means)
    lo, hi = class_range(K, rank, world)
    assert torch.equal(head.centroids.detach(), means[lo:hi])
    counts = torch.arange(hi - lo, dtype=torch.float64)          # first class of the shard: 0 images
    head.init_centroids_from_sums(means[lo:hi].double() * counts.unsqueeze(1), counts)
    expect = means[lo:hi].clone()
    expect[0] = 0.0
    torch.testing.assert_close(head.centroids.detach(), expect)


def check_shard_sums(rank, world):
    """Centroids accumulated per shard from every rank's data equal the per-class means."""
    g = torch.Generator().manual_seed(12)
    feats = torch.randn(23, D, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, K - 1, (23,), generator=g)          # class K-1 never seen; -1 skipped
    # rank r's share of the data: rows r, r + world, ... (unequal counts)
    head = ShardedMetaEmbeddingHead(D, K).double()
    sums = torch.zeros(head.local_classes, D, dtype=torch.float64)
    counts = torch.zeros(head.local_classes, dtype=torch.float64)
    for chunk in (slice(0, 12), slice(12, 23)):                    # two batches each
        idx = torch.arange(23)[chunk]
        idx = idx[idx % world == rank]
        accumulate_shard_sums(sums, counts, feats[idx], labels[idx], head.class_start)
    head.init_centroids_from_sums(sums, counts)
    lo, hi = class_range(K, rank, world)
    for k in range(lo, hi):
        rows = feats[labels == k]
        expect = rows.mean(0) if len(rows) else torch.zeros(D, dtype=torch.float64)
        torch.testing.assert_close(head.centroids.detach()[k - lo], expect)
        assert counts[k - lo] == len(rows)


def check_margin(rank, world, dtype, kind):
    torch.manual_seed(3)
    ref = MarginHead(D, K, kind=kind, s=8.0).to(dtype)
    v, y, sizes, starts = batch(world, dtype, seed=4)
    mine = my_rows(rank, sizes, starts)
    vr = v.clone().requires_grad_(True)
    logits_ref, _ = ref(vr, y)
    loss_ref = F.cross_entropy(logits_ref, y)
    loss_ref.backward()
    head = ShardedMarginHead(D, K, kind=kind, s=8.0).to(dtype)
    head.load_shard(ref.state_dict())
    vs = v[mine].clone().requires_grad_(True)
    logits, aux = head(vs, y[mine])
    loss = sharded_cross_entropy(logits, aux["targets"])
    loss.backward()
    what = f"{kind} {dtype} rank {rank}/{world}"
    close(gather_logits(logits.detach()), logits_ref.detach(), dtype, what + " logits")
    close(loss.detach(), loss_ref.detach(), dtype, what + " loss")
    close(consolidate_state(grads_of(head), head.sharded_keys)["weight"], ref.weight.grad, dtype,
          what + " weight grad")
    close(vs.grad, vr.grad[mine], dtype, what + " feature grad")


def check_sampling(rank, world):
    """sample_rate: positives always kept; the sampled set does not depend on the world size; the
    loss is cross-entropy over the sampled classes only (written out from the unsharded head)."""
    dtype = torch.float64
    torch.manual_seed(5)
    ref = MarginHead(D, K, kind="cosface", s=8.0).to(dtype)
    v, y, sizes, starts = batch(world, dtype, seed=6)
    y = y % 4                                                     # positives: classes 0..3 only
    mine = my_rows(rank, sizes, starts)
    head = ShardedMarginHead(D, K, kind="cosface", s=8.0, sample_rate=0.3, sample_seed=11).to(dtype)
    head.load_shard(ref.state_dict())
    head.set_sample_step(7)
    vs = v[mine].clone().requires_grad_(True)
    logits, aux = head(vs, y[mine])
    assert head.sample_step == 8
    sampled = torch.cat(col.all_gather_padded(aux["sampled"]))
    lo, hi = class_range(K, rank, world)
    assert ((aux["sampled"] >= lo) & (aux["sampled"] < hi)).all()
    assert set(range(4)) <= set(sampled.tolist()), sampled          # positives kept
    # the same draw from a one-process head (world 1): identical set of classes
    single = ShardedMarginHead(D, K, kind="cosface", s=8.0, rank=0, world=1, sample_rate=0.3,
                               sample_seed=11)
    assert sampled.tolist() == single.sampled_classes(y, 7).tolist()
    assert 4 < len(sampled) < K                                       # some negatives in, some out
    loss = sharded_cross_entropy(logits, aux["targets"])
    loss.backward()
    vr = v.clone().requires_grad_(True)
    full, _ = ref(vr, y)
    sub = full[:, sampled]
    remap = {int(c): i for i, c in enumerate(sampled.tolist())}
    loss_ref = F.cross_entropy(sub, torch.tensor([remap[int(t)] for t in y]))
    loss_ref.backward()
    close(loss.detach(), loss_ref.detach(), dtype, "sampled loss")
    wg = consolidate_state({"weight": head.weight.grad}, ("weight",))["weight"]
    close(wg, ref.weight.grad, dtype, "sampled weight grad")         # unsampled rows: zero
    assert torch.all(wg[[k for k in range(K) if k not in remap]] == 0)
    close(vs.grad, vr.grad[mine], dtype, "sampled feature grad")


def check_linear(rank, world, dtype, sample_rate):
    """The plain stage's linear classifier, sharded (sample_rate 1) and sampled (0.4): CE over
    the kept classes, written out from the unsharded head's full logits."""
    torch.manual_seed(9)
    ref = LinearHead(D, K).to(dtype)
    v, y, sizes, starts = batch(world, dtype, seed=10)
    y = y % 3                                                     # positives: classes 0..2
    mine = my_rows(rank, sizes, starts)
    head = ShardedLinearHead(D, K, sample_rate=sample_rate, sample_seed=5).to(dtype)
    head.load_shard(ref.state_dict())
    vs = v[mine].clone().requires_grad_(True)
    logits, aux = head(vs, y[mine])
    sharded_cross_entropy(logits, aux["targets"]).backward()
    kept = (torch.cat(col.all_gather_padded(aux["sampled"])) if sample_rate < 1
            else torch.arange(K))
    assert set(range(3)) <= set(kept.tolist())
    if sample_rate < 1:
        assert len(kept) < K
    vr = v.clone().requires_grad_(True)
    full, _ = ref(vr, y)
    remap = {int(c): i for i, c in enumerate(kept.tolist())}
    loss_ref = F.cross_entropy(full[:, kept], torch.tensor([remap[int(t)] for t in y]))
    loss_ref.backward()
    what = f"linear {dtype} rate {sample_rate} rank {rank}/{world}"
    grads = consolidate_state(grads_of(head), head.sharded_keys)
    for name, g in grads_of(ref).items():
        close(grads[name], g, dtype, f"{what} grad {name}")
    close(vs.grad, vr.grad[mine], dtype, what + " feature grad")


def check_grad_scale(rank, world):
    """feature_grad_scale = world: the backbone gradient DDP will average back to the true one."""
    torch.manual_seed(7)
    ref = MarginHead(D, K, kind="arcface", s=8.0)
    v, y, sizes, starts = batch(world, torch.float32, seed=8)
    mine = my_rows(rank, sizes, starts)
    vr = v.clone().requires_grad_(True)
    F.cross_entropy(ref(vr, y)[0], y).backward()
    head = ShardedMarginHead(D, K, kind="arcface", s=8.0, feature_grad_scale=float(world))
    head.load_shard(ref.state_dict())
    vs = v[mine].clone().requires_grad_(True)
    logits, aux = head(vs, y[mine])
    sharded_cross_entropy(logits, aux["targets"]).backward()
    close(vs.grad, world * vr.grad[mine], torch.float32, "scaled feature grad")


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for dtype in (torch.float64, torch.float32):
        check_meta(rank, world, dtype, "autograd")
        for kind in ("arcface", "cosface"):
            check_margin(rank, world, dtype, kind)
    check_meta(rank, world, torch.float64, "reference")
    check_centroid_init(rank, world)
    check_shard_sums(rank, world)
    check_sampling(rank, world)
    for dtype in (torch.float64, torch.float32):
        check_linear(rank, world, dtype, 1.0)
    check_linear(rank, world, torch.float64, 0.4)
    check_grad_scale(rank, world)
    print(f"SHARDED-OK {rank}", flush=True)
    teardown()


if __name__ == "__main__":
    main()
