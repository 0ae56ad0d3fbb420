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
    ckpt = (out / "train" / "stage2" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # a second run reuses every finished step
    assert "already complete" in capsys.readouterr().out
    assert (out / "train" / "stage2" / "checkpoint.pt").stat().st_mtime_ns == ckpt
