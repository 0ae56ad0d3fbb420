"""A 2-process torchrun (gloo, CPU) stage 2 ends where the 1-process run ends.

Stage 2 is the part the reference code broke under several processes: centroids are per-class
means over the whole training set (sums and counts reduced over ranks), the class-aware sampler
hands each rank a strided share of one global sequence, and DDP averages the gradients. With a
frozen backbone (frozen BN statistics) and no random augmentation, two processes with half the batch
each must reproduce the single-process weights up to float rounding.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from facelt.cli import main
from facelt.models.checkpoint import load_checkpoint
from tests.conftest import ROOT, demo_overrides, free_port, set_args




@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_stage2_matches_one_process(demo_data, tmp_path):
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    over = demo_overrides(demo_data, epochs=1) + [
        "data.augment=false", "stage2.freeze_backbone=true", "stage2.batch_size=32",
        "stage2.max_steps_per_epoch=6",
        # frozen BN statistics: in train() mode each rank normalises with its own half batch's
        # statistics (no SyncBatchNorm), so 2 processes cannot equal 1 process there
        "stage2.frozen_bn=eval"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--config", cfg, "--stage", "1", "--out", str(one), *set_args(over)]) == 0
    shutil.copytree(one / "stage1", two / "stage1")
    assert main(["train", "--config", cfg, "--stage", "2", "--out", str(one), *set_args(over)]) == 0

    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "facelt", "train",
           "--config", cfg, "--stage", "2", "--out", str(two), *set_args(over)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    a = load_checkpoint(one / "stage2" / "checkpoint.pt")
    b = load_checkpoint(two / "stage2" / "checkpoint.pt")
    assert a["metrics"]["images"] == b["metrics"]["images"] == 6 * 32
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-4)
    # a real run: centroids were set and trained; the frozen backbone stayed at stage 1's weights
    s1 = load_checkpoint(one / "stage1" / "checkpoint.pt")
    assert a["model"]["head.centroids"].abs().sum() > 0
    backbone = [k for k in s1["model"] if k.startswith("body.backbone.") and s1["model"][k].is_floating_point()]
    assert backbone and all(torch.equal(a["model"][k], s1["model"][k]) for k in backbone)
    head = [k for k in a["model"] if k.startswith("head.") and k != "head.centroids"]
    assert head


def test_two_process_mid_epoch_checkpoints_and_resume(demo_data, tmp_path):
    """2 processes with mid-epoch checkpoints: the logged image counts are the true ones, and a
    resumed 2-process run (every rank restores its own RNG state) carries on to a further epoch."""
    import json
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    over = demo_overrides(demo_data, epochs=1) + ["stage1.batch_size=16", "stage1.checkpoint_every=2"]
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def torchrun(*flags):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "facelt", "train",
               "--config", cfg, "--stage", "1", "--out", str(tmp_path), *flags, *set_args(over)]
        res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun()
    n_train = len((demo_data / "demo_train.txt").read_text().splitlines())
    per_epoch = (-(-n_train // 2) // 8) * 16      # 2 ranks x full batches of 8 of ceil(n/2) each
    first = json.loads((tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["images"] == per_epoch
    over[over.index("stage1.epochs=1")] = "stage1.epochs=2"
    torchrun("--resume")
    lines = [json.loads(l) for l in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert lines[1]["images"] == per_epoch
    state = load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")
    assert state["complete"] and state["rng"].shape[0] == 2          # one RNG state per rank
