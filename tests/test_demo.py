"""`facelt demo` (the README's main job) runs end to end on a small setting and resumes."""
from __future__ import annotations

import json

from facelt.cli import main


def test_demo_small_end_to_end_then_rerun_reuses(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--identities", "24", "--distractors", "120",
            "--set", "stage1.epochs=1", "--set", "stage2.epochs=1", "--set", "device=cpu"]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "SYNTHETIC" in report and "stage 2 (OLTR)" in report
    for f in ("classify_stage1/report.json", "classify_stage2/per_class.png",
              "classify_stage2/threshold_sweep.png", "megaface/report.json", "megaface/cmc.png"):
        assert (out / f).is_file(), f
    mf = json.loads((out / "megaface" / "report.json").read_text())
    assert [r["gallery"] for r in mf["results"]] == [10, 100]
    assert mf["trials"] == 20 * 5 * 4  # 20 probe identities x 5 images x 4 other images each
    # verification of both stages and of the ONNX export on unseen SYNTHETIC identities
    from facelt.faces.verification import read_bin
    bins, issame = read_bin(out / "eval_sets" / "verification.bin")
    assert len(bins) == 2 * 200 and issame.tolist() == [True, False] * 100
    ver = json.loads((out / "verification" / "report.json").read_text())
    assert ver["pairs"] == 200 and ver["positive"] == 100 and ver["onnx_min_cosine"] > 0.999
    for key in ("stage1", "stage2", "onnx"):
        r = ver["results"][key]
        assert r["pairs"] == 200 and 0 <= r["accuracy"] <= 1 and 0 <= r["std"] <= 0.5
        assert 0 <= r["threshold"] < 4 and 0 <= r["val"] <= 1
    # the ONNX model is the stage-2 network: the same pairs come out on the same side
    assert abs(ver["results"]["onnx"]["accuracy"] - ver["results"]["stage2"]["accuracy"]) <= 0.01
    assert (out / "model.onnx").stat().st_size > 1000
    assert "## Face verification" in report and "[model.onnx](model.onnx)" in report
    assert report.count("| stage 2, ONNX (onnxruntime) |") == 1
    # issue 19: the report names the shot rule and the weights, and says insightface's
    # model_zoo.get_model will not route the 32x32 export
    assert "Shot buckets: paper: many > 100" in report
    assert "Weights: stage 1 last (epoch 1), stage 2 last (epoch 1)." in report
    assert "get_model` on it: insightface's model_zoo.get_model returns None" in report
    _check_face_table(out, report)
    ckpt = (out / "train" / "stage2" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # a second run reuses every finished step
    assert "already complete" in capsys.readouterr().out
    assert (out / "train" / "stage2" / "checkpoint.pt").stat().st_mtime_ns == ckpt


def _check_face_table(out, report):
    """issue 21: the face table of plain (stage 1) and OLTR (stage 2), Table 4 (left) layout."""
    import csv

    import numpy as np
    rows = list(csv.DictReader(open(out / "eval_sets" / "probes.csv")))
    # the SYNTHETIC binary attribute: A for even identities, B for odd ones
    assert {r["synthetic_group"] for r in rows} == {"A", "B"}
    assert all(r["synthetic_group"] == "AB"[int(r["identity"]) % 2] for r in rows)
    summary = json.loads((out / "demo_summary.json").read_text())
    table = summary["face_table"]
    assert list(table) == ["plain", "oltr"]
    mf = json.loads((out / "megaface" / "report.json").read_text())
    plain_mf = json.loads((out / "face_table" / "plain" / "megaface" / "report.json").read_text())
    for m, ref in (("oltr", mf), ("plain", plain_mf)):
        row = table[m]
        assert row["gallery"] == 10 and row["full"] == ref["rank1"]
        for b in ("many", "few", "one", "zero"):
            assert row[b] == ref["pseudo_shots"][b]["rank1"]
            assert row[b] is None or 0 <= row[b] <= 1
        assert set(row["groups"]["synthetic_group"]) == {"A", "B"}
    # plain's pseudo-shot buckets, recomputed from its own features (cosine > 0.7)
    feats = out / "face_table" / "plain"
    p, t = np.load(feats / "probes.npy"), np.load(feats / "train.npy")
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    n = ((p @ t.T) > np.float32(0.7)).sum(1)
    assert plain_mf["pseudo_shots"]["zero"]["probes"] == int((n == 0).sum())
    assert plain_mf["pseudo_shots"]["many"]["probes"] == int((n > 5).sum())
    assert "## Face table (the OLTR paper's Table 4, left layout)" in report
    assert "| plain (stage 1) |" in report and "| OLTR (stage 2) |" in report
    assert "synthetic_group=A" in report
