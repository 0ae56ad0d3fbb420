"""``stageN.shard_head`` in training: a class-sharded stage 2 under torchrun (gloo, CPU) ends with
the checkpoint of the unsharded 2-process DDP run, and checkpoints are unsharded on disk.

7 classes: 2 processes own 4 + 3 classes, 3 processes 3 + 2 + 2. Frozen backbone (frozen BN
statistics), no augmentation, a global batch of 24 (divisible by 2 and 3), so every run sees the
same global batches (the samplers' strided shares) and must reach the same weights up to rounding.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from facelt.cli import main
from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.models.checkpoint import load_checkpoint
from facelt.parallel.strategy import check_shard_config
from tests.conftest import ROOT, free_port, run_torchrun, set_args



def _overrides(data):
    return [f"data.root={data}", f"data.splits_dir={data}", "data.image_size=16",
            "data.num_workers=0", "data.augment=false", "device=cpu", "eval.batch_size=64",
            "stage1.epochs=1", "stage1.batch_size=24", "stage1.max_steps_per_epoch=2",
            "stage2.epochs=1", "stage2.batch_size=24", "stage2.max_steps_per_epoch=4",
            "stage2.freeze_backbone=true", "stage2.checkpoint_every=2",
            # train-mode BN under a frozen backbone (the reference default) normalises with each
            # process's own batch: equal weights across process counts need the running statistics
            "stage2.frozen_bn=eval"]


def _torchrun(nproc, args):
    res = run_torchrun(nproc, args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _assert_same_checkpoint(a, b, name):
    assert set(b["model"]) == set(a["model"]), name
    for k, v in a["model"].items():
        assert b["model"][k].shape == v.shape, f"{name} {k}"
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
    # the SGD momentum of the sharded tables is consolidated too (same indices, same shapes)
    assert set(b["optimizer"]["state"]) == set(a["optimizer"]["state"]), name
    for i, st in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][i]["momentum_buffer"],
                                   st["momentum_buffer"], rtol=1e-4, atol=1e-5, msg=f"{name} {i}")
    assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-4)
    assert b["metrics"]["train_acc"] == pytest.approx(a["metrics"]["train_acc"])
    assert b["metrics"]["val"]["overall"] == pytest.approx(a["metrics"]["val"]["overall"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_sharded_stage2_matches_unsharded_ddp_and_resumes_across(seven_class_data, tmp_path):
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    over = _overrides(seven_class_data)
    ref = tmp_path / "ddp"
    assert main(["train", "--config", cfg, "--stage", "1", "--out", str(ref), *set_args(over)]) == 0
    shutil.copytree(ref / "stage1", tmp_path / "shard3" / "stage1")
    stage2 = ["train", "--config", cfg, "--stage", "2"]
    _torchrun(2, [*stage2, "--out", str(ref), *set_args(over)])
    _torchrun(3, [*stage2, "--out", str(tmp_path / "shard3"),
                  *set_args(over + ["stage2.shard_head=true"])])
    a = load_checkpoint(ref / "stage2" / "checkpoint.pt")
    assert a["model"]["head.centroids"].shape[0] == 7 and a["model"]["head.centroids"].abs().sum() > 0
    b = load_checkpoint(tmp_path / "shard3" / "stage2" / "checkpoint.pt")
    assert b["metrics"]["images"] == a["metrics"]["images"] == 4 * 24
    _assert_same_checkpoint(a, b, "3 processes, sharded")
    # the sharded run's checkpoint evaluates as an ordinary one, with the same report
    reports = {}
    for name in ("ddp", "shard3"):
        rep = tmp_path / f"classify_{name}"
        assert main(["classify", "--checkpoint", str(tmp_path / name / "stage2" / "checkpoint.pt"),
                     "--out", str(rep), "--device", "cpu"]) == 0
        reports[name] = json.loads((rep / "report.json").read_text())
    numbers = {k: v for k, v in reports["ddp"].items() if isinstance(v, float)}
    assert "overall" in json.dumps(reports["ddp"]) and numbers
    for k, v in numbers.items():
        assert reports["shard3"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k

    # a second epoch, resumed from the unsharded checkpoint: sharded over 2 processes, and not
    two = [o.replace("stage2.epochs=1", "stage2.epochs=2") for o in over]
    for name in ("resume_sharded", "resume_ddp"):
        shutil.copytree(ref, tmp_path / name)
    _torchrun(2, [*stage2, "--resume", "--out", str(tmp_path / "resume_sharded"),
                  *set_args(two + ["stage2.shard_head=true"])])
    _torchrun(2, [*stage2, "--resume", "--out", str(tmp_path / "resume_ddp"), *set_args(two)])
    x = load_checkpoint(tmp_path / "resume_ddp" / "stage2" / "checkpoint.pt")
    y = load_checkpoint(tmp_path / "resume_sharded" / "stage2" / "checkpoint.pt")
    assert x["epoch"] == y["epoch"] == 1 and x["complete"]
    assert not torch.equal(x["model"]["head.cosine.weight"], a["model"]["head.cosine.weight"])
    _assert_same_checkpoint(x, y, "resumed sharded over 2 processes")


def test_one_process_sharded_margin_head_with_sampling(seven_class_data, tmp_path):
    """Without torchrun ``shard_head`` is the world-of-one sharded head: ArcFace with Partial-FC
    sampling trains, and its checkpoint is an ordinary unsharded one."""
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    over = _overrides(seven_class_data) + [
        "stage1.head=arcface", "stage1.shard_head=true", "stage1.sample_rate=0.5",
        "stage1.max_steps_per_epoch=3"]
    assert main(["train", "--config", cfg, "--stage", "1", "--out", str(tmp_path), *set_args(over)]) == 0
    state = load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")
    assert state["model"]["head.weight"].shape[0] == 7
    assert state["metrics"]["images"] == 3 * 24


def test_shard_config_refusals():
    cfg = load_config(ROOT / "configs" / "demo_list.yaml")
    st = cfg.stage2
    st.shard_head = True
    st.loss = "focal"
    with pytest.raises(ConfigError, match="stage2.loss"):
        check_shard_config(st, 2)
    st.loss, st.head = "ce", "lws"
    with pytest.raises(ConfigError, match="'lws' cannot be sharded"):
        check_shard_config(st, 2)
    st.head, st.sample_rate = "meta", 0.5
    with pytest.raises(ConfigError, match="stage2.sample_rate"):
        check_shard_config(st, 2)
    st.head = "arcface"
    check_shard_config(st, 2)
    st.shard_head = False
    with pytest.raises(ConfigError, match="shard_head"):
        check_shard_config(st, 2)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_amp_overflow_on_one_rank_skips_every_rank():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1",
           str(ROOT / "tests" / "overflow_worker.py")]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "OVERFLOW-OK 0" in res.stdout and "OVERFLOW-OK 1" in res.stdout
