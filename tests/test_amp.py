"""Mixed precision changes nothing but rounding (issue 19, item 1): with an enabled CPU
GradScaler (init scale 2**16) the training loop's step moves every parameter as float32 does, for
both centroid updates (the reference's and autograd's), replicated and class-sharded heads, in
one process (a world of one for the sharded head) and over 2 gloo processes
(tests/amp_worker.py). Before the fix the reference centroid update ignored the loss scale, and
the scaler's unscaling made the centroid step 1/65,536 of float32's."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from facelt.config import load_config
from facelt.parallel.process import DistInfo
from tests.amp_steps import compare_updates
from tests.conftest import ROOT, free_port

CONFIG = str(ROOT / "configs" / "demo_list.yaml")


def amp_overrides(data) -> list[str]:
    return [f"data.root={data}", f"data.splits_dir={data}", "data.image_size=16",
            "data.num_workers=0", "device=cpu", "eval.batch_size=64", "stage2.init_from=none",
            "stage2.batch_size=24", "stage2.max_steps_per_epoch=2",
            "stage2.centroid_loss.weight=0.5"]


@pytest.mark.parametrize("shard", ["false", "true"])
@pytest.mark.parametrize("update", ["reference", "autograd"])
def test_grad_scaler_step_equals_float32(seven_class_data, shard, update):
    cfg = load_config(CONFIG, amp_overrides(seven_class_data)
                      + [f"stage2.shard_head={shard}", f"stage2.centroid_loss.update={update}"])
    bad = compare_updates(cfg, DistInfo(), f"shard_head={shard} update={update}")
    assert not bad, bad


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_grad_scaler_step_equals_float32_over_two_processes(seven_class_data):
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1",
           str(ROOT / "tests" / "amp_worker.py"), CONFIG, *amp_overrides(seven_class_data)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    assert all(f"AMP-OK {r}" in res.stdout for r in range(2)), res.stdout[-3000:]
