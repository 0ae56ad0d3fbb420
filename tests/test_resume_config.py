"""Issue 11: --resume with a config that trains differently is refused naming each changed key;
keys that do not change the training may change; epochs may grow, and that is recorded."""
from __future__ import annotations

import json

import pytest

from facelt.cli import main
from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.models.checkpoint import load_checkpoint
from facelt.train.resume_check import check_resume_config, config_changes, is_resume_free
from tests.conftest import ROOT, demo_overrides

CFG = str(ROOT / "configs" / "demo_list.yaml")


def _argv(out, over):
    argv = ["train", "--config", CFG, "--out", str(out), "--stage", "1", "--resume"]
    for o in over:
        argv += ["--set", o]
    return argv


@pytest.fixture(scope="module")
def one_epoch(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    over = demo_overrides(demo_data, epochs=1) + ["stage1.max_steps_per_epoch=2"]
    assert main(_argv(out, over)) == 0
    return out, over


def test_changed_training_keys_are_refused_and_nothing_is_rewritten(one_epoch, demo_data,
                                                                     tmp_path, capsys):
    out, over = one_epoch
    other = tmp_path / "other_train.txt"  # another list (here: a copy elsewhere)
    other.write_text((demo_data / "demo_train.txt").read_text())
    stage = out / "stage1"
    before = {n: (stage / n).read_bytes() for n in ("checkpoint.pt", "config.yaml", "metrics.jsonl")}
    capsys.readouterr()
    rc = main(_argv(out, over + ["stage1.batch_size=16", "stage1.backbone_lr=0.5",
                                 f"data.train={other}", "stage1.epochs=3"]))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for key, old, new in (("stage1.batch_size", "32", "16"), ("stage1.backbone_lr", "", "0.5"),
                          ("data.train", "", "other_train.txt")):
        line = next(l for l in err.splitlines() if l.strip().startswith(key + ":"))
        assert old in line and new in line
    assert "stage1.epochs:" not in err  # growing epochs is allowed, not named
    assert {n: (stage / n).read_bytes() for n in before} == before
    assert not (stage / "resumes.jsonl").exists()


def test_growing_epochs_and_free_keys_resume_and_are_recorded(one_epoch, capsys):
    out, over = one_epoch
    assert main(_argv(out, over + ["stage1.epochs=2", "eval.batch_size=7", "log_every=3"])) == 0
    ck = load_checkpoint(out / "stage1" / "checkpoint.pt")
    assert ck["complete"] and ck["epoch"] == 1          # trained the added epoch
    rec = [json.loads(l) for l in (out / "stage1" / "resumes.jsonl").read_text().splitlines()]
    assert rec[-1]["resumed_after_epoch"] == 1
    assert rec[-1]["changed"] == {"stage1.epochs": [1, 2], "eval.batch_size": [64, 7],
                                  "log_every": [50, 3]}
    saved_yaml = (out / "stage1" / "config.yaml").read_text()
    assert "epochs: 2" in saved_yaml
    # shrinking below what was trained is refused
    capsys.readouterr()
    assert main(_argv(out, over + ["stage1.epochs=1"])) == 2
    assert "stage1.epochs" in capsys.readouterr().err


def test_stage_sections_that_a_stage_does_not_use(demo_data):
    over = demo_overrides(demo_data, epochs=1)
    saved = load_config(CFG, over).to_dict()
    changed = load_config(CFG, over + ["stage2.batch_size=8"])
    # stage 1 has not used stage2.*; stage 2 uses stage1.* (it started from that stage 1)
    assert check_resume_config(saved, changed, 1, 1, ROOT / "x.pt") == {}
    with pytest.raises(ConfigError, match="stage2.batch_size: 32 in the run, 8 now"):
        check_resume_config(saved, changed, 2, 0, ROOT / "x.pt")
    changed1 = load_config(CFG, over + ["stage1.batch_size=8"])
    with pytest.raises(ConfigError, match="stage1.batch_size: 32 in the run, 8 now"):
        check_resume_config(saved, changed1, 2, 0, ROOT / "x.pt")
    assert config_changes(saved, load_config(CFG, over)) == {}
    assert is_resume_free("data.num_workers") and is_resume_free("device")
    assert not is_resume_free("data.root") and not is_resume_free("amp")
