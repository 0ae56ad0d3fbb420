"""``facelt compare``: scoring helpers by hand, every method file valid, and an end-to-end run on
generated demo data whose plain-model numbers must equal the engine's own evaluation."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from facelt.compare import (Outputs, auroc, compare, load_method, matched_threshold,
                            method_config, method_report)
from facelt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
METHODS = REPO / "configs" / "methods"
RECIPE = REPO / "configs" / "demo_list.yaml"
PAPER_METHODS = ["plain", "oltr", "focal", "range", "lifted", "crt", "tau_norm", "lws",
                 "balanced_softmax", "la_loss", "logit_adjust", "openmax", "energy", "max_logit"]


def test_auroc_by_hand():
    # known 0.9, 0.7; open 0.8, 0.6: 3 of the 4 (known, open) pairs are ordered right
    assert auroc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == 0.5     # a tie counts half
    assert auroc(np.array([0.5]), np.array([1], bool)) is None


def test_matched_threshold_by_hand():
    s = np.array([5.0, 1.0, 3.0, 2.0])
    assert matched_threshold(s, 0.5) == 3.0      # accepts 5 and 3
    assert matched_threshold(s, 1.0) == 1.0
    assert matched_threshold(s, 0.0) == float("inf")


def test_method_report_by_hand():
    # counts: class 0 many (150), class 1 few (5); threshold 0.5
    counts = np.array([150, 5])
    test = Outputs(pred=np.array([0, 1, 1, 1]), score=np.array([0.9, 0.4, 0.8, 0.9]))
    labels = np.array([0, 0, 1, 1])
    open_ = Outputs(pred=np.array([0, 1]), score=np.array([0.2, 0.7]))
    rep = method_report(test, labels, open_, counts, 0.5, many=100, few=20)
    assert rep["closed_set"] == {"overall": 0.75, "many": 0.5, "medium": None, "few": 1.0}
    # open: test preds [0, -1, 1, 1] -> TP 3, FP 1 (the rejected known); open [-1, 1] -> FN 1
    assert rep["open_set"]["overall"] == 0.75
    p, r = 3 / 4, 3 / 4
    assert abs(rep["open_set"]["f_measure"] - 2 * p * r / (p + r)) < 1e-12
    assert rep["open_set"]["open_rejected"] == 0.5
    # auroc: known scores .9 .4 .8 .9 vs open .2 .7 -> 8 pairs, 7 right
    assert rep["open_set"]["auroc"] == 7 / 8


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_every_method_file_is_a_valid_overlay(name):
    spec = load_method(name, METHODS)
    base = load_method("plain", METHODS)
    cfg = method_config(RECIPE, spec, base)
    assert spec.source.read_text().startswith("#")           # header comment citing the paper
    if spec.train == "stage2":
        assert cfg.stage2.init_from == "stage1"
    if name == "focal":
        assert cfg.stage1.loss == "focal" and cfg.stage1.focal.gamma == 2.0


def test_bad_method_files_are_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: stage1\nscroe: msp\n")
    with pytest.raises(ConfigError, match="bad.yaml.*scroe"):
        load_method("bad", tmp_path)
    (tmp_path / "bad2.yaml").write_text("train: stage1\nconfig:\n  stage1:\n    loss: hinge\n")
    with pytest.raises(ConfigError, match="bad2.yaml.*stage1.loss"):
        method_config(RECIPE, load_method("bad2", tmp_path), None)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        load_method("nope", tmp_path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from facelt.utils.progress import set_quiet
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    set_quiet(True)
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "data", DemoSpec(num_classes=6, open_classes=2, max_count=40,
                                              min_count=4, val_per_class=3, test_per_class=5,
                                              open_per_class=5, image_size=16))
    d = root / "data"
    overrides = [f"data.root={d}", f"data.splits_dir={d}", "data.image_size=16", "device=cpu",
                 "stage1.epochs=2", "stage2.epochs=1", "eval.batch_size=64", "data.augment=false"]
    return root, overrides


def test_compare_end_to_end_matches_the_engine_evaluation(demo):
    from facelt.openset.classify import evaluate_checkpoint
    root, overrides = demo
    out = root / "cmp"
    methods = ["plain", "tau_norm", "logit_adjust", "openmax", "energy", "max_logit"]
    rep = compare(RECIPE, methods, out, METHODS, overrides, log=lambda s: None)
    assert list(rep["methods"]) == methods
    # the post-hoc methods reuse plain's model: one training run only
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["plain"]
    ckpt = out / "runs" / "plain" / "stage1" / "checkpoint.pt"
    ref = evaluate_checkpoint(ckpt, root / "ref", device="cpu")
    plain = rep["methods"]["plain"]
    for key in ("overall", "many", "medium", "few"):
        assert plain["closed_set"][key] == pytest.approx(ref["closed_set"][key], abs=1e-9)
        assert plain["open_set"][key] == pytest.approx(ref["open_set"][key], abs=1e-9)
    assert plain["open_set"]["f_measure"] == pytest.approx(ref["open_set"]["f_measure"])
    # the written files
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["plain"]["closed_set"] == plain["closed_set"]
    md = (out / "report.md").read_text()
    assert all(f"| {m} |" in md for m in methods)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".cache-*"))
    om = rep["methods"]["openmax"]["details"]
    assert om["activation"] == "logits" and om["tailsize"] == 20


def test_tau_zero_reproduces_plain_and_checkpoints_are_reused(demo, tmp_path):
    from facelt.cli import compare as cli_compare
    root, overrides = demo
    out = root / "cmp"            # trained by the previous test (or trained here when run alone)
    (tmp_path / "tau0.yaml").write_text("train: reuse\nposthoc: tau_norm\n"
                                        "posthoc_args: {taus: [0.0], bias: true}\nscore: msp\n")
    (tmp_path / "plain.yaml").write_text((METHODS / "plain.yaml").read_text())
    parser = argparse.ArgumentParser()
    cli_compare.register(parser.add_subparsers())
    argv = ["compare", "--config", str(RECIPE), "--methods", "plain,tau0", "--out", str(out),
            "--methods-dir", str(tmp_path)]
    for o in overrides:
        argv += ["--set", o]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    ckpt = out / "runs" / "plain" / "stage1" / "checkpoint.pt"
    mtime = ckpt.stat().st_mtime_ns
    assert args.func(args) == 0                       # a second run trains nothing
    assert ckpt.stat().st_mtime_ns == mtime
    rep = json.loads((out / "report.json").read_text())["methods"]
    assert rep["tau0"]["closed_set"] == rep["plain"]["closed_set"]
    assert rep["tau0"]["open_set"] == rep["plain"]["open_set"]
    # a changed recipe must not silently reuse the old checkpoint
    args2 = parser.parse_args(argv + ["--set", "stage1.classifier_lr=0.5"])
    from facelt.errors import CheckpointError
    with pytest.raises(CheckpointError, match="another recipe"):
        args2.func(args2)
