"""benchmarks/gpu_check.py in its CPU mode (``--device cpu --tiny``): the same code paths as the GPU
check, small, so the script cannot rot between the sessions that have a GPU."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

SUMMARY_KEYS = ("device", "train_img_s", "train_ratio_vs_bare", "mfu", "head_ratio", "megaface_1m_s",
                "megaface_ratio_vs_floor", "extract_img_s", "amp_centroid_drift_fp16",
                "amp_centroid_drift_bf16", "loader_img_s", "loader_vs_gpu", "gpu_decode_loader_img_s",
                "sharded_1m_step_vs_linear", "sharded_1m_peak_gib")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu_check():
    return _load_script()


def test_gpu_check_tiny_cpu(tmp_path, gpu_check):
    out = tmp_path / "gpu.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--work", str(tmp_path / "w")])
    res = json.loads(out.read_text())
    failed = {k: v.get("error") for k, v in res.items() if isinstance(v, dict) and "error" in v}
    assert rc == 0 and not failed, failed
    # every section ran and was timed; the README's GPU column is made from these keys
    assert set(res["seconds"]) == set(gpu_check.SECTIONS) | {"total"}
    for key in SUMMARY_KEYS:
        assert key in res
    assert res["device"] == "cpu" and res["mfu"] is None  # no peak FLOP/s for a CPU
    tr = res["train"]["fp32"]
    assert tr["loss_finite"] and tr["facelt_stage1_img_s"] > 0 and tr["facelt_stage2_img_s"] > 0
    assert tr["bare_img_s"] > 0 and tr["ceiling_img_s"] > 0
    assert tr["flops_per_image"] > 0
    # the device search and the CPU path score the same trials identically
    mf = res["megaface"]
    assert mf["rank1_identical_to_cpu"] and mf["trials"] == 60 * 4  # 12 ids x 5 probes: 5*4 pairs each
    assert 0 < mf["rank1"] < 1 and mf["backend"] == "torch"
    # the torchrun run was killed after a mid-epoch checkpoint and finished with --resume
    assert res["ddp"]["ok"] and res["ddp"]["killed_mid_epoch"] and res["ddp"]["backend"] == "gloo"
    assert res["extract"]["ok"] and res["extract"]["unit_norm"] and res["extract"]["rows"] == 120
    assert res["amp"]["finite"] and len(res["amp"]["curves"]["fp32"]) == 2
    assert np.isfinite(res["head"]["head_ratio"])
    # AMP centroid drift: facelt's AMP is CUDA-only, so on the CPU the float16 / bfloat16 runs are
    # fp32 runs from the same start and land on the same centroids, which did move
    drift = res["amp_centroid_drift"]
    assert set(drift["variants"]) == {"reference_replicated", "autograd_sharded"}
    for variant in drift["variants"].values():
        assert variant["fp32_update_norm"] > 0
        for dt in ("float16", "bfloat16"):
            assert variant[dt]["rel_to_update"] == 0 and variant[dt]["update_ratio"] == 1
            assert variant[dt]["loss_finite"]
    assert res["amp_centroid_drift_fp16"] == 0 == res["amp_centroid_drift_bf16"]
    # input pipeline: both loaders deliver; on the CPU decode_jpeg is libjpeg-turbo, as OpenCV
    pipe = res["input_pipeline"]
    assert pipe["loader_img_s"] > 0 and pipe["gpu_img_s"] == tr["ceiling_img_s"]
    dec = pipe["gpu_decode"]
    assert dec["loader_img_s"] > 0 and dec["decode_jpeg_img_s"] > 0 and dec["jpegs"] == 16
    assert dec["max_abs_diff_vs_opencv"] == 0
    # the sharded head in a world of one computes the unsharded head's loss
    sh = res["sharded_head"]["fp32"]
    assert sh["first_loss_rel_diff_sharded_vs_meta"] < 1e-5
    assert sh["linear"]["step_s"] > 0 and sh["sharded"]["param_gib"] == sh["meta"]["param_gib"]


def test_centroid_drift_formulas(gpu_check):
    c0 = torch.zeros(2, 2, dtype=torch.float64)
    c32 = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)     # fp32 moved them by 5
    amp = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)     # 3 short on one row
    d = gpu_check.centroid_drift(amp, c32, c0)
    assert d["rel_to_update"] == pytest.approx(3 / 5) and d["rel"] == pytest.approx(3 / 5)
    assert d["update_ratio"] == pytest.approx(np.sqrt(10) / 5) and d["max_abs_diff"] == 3
    assert gpu_check.centroid_drift(c0, c32, c0)["update_ratio"] == 0  # AMP did not move them


def test_drift_start_is_the_trainers_start(tmp_path, gpu_check):
    """With the centroids' learning rate 0 stage 2 ends where it started: C_0 is the start."""
    sz = gpu_check.Sizes.tiny()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        init = gpu_check.drift_stage1(tmp_path, sz, "cpu", 0, {})
        prefix = gpu_check.synthetic_faces(tmp_path, sz)
        over = ["stage2.epochs=1", "stage2.max_steps_per_epoch=2", f"stage2.batch_size={sz.drift_batch}",
                "data.augment=false", "amp=false"]
        frozen = gpu_check.face_config(prefix, sz, "cpu", 0, over + ["stage2.centroids_lr=0"])
        c0 = gpu_check.start_centroids(frozen, init, tmp_path / "c0")
        c, finite = gpu_check.stage2_centroids(frozen, init, tmp_path / "frozen")
        assert finite and torch.equal(c, c0)
        moving = gpu_check.face_config(prefix, sz, "cpu", 0, over)
        c, _ = gpu_check.stage2_centroids(moving, init, tmp_path / "moving")
        assert not torch.equal(c, c0)
    finally:
        torch.set_num_threads(torch_threads)


def test_megaface_without_faiss(tmp_path, gpu_check, monkeypatch):
    """The device machine has no faiss: the CPU path is numpy, the device path torch."""
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    res = gpu_check.section_megaface(tmp_path, gpu_check.Sizes.tiny(), "cpu")
    assert res["cpu_backend"] == "numpy" and res["backend"] == "torch"
    assert res["rank1_identical_to_cpu"] and 0 < res["rank1"] < 1


def test_budget_and_skip(tmp_path, gpu_check):
    out = tmp_path / "o"
    out.mkdir()
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--sections", "head,sharded_head,megaface",
                         "--skip", "sharded_head", "--budget", "1e-9", "--out", str(out),
                         "--work", str(tmp_path / "w")])
    res = json.loads(next(out.glob("gpu_*.json")).read_text())  # a folder gets gpu_<date>.json
    assert rc == 0 and res["sections"] == ["head", "megaface"]
    assert res["head_ratio"] > 0                   # the first section always starts
    assert res["megaface"] == {"skipped": "budget of 0 s spent"} and "sharded_head" not in res


def test_sigterm_keeps_what_was_measured(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FACELT_QUIET="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device",
                             "cpu", "--tiny", "--sections", "head,ddp", "--out", str(out), "--work",
                             str(tmp_path / "w")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not out.exists():  # written once the head section is done
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 124
    res = json.loads(out.read_text())
    assert res["head_ratio"] > 0 and res["head"]["linear_step_s"] > 0
    assert res["ddp"]["error"].startswith("interrupted (SIGTERM)")
