"""benchmarks/gpu_check.py in its CPU mode (``--device cpu --tiny``): the same code paths as the GPU
check, small, so the script cannot rot between the sessions that have a GPU."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np

from tests.conftest import ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_tiny_cpu(tmp_path):
    gpu_check = _load_script()
    out = tmp_path / "gpu.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--work", str(tmp_path / "w")])
    res = json.loads(out.read_text())
    failed = {k: v.get("error") for k, v in res.items() if isinstance(v, dict) and "error" in v}
    assert rc == 0 and not failed, failed
    # the README's GPU column is made from these keys
    for key in ("device", "train_img_s", "train_ratio_vs_bare", "mfu", "head_ratio", "megaface_1m_s",
                "megaface_ratio_vs_floor", "extract_img_s"):
        assert key in res
    assert res["device"] == "cpu" and res["mfu"] is None  # no peak FLOP/s for a CPU
    tr = res["train"]["fp32"]
    assert tr["loss_finite"] and tr["facelt_stage1_img_s"] > 0 and tr["facelt_stage2_img_s"] > 0
    assert tr["bare_img_s"] > 0 and tr["ceiling_img_s"] > 0
    assert tr["flops_per_image"] > 0
    # the device search and the CPU path score the same trials identically
    mf = res["megaface"]
    assert mf["rank1_identical_to_cpu"] and mf["trials"] == 60 * 4  # 12 ids x 5 probes: 5*4 pairs each
    assert 0 < mf["rank1"] < 1
    # the torchrun run was killed after a mid-epoch checkpoint and finished with --resume
    assert res["ddp"]["ok"] and res["ddp"]["killed_mid_epoch"] and res["ddp"]["backend"] == "gloo"
    assert res["extract"]["ok"] and res["extract"]["unit_norm"] and res["extract"]["rows"] == 120
    assert res["amp"]["finite"] and len(res["amp"]["curves"]["fp32"]) == 2
    assert np.isfinite(res["head"]["head_ratio"])
