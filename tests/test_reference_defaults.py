"""Issue 19: the configurations people run, held to the references (items 3, 4, 5, 6, 11).

Expectations come from the reference code, written out by hand:
zhmiao/OpenLongTailRecognition-OLTR (run_networks.py evaluates ``state_dict_best``; utils.py
``shot_acc`` counts many >= 100, few <= 20), facebookresearch/classifier-balancing (utils.py
``shot_acc`` > 100 / < 20; run_networks.py steps its CosineAnnealingLR at the start of each epoch;
config/Places_LT/cls_{crt,lws}.yaml; tau_norm.py sweeps ``np.linspace(0, 2, 21)``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facelt.cli import main
from facelt.config import StageConfig, load_config
from facelt.data.lists import read_list
from facelt.data.shots import shot_counts, shot_of_counts
from facelt.errors import CheckpointError
from facelt.models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT, demo_overrides, set_args

CFG = str(ROOT / "configs" / "demo_list.yaml")
CONFIGS = ROOT / "configs"
SPLITS = ROOT / "pipelines" / "splits"


# ------------------------------------------------------------------ item 4: shot buckets
def test_places_lt_classes_at_exactly_100_and_20_change_bucket():
    counts = read_list(SPLITS / "Places_LT_train.txt.gz").class_counts()
    at_100 = np.flatnonzero(counts == 100)
    at_20 = np.flatnonzero(counts == 20)
    assert len(at_100) == 1 and len(at_20) == 6            # the released list
    paper = shot_of_counts(counts)                          # default: the paper's rule
    code = shot_of_counts(counts, rule="oltr_code")
    assert set(paper[at_100]) == {"medium"} and set(code[at_100]) == {"many"}
    assert set(paper[at_20]) == {"medium"} and set(code[at_20]) == {"few"}
    changed = np.flatnonzero(paper != code)
    assert sorted(changed) == sorted(np.r_[at_100, at_20])  # nothing else moves
    # paper: > 100 / 20..100 / < 20; the OLTR code: >= 100 / 21..99 / <= 20
    assert shot_counts(counts) == {"many": int((counts > 100).sum()),
                                   "medium": int(((counts >= 20) & (counts <= 100)).sum()),
                                   "few": int((counts < 20).sum())} == \
        {"many": 131, "medium": 163, "few": 71}
    assert shot_counts(counts, rule="oltr_code") == {"many": 132, "medium": 156, "few": 77}


def test_bucket_accuracy_by_rule_by_hand():
    from facelt.openset.metrics import shot_accuracy
    counts = [150, 100, 50, 20, 10]
    # per-class accuracies 1, 1/2, 1/4, 0, 3/4 over 4 test images each
    labels = np.repeat(np.arange(5), 4)
    pred = labels.copy()
    pred[4:6] = 0            # class 1: 2 of 4 right
    pred[8:11] = 0           # class 2: 1 of 4
    pred[12:16] = 0          # class 3: 0 of 4
    pred[16] = 0             # class 4: 3 of 4
    paper = shot_accuracy(pred, labels, counts)
    assert (paper["many"], paper["medium"], paper["few"]) == pytest.approx(
        (1.0, (0.5 + 0.25 + 0.0) / 3, 0.75))
    code = shot_accuracy(pred, labels, counts, rule="oltr_code")
    assert (code["many"], code["medium"], code["few"]) == pytest.approx(
        ((1.0 + 0.5) / 2, 0.25, (0.0 + 0.75) / 2))
    assert load_config(None).eval.shot_rule == "paper"


# ------------------------------------------------------------------ item 3: best weights
@pytest.fixture(scope="module")
def stage1_run(demo_data, tmp_path_factory):
    """Stage 1 of the demo list recipe (it has a val split: best.pt exists), 2 short epochs."""
    out = tmp_path_factory.mktemp("best_run")
    over = demo_overrides(demo_data) + ["stage1.max_steps_per_epoch=2"]
    assert main(["train", "--config", CFG, "--out", str(out), "--stage", "1",
                 *set_args(over)]) == 0
    return out, over


def _predict_one_class(path: Path, k: int) -> None:
    """Make the linear classifier of ``path`` predict class ``k`` for every image."""
    state = load_checkpoint(path)
    w, b = state["model"]["head.fc.weight"], state["model"]["head.fc.bias"]
    state["model"]["head.fc.weight"] = torch.zeros_like(w)
    state["model"]["head.fc.bias"] = torch.zeros_like(b).index_fill_(0, torch.tensor([k]), 5.0)
    save_checkpoint(path, state)


def _expected_buckets(demo_data: Path, k: int) -> dict:
    """Every image predicted as class k: class k's accuracy 1, the others 0; buckets by the
    paper's rule over the training counts; overall = the share of class k in the test split."""
    counts = read_list(demo_data / "demo_train.txt").class_counts()
    test = read_list(demo_data / "demo_test.txt").labels
    out = {"overall": float(np.mean(test == k))}
    for name, sel in (("many", counts > 100), ("medium", (counts >= 20) & (counts <= 100)),
                      ("few", counts < 20)):
        out[name] = float(sel[k]) / sel.sum() if sel.any() else None
    return out


def test_classify_evaluates_best_pt_by_default(stage1_run, demo_data, tmp_path, capsys):
    out, over = stage1_run
    best = out / "stage1" / "best.pt"
    _predict_one_class(best, 3)      # best.pt now differs from the last epoch, predictably
    saved = load_checkpoint(best)
    rep_dir = tmp_path / "eval"
    assert main(["classify", "--config", CFG, *set_args(over), "--checkpoint", str(out / "stage1"),
                 "--out", str(rep_dir)]) == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["weights_file"] == str(best)
    assert rep["weights"].startswith(f"best (epoch {saved['best']['epoch']}")
    want = _expected_buckets(demo_data, 3)
    for key, v in want.items():
        assert rep["closed_set"][key] == (pytest.approx(v, abs=1e-6) if v is not None else None)
    assert rep["shot_rule"].startswith("paper: many > 100")
    assert "weights best (epoch" in (rep_dir / "report.md").read_text()
    # --weights last: the last epoch, said so
    assert main(["classify", "--config", CFG, *set_args(over), "--checkpoint", str(out / "stage1"),
                 "--weights", "last", "--out", str(tmp_path / "last")]) == 0
    last = json.loads((tmp_path / "last" / "report.json").read_text())
    assert last["weights"] == "last (epoch 2)" and last["weights_file"].endswith("checkpoint.pt")
    # the OLTR code's rule, named in the report
    assert main(["classify", "--config", CFG, *set_args(over + ["eval.shot_rule=oltr_code"]),
                 "--checkpoint", str(out / "stage1"), "--out", str(tmp_path / "code")]) == 0
    code = json.loads((tmp_path / "code" / "report.json").read_text())
    assert code["shot_rule"].startswith("oltr_code: many >= 100")


def test_evaluation_weights_rule(tmp_path):
    from facelt.models.eval_weights import evaluation_weights
    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "checkpoint.pt").write_bytes(b"x")
    (stage / "config.yaml").write_text("data: {val: ''}\n")
    assert evaluation_weights(stage) == stage / "checkpoint.pt"          # no val: the last epoch
    with pytest.raises(CheckpointError, match="--weights last"):
        evaluation_weights(stage, "best")
    (stage / "config.yaml").write_text("data: {val: v.txt}\n")
    with pytest.raises(CheckpointError, match="best.pt does not exist"):
        evaluation_weights(stage)                                        # val, but no best.pt yet
    (stage / "best.pt").write_bytes(b"y")
    assert evaluation_weights(stage) == stage / "best.pt"
    assert evaluation_weights(stage, "last") == stage / "checkpoint.pt"
    assert evaluation_weights(stage / "checkpoint.pt") == stage / "checkpoint.pt"  # a file: as is


def test_compare_evaluates_best_pt_by_default(demo_data, tmp_path):
    from facelt.compare import compare
    over = demo_overrides(demo_data) + ["stage1.max_steps_per_epoch=2"]
    methods = CONFIGS / "methods"
    compare(CFG, ["plain"], tmp_path, methods, over, log=lambda s: None)
    stage = tmp_path / "runs" / "plain" / "stage1"
    _predict_one_class(stage / "best.pt", 2)
    rep = compare(CFG, ["plain"], tmp_path, methods, over, log=lambda s: None)  # reuses the run
    plain = rep["methods"]["plain"]
    assert plain["checkpoint"] == str(stage / "best.pt") and plain["weights"].startswith("best")
    assert rep["weights"] == "auto"
    assert plain["closed_set"]["overall"] == pytest.approx(
        _expected_buckets(demo_data, 2)["overall"], abs=1e-6)
    assert rep["shot_rule"].startswith("paper:")
    assert "Weights (--weights auto): plain best (epoch" in (tmp_path / "report.md").read_text()
    last = compare(CFG, ["plain"], tmp_path, methods, over, log=lambda s: None, weights="last")
    assert last["methods"]["plain"]["weights"].startswith("last (epoch 2")


def test_check_states_the_shot_rule(demo_data, capsys):
    assert main(["check", "--config", CFG, *set_args(demo_overrides(demo_data))]) == 0
    assert "(shot rule paper: many > 100 training images" in capsys.readouterr().out


def test_demo_report_states_rule_and_weights(tmp_path):
    from facelt.jobs.demo_report import write_demo_summary
    rep = {"closed_set": {k: 0.5 for k in ("overall", "many", "medium", "few")},
           "open_set": {k: 0.5 for k in ("overall", "many", "medium", "few", "f_measure")},
           "shot_rule": "paper: many > 100 training images", "weights": "last (epoch 8)"}
    manifest = {"totals": {"images": 10, "identities": 2}, "C": 1.0,
                "shots": {"many": 0, "medium": 0, "few": 2}}
    md = write_demo_summary(tmp_path, manifest, {1: rep, 2: rep},
                            {"gallery": 10, "rank1": 0.5, "trials": 4}, 1.0).read_text()
    assert "Shot buckets: paper: many > 100" in md
    assert "Weights: stage 1 last (epoch 8), stage 2 last (epoch 8)." in md


# ------------------------------------------------------------------ item 5: decoupling details
def test_cosine_schedule_is_classifier_balancings():
    """CosineAnnealingLR(T_max=10, eta_min=0) from 0.2, ``scheduler.step()`` at the start of every
    epoch (run_networks.py ``train``): epoch e (1-based) trains at 0.1 (1 + cos(pi e / 10))."""
    from facelt.train.stage import build_scheduler
    want = [0.19510565, 0.18090170, 0.15877853, 0.13090170, 0.10000000,
            0.06909830, 0.04122147, 0.01909830, 0.00489435, 0.0]
    st = StageConfig(epochs=10, lr_schedule="cosine", classifier_lr=0.2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = build_scheduler(opt, st)
    trained = []
    for _ in range(10):   # the trainer's order: train the epoch, then scheduler.step()
        trained.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert trained == pytest.approx(want, abs=1e-8)


def test_places_lt_crt_and_lws_use_classifier_balancings_places_values():
    from facelt.compare import load_method, method_config
    methods = CONFIGS / "methods"
    base = load_method("plain", methods)
    for name, epochs in (("crt", 10), ("lws", 5)):
        spec = load_method(name, methods)
        # config/Places_LT/cls_{crt,lws}.yaml: classifier lr 0.1, batch 256, num_epochs 10 / 5,
        # coslr, ResNet152Feature use_fc false (feat_dim 2048), fix true
        cfg = method_config(CONFIGS / "places_lt.yaml", spec, base)
        st = cfg.stage2
        assert (st.classifier_lr, st.batch_size, st.epochs, st.lr_schedule) == \
            (0.1, 256, epochs, "cosine")
        assert st.freeze_backbone and cfg.stage1.fc_add == 0 and st.fc_add in (0, -1)
        # ImageNet-LT keeps config/ImageNet_LT/cls_*.yaml: lr 0.2, batch 512
        st = method_config(CONFIGS / "imagenet_lt.yaml", spec, base).stage2
        assert (st.classifier_lr, st.batch_size) == (0.2, 512)
    # the plain baseline on Places-LT stays the OLTR stage 1 (use_fc: 512)
    assert method_config(CONFIGS / "places_lt.yaml", base, None).stage1.fc_add == 512
    # the one-deviation ablation still differs from cRT in the BN mode only, on Places-LT too
    ref = method_config(CONFIGS / "places_lt.yaml", load_method("crt", methods), base).to_dict()
    var = method_config(CONFIGS / "places_lt.yaml", load_method("ablation/crt_eval_bn", methods),
                        base).to_dict()
    var["stage2"]["frozen_bn"] = "train"
    assert var == ref


def test_tau_norm_sweeps_linspace_0_2_21():
    from facelt.compare import load_method
    from facelt.compare.evaluator import TAU_SWEEP
    want = [k / 10 for k in range(21)]                  # np.linspace(0, 2, 21): 0.0, 0.1, .., 2.0
    assert load_method("tau_norm", CONFIGS / "methods").posthoc_args["taus"] == pytest.approx(want)
    assert TAU_SWEEP == pytest.approx(want)


def test_a_stage2_method_with_its_own_stage1_trains_it_once(demo_data, tmp_path):
    """A stage-2 method whose overlay changes stage 1 (Places-LT cRT / LWS: no fc_add) starts from
    a stage 1 of that config, trained once and shared, not from plain's."""
    from facelt.compare import compare
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "plain.yaml").write_text((CONFIGS / "methods" / "plain.yaml").read_text())
    for name in ("crt", "lws"):
        (methods / f"{name}.yaml").write_text(
            (CONFIGS / "methods" / f"{name}.yaml").read_text()
            + "  demo_list:\n    stage1: {fc_add: 8}\n    stage2: {epochs: 1, batch_size: 32}\n")
    over = demo_overrides(demo_data, epochs=1) + ["stage1.max_steps_per_epoch=2",
                                                  "stage2.max_steps_per_epoch=2"]
    rep = compare(CFG, ["plain", "crt", "lws"], tmp_path / "out", methods, over, log=lambda s: None)
    runs = tmp_path / "out" / "runs"
    assert load_checkpoint(runs / "plain" / "stage1" / "checkpoint.pt")["config"]["stage1"][
        "fc_add"] == 0
    def fc_add(model: dict) -> torch.Tensor:
        return next(v for k, v in model.items() if k.endswith("fc_add.fc.weight"))
    crt1 = load_checkpoint(runs / "crt" / "stage1" / "checkpoint.pt")
    assert crt1["config"]["stage1"]["fc_add"] == 8 and fc_add(crt1["model"]).shape[0] == 8
    assert not (runs / "lws" / "stage1").exists()         # LWS shares cRT's stage 1
    for name in ("crt", "lws"):
        s2 = load_checkpoint(runs / name / "stage2" / "checkpoint.pt")["model"]
        # cosine over 1 epoch trains at 0 (classifier-balancing's schedule): stage 1's fc_add kept
        torch.testing.assert_close(fc_add(s2), fc_add(crt1["model"]))
    assert set(rep["methods"]) == {"plain", "crt", "lws"}


# ------------------------------------------------------------------ item 6: Places-LT weights
def test_places_lt_recipe_trains_from_the_caffe_resnet152():
    # config/Places_LT/stage_1.py: feature_param caffe: True; ResNet152Feature.py loads
    # './logs/caffe_resnet152.pth' (utils.init_weights(caffe=True))
    m = load_config(CONFIGS / "places_lt.yaml").model
    assert (Path(m.pretrained).name, m.pretrained_format, m.backbone) == \
        ("caffe_resnet152.pth", "caffe", "resnet152")
    readme = (ROOT / "README.md").read_text()
    assert "caffe_resnet152.pth" in readme and "model.pretrained_format=torchvision" in readme


# ------------------------------------------------------------------ item 11: logs
def test_logs_record_the_rate_each_epoch_trained_at_and_the_schedule(demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    over = demo_overrides(demo_data) + [
        "stage1.max_steps_per_epoch=2", "stage2.max_steps_per_epoch=2",
        "stage1.lr_step=1", "stage1.lr_gamma=0.1", "stage2.lr_schedule=cosine",
        "log.tensorboard=true", "log_every=1"]
    capsys.readouterr()
    assert main(["train", "--config", CFG, "--out", str(out), *set_args(over)]) == 0
    text = capsys.readouterr().out
    assert "schedule step x0.1 every 1 epochs" in text
    assert "schedule cosine over 2 epochs" in text
    rows = {s: [json.loads(l) for l in (out / f"stage{s}" / "metrics.jsonl").read_text().splitlines()]
            for s in (1, 2)}
    # stage 1 (demo recipe: backbone and classifier lr 0.05), step x0.1 every epoch: epoch 1
    # trains at 0.05, epoch 2 at 0.005
    assert [r["lr"]["classifier"] for r in rows[1]] == pytest.approx([0.05, 0.005])
    # stage 2, cosine over 2 epochs from classifier lr 0.05: 0.05 (1 + cos(pi/2)) / 2, then 0
    assert [r["lr"]["classifier"] for r in rows[2]] == pytest.approx([0.025, 0.0], abs=1e-12)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "stage1" / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("epoch_lr/classifier")] == pytest.approx([0.05, 0.005])
    # the per-step LR during epoch 2 is the epoch's, 0.005
    steps = acc.Scalars("lr/classifier")
    assert [e.value for e in steps] == pytest.approx([0.05, 0.05, 0.005, 0.005])


def test_schedule_description_numbers():
    from facelt.train.run_log import schedule_description
    assert schedule_description(StageConfig(lr_step=10, lr_gamma=0.1)) == \
        "schedule step x0.1 every 10 epochs"
    text = schedule_description(StageConfig(epochs=10, lr_schedule="cosine"))
    assert "x0.9755 in epoch 1" in text and "x0 in epoch 10" in text   # (1 + cos(pi/10)) / 2
    text = schedule_description(StageConfig(epochs=6, lr_schedule="poly", warmup_epochs=2))
    assert "x0.3333 in epoch 1" in text and "x0.0625 in epoch 6" in text  # 1/3; (1 - 3/4)^2


def test_readme_says_what_places_prepare_is_for():
    readme = (ROOT / "README.md").read_text()
    assert "unpublished" not in readme
    from pipelines.prepare_table import PREPARE_TABLE
    assert "NOT needed for the benchmark" in PREPARE_TABLE["places_lt"].source
