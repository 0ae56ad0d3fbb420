"""The heads' hand-written backward passes (facelt/models/head_math.py, the centroid loss's
``centroid_terms`` / ``reference_attract``, the sharded cross-entropy) against autograd through
the plain formulas, and every custom autograd Function of facelt under a loss scale and under
autocast (issue 19, items 1 and 12)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facelt.losses import DiscCentroidLoss
from facelt.losses.centroid import batch_class_counts, centroid_terms, reference_attract
from facelt.models.head_math import nearest_squared, normalize_rows, row_dots, squared_distances
from facelt.models.heads import MetaEmbeddingHead
from facelt.parallel import collectives as col
from facelt.parallel.sharded_heads import ShardedMetaEmbeddingHead
from facelt.parallel.sharded_losses import ShardedDiscCentroidLoss, sharded_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
SCALE = 2.0 ** 16

#: every torch.autograd.Function of facelt and the test below that checks it
CHECKED_FUNCTIONS = {
    "_NearestSquared": "nearest_squared", "_NormalizeRows": "normalize_rows",
    "_CentroidTerms": "centroid_terms", "_ReferenceAttract": "reference_attract",
    "_ShardedCrossEntropy": "sharded_cross_entropy", "_ScaleGrad": "gather_rows (world of 1)",
    # the collectives of a world > 1: tests/amp_worker.py (2 gloo processes, GradScaler)
    "_CopyToShards": "amp_worker", "_ReduceFromShards": "amp_worker",
    "_GatherRows": "amp_worker", "_ReduceMin": "amp_worker",
}


def plain_nearest(v, c):
    d2 = torch.addmm(v.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1).unsqueeze(0), v, c.t(),
                     beta=1.0, alpha=-2.0).clamp_min(0.0)
    return d2.min(dim=1)


def test_every_custom_function_is_checked_here():
    """A new torch.autograd.Function in facelt must join the loss-scale / autocast checks."""
    found = set()
    for path in (ROOT / "facelt").rglob("*.py"):
        found |= set(re.findall(r"class (\w+)\(torch\.autograd\.Function\)", path.read_text()))
    assert found == set(CHECKED_FUNCTIONS), sorted(found ^ set(CHECKED_FUNCTIONS))


def test_row_dots_and_distances_are_the_plain_values_bit_for_bit():
    torch.manual_seed(0)
    a = torch.randn(3001, 300) * 3          # more than one 2 MiB block, a ragged last block
    assert torch.equal(row_dots(a, a), a.pow(2).sum(1))
    v = torch.randn(17, 300)
    plain = torch.addmm(v.pow(2).sum(1, keepdim=True) + a.pow(2).sum(1).unsqueeze(0), v, a.t(),
                        beta=1.0, alpha=-2.0).clamp_min(0.0)
    assert torch.equal(squared_distances(v, a), plain)
    d2, idx = nearest_squared(v.requires_grad_(True), a)
    p2, pidx = plain_nearest(v.detach(), a)
    assert torch.equal(d2.detach(), p2) and torch.equal(idx, pidx)


def test_nearest_squared_gradient_is_autograds():
    """float64: the gradient ``2 g (v - c_nearest)`` to features and (not detached) centroids is
    autograd's through the expansion; a row sitting on its centroid (distance clamped to 0) gets
    none."""
    torch.manual_seed(1)
    c = torch.randn(9, 5, dtype=torch.float64)
    v = torch.randn(6, 5, dtype=torch.float64)
    v[2] = c[4]                                          # distance 0: clamped
    g = torch.randn(6, dtype=torch.float64)
    grads = []
    for fn in (nearest_squared, plain_nearest):
        vv, cc = v.clone().requires_grad_(True), c.clone().requires_grad_(True)
        d2, _ = fn(vv, cc)
        grads.append(torch.autograd.grad(d2, (vv, cc), g))
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-9)
    assert torch.all(grads[0][0][2] == 0)
    vv = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: nearest_squared(x, c)[0], (vv,))


def test_normalize_rows_is_f_normalize_values_and_gradient():
    torch.manual_seed(2)
    w = torch.randn(7, 4, dtype=torch.float64)
    w[3] = 1e-14                                         # below eps: divided by eps, no norm term
    g = torch.randn(7, 4, dtype=torch.float64)
    a, b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out, ref = normalize_rows(a), F.normalize(b, dim=1)
    assert torch.equal(out.detach(), ref.detach())
    (ga,), (gb,) = torch.autograd.grad(out, a, g), torch.autograd.grad(ref, b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_rows, (x,))


def test_centroid_terms_gradient_is_autograds():
    torch.manual_seed(3)
    c = torch.randn(3000, 300, dtype=torch.float64)        # several blocks
    y = torch.randint(0, 3000, (11,))
    centre = c.mean(0)
    gr, g1, g2 = torch.randn(11, 300, dtype=torch.float64), torch.randn(300, dtype=torch.float64), \
        torch.randn((), dtype=torch.float64)
    a, b = c.clone().requires_grad_(True), c.clone().requires_grad_(True)
    rows, s1, s2 = centroid_terms(a, y, centre)
    diff = b - centre
    ref = (b.index_select(0, y), diff.sum(0), diff.pow(2).sum())
    for got, want in zip((rows, s1, s2), ref):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-9)
    (ga,) = torch.autograd.grad((rows, s1, s2), a, (gr, g1, g2))
    (gb,) = torch.autograd.grad(ref, b, (gr, g1, g2))
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_reference_attract_rows_sum_per_class():
    """Two rows of class 0, one of class 2 (K = 3): centroid k gets sum (c_k - v_i) / (1 + n_k) / B
    (class 1, absent, nothing), through the rows' gathering."""
    v = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.0, 1.0], [7.0, 7.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 2])
    rows, _, _ = centroid_terms(c, y, c.detach().mean(0))
    counts = batch_class_counts(y, 3, torch.float64).index_select(0, y)
    reference_attract(v, rows, counts).backward()
    want = torch.tensor([[((1 - 0) + (1 - 2)) / 3 / 3, ((1 - 1) + (1 - 3)) / 3 / 3],
                         [0.0, 0.0], [(2 - 4) / 2 / 3, (0 + 1) / 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(c.grad, want)


def meta_step(head_kind: str, update: str, autocast: bool, scale: float):
    """One stage-2 objective of the meta head on fixed data: gradients (divided by ``scale``)."""
    torch.manual_seed(4)
    k, d, b = 9, 6, 12
    ref = MetaEmbeddingHead(d, k)
    ref.init_centroids(torch.randn(k, d))
    body = torch.nn.Linear(5, d)
    x, y = torch.randn(b, 5), torch.arange(b) % k
    weight = 0.5
    if head_kind == "sharded":
        head = ShardedMetaEmbeddingHead(d, k, rank=0, world=1)
        head.load_shard(ref.state_dict())
    else:
        head = ref
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        v = body(x)
        logits, aux = head(v, y)
    assert aux["reachability"].dtype == torch.float32 and aux["memory"].dtype == torch.float32
    if head_kind == "sharded":
        closs = ShardedDiscCentroidLoss(margin=100.0, centroid_update=update, loss_weight=weight)
        loss = sharded_cross_entropy(logits, aux["targets"]) + weight * closs(
            aux["direct"].float(), aux["targets"], head.centroids, k)
    else:
        closs = DiscCentroidLoss(margin=100.0, centroid_update=update, loss_weight=weight)
        loss = F.cross_entropy(logits.float(), y) + weight * closs(aux["direct"].float(), y,
                                                                   head.centroids)
    assert loss.dtype == torch.float32
    (scale * loss).backward()
    named = list(body.named_parameters(prefix="body")) + list(head.named_parameters(prefix="head"))
    return {n: p.grad / scale for n, p in named if p.grad is not None}


@pytest.mark.parametrize("update", ["reference", "autograd"])
@pytest.mark.parametrize("head_kind", ["unsharded", "sharded"])
def test_loss_scale_and_autocast_change_nothing_but_rounding(head_kind, update):
    """The meta head + its losses, unsharded and as a sharded twin over a world of one: a loss
    scale of 2**16 divides back out exactly (float32 and under bfloat16 autocast), and autocast
    leaves the head's distances, memory and losses in float32 (its gradients within bfloat16
    rounding of float32's)."""
    fp32 = meta_step(head_kind, update, autocast=False, scale=1.0)
    assert "head.centroids" in fp32
    for autocast in (False, True):
        plain = fp32 if not autocast else meta_step(head_kind, update, autocast=True, scale=1.0)
        scaled = meta_step(head_kind, update, autocast=autocast, scale=SCALE)
        assert set(scaled) == set(plain)
        for name, g in plain.items():
            torch.testing.assert_close(scaled[name], g, rtol=1e-5, atol=1e-12,
                                       msg=lambda m: f"{name} (autocast {autocast}): {m}")
    amp = meta_step(head_kind, update, autocast=True, scale=1.0)
    for name, g in fp32.items():
        torch.testing.assert_close(amp[name], g, rtol=0.05, atol=0.02 * g.abs().max().item(),
                                   msg=lambda m: f"{name} bf16 vs fp32: {m}")


def test_scaled_collective_gradient_in_a_world_of_one():
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    (plain,) = torch.autograd.grad(col.gather_rows(x, grad_scale=3.0), x, g)
    (scaled,) = torch.autograd.grad(col.gather_rows(x, grad_scale=3.0), x, SCALE * g)
    torch.testing.assert_close(plain, 3.0 * g)
    torch.testing.assert_close(scaled / SCALE, plain, rtol=0, atol=0)


@pytest.mark.parametrize("update", ["reference", "autograd"])
def test_meta_step_touches_its_k_by_d_tables_few_times(update):
    """Issue 19 item 12: a stage-2 step of the meta head (CE + centroid loss) allocates at most 3
    ``K x d`` tables outside the matmuls (the normalised classifier, its gradient, the centroids'
    gradient; before: 14 to 16, from autograd's generic backward of ``F.normalize`` and of the
    closed-form sums), and runs 9 matmuls with a K side (4 forward, 5 backward; before: 10, the
    extra one the backward of the nearest-centroid distances through the whole ``B x K``
    matrix)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(5)
    k, d, b = 3000, 300, 16                   # K x d above the 2 MiB blocks of the CPU reductions
    head = MetaEmbeddingHead(d, k)
    head.init_centroids(torch.randn(k, d))
    v = torch.randn(b, d, requires_grad=True)
    y = torch.randint(0, k, (b,))
    closs = DiscCentroidLoss(centroid_update=update, loss_weight=0.01)

    def step():
        head.zero_grad(set_to_none=True)
        logits, _ = head(v, y)
        (F.cross_entropy(logits, y) + 0.01 * closs(v, y, head.centroids)).backward()

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
        step()
    matmuls = ("aten::mm", "aten::addmm", "aten::addmm_")
    tables = [e.name for e in prof.events()
              if e.cpu_memory_usage >= k * d * 4 and not e.cpu_children and e.name not in matmuls]
    with_k = [e.name for e in prof.events()
              if e.name in matmuls and any(k in shape for shape in e.input_shapes)]
    assert len(tables) <= 3, tables
    assert len(with_k) == 9, with_k
