"""The long-tail methods of issue 22 (ldam_drw, mislas, weight_balancing, ride, gpaco) as methods
of ``facelt compare``: their method files give the ImageNet-LT recipe values of each
repository's config, and one end-to-end comparison with plain and OLTR reports every column."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from facelt.compare import compare, load_method, method_config

REPO = Path(__file__).resolve().parents[1]
METHODS = REPO / "configs" / "methods"
NEW = ["ldam_drw", "mislas", "weight_balancing", "ride", "gpaco"]


@pytest.mark.parametrize("name", NEW)
def test_method_file_is_a_valid_overlay_on_every_recipe(name):
    base = load_method("plain", METHODS)
    spec = load_method(name, METHODS)
    assert spec.source.read_text().startswith("#")
    for recipe in ("demo_list", "fashion_lt", "imagenet_lt", "places_lt"):
        method_config(REPO / "configs" / f"{recipe}.yaml", spec, base)


def _imagenet(name: str):
    return method_config(REPO / "configs" / "imagenet_lt.yaml", load_method(name, METHODS),
                         load_method("plain", METHODS))


def test_imagenet_lt_values_are_the_reference_configs():
    # kaidic/LDAM-DRW cifar_train.py: 200 epochs, lr 0.1, wd 2e-4, x0.01 at 160 and 180, DRW 160
    st = _imagenet("ldam_drw").stage1
    assert (st.epochs, st.batch_size, st.classifier_lr, st.weight_decay) == (200, 128, 0.1, 2e-4)
    assert (st.lr_schedule, st.lr_milestones, st.lr_gamma, st.warmup_epochs) == (
        "multistep", [160, 180], 0.01, 5)
    assert (st.loss, st.ldam.max_m, st.ldam.s, st.ldam.drw_epoch, st.ldam.beta) == (
        "ldam", 0.5, 30.0, 160, 0.9999)
    # MiSLAS imagenet_resnet50_stage{1_mixup,2_mislas}.yaml
    cfg = _imagenet("mislas")
    assert (cfg.stage1.epochs, cfg.stage1.batch_size, cfg.stage1.mixup.alpha) == (180, 256, 0.2)
    s2 = cfg.stage2
    assert (s2.epochs, s2.classifier_lr, s2.lws.classifier_lr_factor) == (10, 0.1, 0.05)
    assert (s2.label_aware_smoothing.smooth_head, s2.label_aware_smoothing.smooth_tail) == (0.3, 0.0)
    assert s2.freeze_backbone and s2.frozen_bn == "train" and s2.mixup.alpha == 0.0
    # LTR-weight-balancing demos: wd 5e-3 / 320 epochs; stage 2 wd 0.1, MaxNorm 0.1, CB beta .9999
    cfg = _imagenet("weight_balancing")
    assert (cfg.stage1.epochs, cfg.stage1.weight_decay, cfg.stage1.classifier_lr) == (320, 5e-3, 0.01)
    assert (cfg.stage2.weight_decay, cfg.stage2.maxnorm.thresh, cfg.stage2.loss) == (
        0.1, 0.1, "class_balanced")
    # RIDE config_imagenet_lt_resnext50_ride.json
    st = _imagenet("ride").stage1
    assert (st.experts, st.epochs, st.batch_size, st.weight_decay, st.nesterov) == (
        3, 100, 256, 2e-4, True)
    assert (st.lr_milestones, st.ldam.drw_epoch, st.ride.reweight_factor) == ([60, 80], 80, 0.02)
    # GPaCo ImageNetLT_train_X50.sh
    st = _imagenet("gpaco").stage1
    assert (st.paco.alpha, st.paco.beta, st.paco.gamma, st.paco.temperature) == (0.05, 1.0, 1.0, 0.2)
    assert (st.epochs, st.classifier_lr, st.paco.queue_size, st.warmup_epochs) == (400, 0.06, 8192, 10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from facelt.utils.progress import set_quiet
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    set_quiet(True)
    root = tmp_path_factory.mktemp("lt")
    make_demo_dataset(root / "data", DemoSpec(num_classes=5, open_classes=1, max_count=30,
                                              min_count=4, val_per_class=2, test_per_class=3,
                                              open_per_class=4, image_size=16))
    d = root / "data"
    return root, [f"data.root={d}", f"data.splits_dir={d}", "data.image_size=16", "device=cpu",
                  "stage1.epochs=2", "stage2.epochs=1", "stage1.max_steps_per_epoch=2",
                  "stage2.max_steps_per_epoch=2", "stage1.batch_size=16", "stage2.batch_size=16",
                  "stage1.ldam.drw_epoch=1", "eval.batch_size=64", "data.augment=false"]


def test_compare_runs_every_long_tail_method(demo):
    root, overrides = demo
    out = root / "cmp"
    methods = ["plain", "oltr"] + NEW
    rep = compare(REPO / "configs" / "demo_list.yaml", methods, out, METHODS, overrides,
                  log=lambda s: None)
    saved = json.loads((out / "report.json").read_text())
    assert list(saved["methods"]) == methods
    # mislas and weight_balancing train a stage 1 of their own (mixup / weight decay differ)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(methods)
    for m in methods:
        r = saved["methods"][m]
        for k in ("many", "medium", "few", "overall"):
            assert k in r["closed_set"]
        assert 0.0 <= r["open_set"]["f_measure"] <= 1.0
        assert 0.0 <= r["open_set"]["auroc"] <= 1.0
        best = r["open_set"]["best_f"]
        assert best["f_measure"] >= r["open_set"]["f_measure"] - 1e-12   # 0.1 is a candidate
        scores = r["open_set"]["by_score"]
        assert set(scores) == {"msp", "energy", "max_logit"}
        assert scores["msp"]["f_measure"] == pytest.approx(r["open_set"]["f_measure"])
        assert scores["msp"]["auroc"] == pytest.approx(r["open_set"]["auroc"])
    assert rep["methods"]["ride"]["train"] == "stage1"
