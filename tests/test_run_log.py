"""Issue 11: training prints the resolved config's key lines and an ETA for the whole run;
``log.tensorboard: true`` writes TensorBoard scalars beside metrics.jsonl."""
from __future__ import annotations

import builtins
import json

import pytest

from facelt.cli import main
from facelt.train.run_log import eta_line, format_duration, run_eta
from tests.conftest import ROOT, demo_overrides, set_args

CFG = str(ROOT / "configs" / "demo_list.yaml")



def test_eta_arithmetic():
    # 2 epochs measured at 10 s and 20 s (mean 15 s); 3 left in this stage, 4 in later stages
    assert run_eta([10.0, 20.0], 3, 4) == pytest.approx(15.0 * 7)
    assert format_duration(3725) == "1h02m" and format_duration(750) == "12m30s"
    assert format_duration(42) == "42s"
    line = eta_line(1, 2, 5, [10.0, 20.0], 4)
    assert line.startswith("stage 1 epoch 2/5: ETA stage 45s, whole run 1m45s")


def test_training_prints_config_lines_eta_and_writes_tensorboard(demo_data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    over = demo_overrides(demo_data, epochs=2) + ["stage1.max_steps_per_epoch=3",
                                                   "stage2.max_steps_per_epoch=2",
                                                   "log.tensorboard=true", "log_every=1"]
    capsys.readouterr()
    assert main(["train", "--config", CFG, "--out", str(out), *set_args(over)]) == 0
    text = capsys.readouterr().out
    assert "stage 1: 2 epochs on cpu, AMP off, seed 0" in text
    assert "batch 32" in text and "lr backbone" in text and "classes" in text
    # stage 1 of a two-stage run: the whole-run ETA counts stage 2's 2 epochs
    assert "stage 1 epoch 1/2: ETA stage" in text and "later stages' 2 epochs" in text
    assert "stage 2 epoch 2/2: ETA stage 0s" in text

    for stage, steps in ((1, 3), (2, 2)):
        sdir = out / f"stage{stage}"
        acc = EventAccumulator(str(sdir / "tensorboard"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"train/loss", "epoch/loss", "epoch/train_acc", "val/overall"} <= tags, tags
        assert any(t.startswith("lr/") for t in tags) and any(t.startswith("epoch_lr/") for t in tags)
        metrics = [json.loads(l) for l in (sdir / "metrics.jsonl").read_text().splitlines()]
        # the epoch scalars are the metrics.jsonl numbers, at x = epoch
        ev = acc.Scalars("epoch/loss")
        assert [e.step for e in ev] == [1, 2]
        assert [e.value for e in ev] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)
        assert [e.value for e in acc.Scalars("val/overall")] == pytest.approx(
            [m["val"]["overall"] for m in metrics], rel=1e-6)
        # a training-loss point every step (log_every 1), global step = epoch * steps + step
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 2 * steps + 1))


def test_missing_tensorboard_is_a_clear_error_before_any_work(demo_data, tmp_path, capsys,
                                                               monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name == "tensorboard" or name.startswith("tensorboard.") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = main(["train", "--config", CFG, "--out", str(out),
               *set_args(demo_overrides(demo_data, epochs=1) + ["log.tensorboard=true"])])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'facelt[tensorboard]'" in err and "log.tensorboard" in err
    assert not (out / "stage1").exists()
