"""The class-sharded OLTR head (Partial-FC style) against the single-process heads.

The multi-process checks run tests/sharded_worker.py under torchrun (gloo, CPU) with 2 and 3
processes and K = 11 classes (divisible by neither): logits, losses and every parameter's gradient
of the sharded meta-embedding head + cross-entropy + centroid loss, and of the sharded
ArcFace / CosFace heads, equal the unsharded ones (rtol 1e-5 in float64, 1e-4 in float32).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from facelt.losses import DiscCentroidLoss
from facelt.models.heads import MetaEmbeddingHead
from facelt.parallel.sharded_heads import ShardedMetaEmbeddingHead, class_range, shard_state
from facelt.parallel.sharded_losses import ShardedDiscCentroidLoss, sharded_cross_entropy
from tests.conftest import ROOT, free_port



def test_class_range_contiguous_last_ranks_one_fewer():
    # 11 classes over 3 ranks: 4, 4, 3; over 2: 6, 5; over 4: 3, 3, 3, 2
    assert [class_range(11, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert [class_range(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]
    assert [class_range(11, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert class_range(8, 1, 2) == (4, 8)
    with pytest.raises(ValueError, match="cannot be sharded"):
        class_range(2, 0, 3)
    with pytest.raises(ValueError, match="rank 3"):
        class_range(10, 3, 3)


def test_shard_state_cuts_rows_and_checks_shape():
    state = {"weight": torch.arange(10.0).view(5, 2), "other": torch.ones(3)}
    part = shard_state(state, ("weight",), 5, 1, 2)               # classes 3..4
    assert torch.equal(part["weight"], torch.tensor([[6.0, 7.0], [8.0, 9.0]]))
    assert torch.equal(part["other"], torch.ones(3))
    with pytest.raises(ValueError, match="'weight' has 5 rows, expected 6"):
        shard_state(state, ("weight",), 6, 0, 2)


def test_one_process_sharded_head_is_the_unsharded_head():
    """Outside torchrun the sharded head is the plain head: same outputs and gradients."""
    torch.manual_seed(0)
    k, d = 7, 5
    ref = MetaEmbeddingHead(d, k)
    ref.init_centroids(torch.randn(k, d))
    head = ShardedMetaEmbeddingHead(d, k)
    head.load_shard(ref.state_dict())
    assert ["head." + n for n, _ in head.named_parameters() if n in head.sharded_keys] == [
        "head.centroids", "head.hallucinator.weight", "head.hallucinator.bias", "head.cosine.weight"]
    v = torch.randn(6, d) * 2
    y = torch.tensor([0, 1, 6, 3, 3, 5])
    va, vb = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    la, aux_a = ref(va, y)
    (F.cross_entropy(la, y) + DiscCentroidLoss(margin=100.0)(va, y, ref.centroids)).backward()
    lb, aux_b = head(vb, y)
    assert torch.equal(aux_b["targets"], y)
    (sharded_cross_entropy(lb, aux_b["targets"])
     + ShardedDiscCentroidLoss(margin=100.0)(aux_b["direct"], aux_b["targets"], head.centroids, k)
     ).backward()
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vb.grad, va.grad, rtol=1e-5, atol=1e-6)
    for (n, p), (_, q) in zip(head.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_sharded_cross_entropy_rejects_unowned_label():
    with pytest.raises(ValueError, match="row 1 .* outside"):
        sharded_cross_entropy(torch.zeros(2, 3), torch.tensor([0, -1]))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("nproc", [2, 3])
def test_sharded_heads_match_single_process_under_torchrun(nproc):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", str(ROOT / "tests" / "sharded_worker.py")]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    for r in range(nproc):
        assert f"SHARDED-OK {r}" in res.stdout


def test_sharded_cross_entropy_half_logits_in_float32():
    z = torch.tensor([[8.0, -3.0, 1.5], [0.25, 0.5, -7.0]])
    y = torch.tensor([2, 0])
    # hand-written log-sum-exp minus the target logit, from the float16-rounded values
    zh = z.half().double()
    expect = (torch.logsumexp(zh, 1) - zh[torch.arange(2), y]).mean()
    got = sharded_cross_entropy(z.half(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)
