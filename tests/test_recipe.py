"""Issue 13: the reference recipes by default, and the pieces they need, checked by hand.

The recipe numbers are pinned against the reference config files, written out here by hand
(zhmiao/OpenLongTailRecognition-OLTR config/{ImageNet_LT,Places_LT}/*.py and
facebookresearch/classifier-balancing config/ImageNet_LT/cls_{crt,lws}.yaml).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facelt.config import Config, StageConfig, config_yaml, load_config
from facelt.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# ------------------------------------------------------------------ recipes = reference configs
def test_imagenet_lt_recipe_is_the_reference():
    cfg = load_config(CONFIGS / "imagenet_lt.yaml")
    s1, s2 = cfg.stage1, cfg.stage2
    # config/ImageNet_LT/stage_1.py: batch_size 128, num_epochs 30, step_size 10 gamma 0.1,
    # feat_model lr 0.1 (use_fc False), classifier lr 0.1, momentum 0.9, weight_decay 0.0005
    assert (s1.batch_size, s1.epochs, s1.lr_step, s1.lr_gamma) == (128, 30, 10, 0.1)
    assert (s1.backbone_lr, s1.classifier_lr, s1.fc_add) == (0.1, 0.1, 0)
    assert (s1.momentum, s1.weight_decay, s1.sampler) == (0.9, 0.0005, "instance")
    # config/ImageNet_LT/stage_2_meta_embedding.py: batch_size 128, num_epochs 60, step_size 20,
    # feat_model lr 0.01 (use_modulatedatt True, use_fc True, fix False), classifier lr 0.1
    # (stage1_weights True), FeatureLoss lr 0.01 weight 0.01, ClassAwareSampler num_samples_cls 4
    assert (s2.batch_size, s2.epochs, s2.lr_step, s2.lr_gamma) == (128, 60, 20, 0.1)
    assert (s2.backbone_lr, s2.attention_lr, s2.classifier_lr, s2.centroids_lr) == \
        (0.01, 0.01, 0.1, 0.01)
    assert (s2.attention, s2.fc_add, s2.freeze_backbone) == (True, 512, False)
    assert (s2.sampler, s2.samples_per_class) == ("class_aware", 4)
    assert (s2.centroid_loss.weight, s2.centroid_loss.update) == (0.01, "reference")
    assert (s2.meta.hallucinator_init, s2.spatial_attention, s2.init_weights) == \
        ("stage1", "reference", "best")
    assert (s2.meta.reach_scale, s2.cosine.scale) == (10.0, 16.0)
    # models/ResNetFeature.py: the init loop after ModulatedAttLayer redraws its convs (issue 19)
    assert s2.attention_init == "reference"


def test_places_lt_recipe_is_the_reference():
    cfg = load_config(CONFIGS / "places_lt.yaml")
    s1, s2 = cfg.stage1, cfg.stage2
    # config/Places_LT/stage_1.py: batch_size 128, 30 epochs, step 10, feat_model lr 0.001
    # (use_fc True: 2048 -> 512, feature_dim 512), classifier lr 0.1
    assert (s1.batch_size, s1.epochs, s1.lr_step) == (128, 30, 10)
    assert (s1.backbone_lr, s1.classifier_lr, s1.fc_add) == (0.001, 0.1, 512)
    # config/Places_LT/stage_2_meta_embedding.py: batch_size 128, 30 epochs, step 10, feat_model
    # lr 0.0001 with fix True (only attention and fc train), classifier lr 0.01, FeatureLoss lr 0.01
    assert (s2.batch_size, s2.epochs, s2.lr_step) == (128, 30, 10)
    assert (s2.backbone_lr, s2.attention_lr, s2.classifier_lr, s2.centroids_lr) == \
        (0.0001, 0.0001, 0.01, 0.01)
    assert (s2.freeze_backbone, s2.frozen_bn, s2.fc_add, s2.attention) == (True, "train", 512, True)
    assert (s2.centroid_loss.update, s2.meta.hallucinator_init) == ("reference", "stage1")
    assert s2.attention_init == "reference"        # ResNet152Feature: the same init loop


def test_crt_and_lws_overlays_are_classifier_balancing():
    from facelt.compare import load_method, method_config
    base = load_method("plain", CONFIGS / "methods")
    for name, epochs in (("crt", 10), ("lws", 5)):
        # cls_crt.yaml: num_epochs 10; cls_lws.yaml: num_epochs 5; both: coslr true, endlr 0.0,
        # batch_size 512, classifier lr 0.2, feat_model fix true
        spec = load_method(name, CONFIGS / "methods")
        st = method_config(CONFIGS / "imagenet_lt.yaml", spec, base).stage2
        assert (st.epochs, st.batch_size, st.lr_schedule, st.classifier_lr) == \
            (epochs, 512, "cosine", 0.2)
        assert st.freeze_backbone and st.frozen_bn == "train" and st.fc_add == -1
    tau = load_method("tau_norm", CONFIGS / "methods")
    assert tau.posthoc_args["bias"] is False


def test_config_command_prints_every_key(capsys):
    from facelt.cli import main
    assert main(["config", "--dataset", "imagenet_lt", "--set", "stage2.fc_add=256"]) == 0
    text = capsys.readouterr().out
    import yaml
    tree = yaml.safe_load(text)

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, prefix + k + ".")
        return out
    assert keys(tree) == keys(Config().to_dict())
    assert tree["stage2"]["fc_add"] == 256 and tree["stage2"]["attention_lr"] == 0.01
    assert tree["stage2"]["attention_init"] == "reference"
    # the printed text loads back to the same config
    assert yaml.safe_load(config_yaml(load_config(None, base=tree))) == tree


def test_config_command_bad_key_is_a_clear_error(capsys):
    from facelt.cli import main
    assert main(["config", "--dataset", "imagenet_lt", "--set", "stage2.fc_ad=1"]) == 2
    assert "stage2.fc_ad" in capsys.readouterr().err


# ------------------------------------------------------------------ model pieces by hand
def test_reference_spatial_attention_on_a_7x7_map():
    from facelt.models.attention import ModulatedAttention, ReferenceSpatialAttention
    sa = ReferenceSpatialAttention(channels=2, size=7)
    with torch.no_grad():
        sa.fc.weight.zero_()
        sa.fc.bias.zero_()
        sa.fc.weight[:, 49:98] = torch.eye(49)     # score of position p = channel 1 at p
        sa.fc.bias[0] = 1.0
    x = torch.randn(3, 2, 7, 7, dtype=torch.float32)
    got = sa(x)
    assert got.shape == (3, 1, 7, 7)
    scores = x[:, 1].reshape(3, 49).numpy().astype(np.float64)
    scores[:, 0] += 1.0
    e = np.exp(scores - scores.max(1, keepdims=True))
    want = (e / e.sum(1, keepdims=True)).reshape(3, 7, 7)
    np.testing.assert_allclose(got[:, 0].detach().numpy(), want, rtol=1e-5, atol=1e-7)
    # position-specific: the same input at another position gets another weight row
    assert sa.fc.weight.shape == (49, 2 * 49)
    with pytest.raises(ConfigError, match="conv form"):
        sa(torch.randn(1, 2, 6, 6))
    # in the modulated attention, zero-initialised: the identity at the start
    ma = ModulatedAttention(2, map_size=7, init="identity")
    assert isinstance(ma.spatial, ReferenceSpatialAttention)
    with torch.no_grad():
        torch.testing.assert_close(ma(x), x)


def _cfg(**stage2) -> Config:
    cfg = Config()
    cfg.data.channels, cfg.data.image_size = 1, 28
    cfg.model.backbone = "small_cnn"
    for k, v in stage2.items():
        setattr(cfg.stage2, k, v)
    return cfg


def test_build_net_uses_the_reference_or_conv_attention():
    from facelt.models.attention import ReferenceSpatialAttention, SpatialAttention
    from facelt.models.build import build_net
    ref = build_net(_cfg(), 2, 5)
    assert isinstance(ref.body.attention.spatial, ReferenceSpatialAttention)
    assert ref.body.attention.spatial.size == 7           # 28 -> 14 -> 7 in small_cnn
    conv = build_net(_cfg(spatial_attention="conv"), 2, 5)
    assert isinstance(conv.body.attention.spatial, SpatialAttention)


def test_fc_add_is_relu_linear_after_pooling_and_part_of_the_feature_model():
    from facelt.models.build import build_net
    from facelt.models.net import param_groups
    from facelt.train.stage import freeze_backbone
    net = build_net(_cfg(fc_add=4, attention=False), 2, 3).eval()
    assert net.body.fc_add.fc.weight.shape == (4, 128) and net.head.hallucinator.weight.shape == (3, 4)
    x = torch.randn(2, 1, 28, 28)
    pooled = net.body.backbone(x).mean(dim=(2, 3))
    w, b = net.body.fc_add.fc.weight, net.body.fc_add.fc.bias
    want = (pooled @ w.t() + b).clamp_min(0)
    torch.testing.assert_close(net.embed(x), want)
    ids = {id(p) for p in param_groups(net)["backbone"]}
    assert id(w) in ids and id(b) in ids
    freeze_backbone(net)                     # the reference's fix: attention and fc still train
    assert w.requires_grad and not any(p.requires_grad for p in net.body.backbone.parameters())
    # -1: stage 1's width
    cfg = _cfg(fc_add=-1, attention=False)
    cfg.stage1.fc_add = 6
    assert build_net(cfg, 2, 3).body.fc_add.out_dim == 6
    cfg.stage1.fc_add = 0
    assert build_net(cfg, 2, 3).body.fc_add is None


def test_hallucinator_starts_from_the_stage1_classifier():
    from facelt.models.build import build_net
    from facelt.train.stage import init_hallucinator_from_classifier
    net = build_net(_cfg(), 2, 5)
    w = torch.arange(5 * 128, dtype=torch.float32).reshape(5, 128) / 100.0
    b = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0])
    init_hallucinator_from_classifier(net, {"head.fc.weight": w, "head.fc.bias": b}, "s1.pt")
    torch.testing.assert_close(net.head.hallucinator.weight.detach(), w)
    torch.testing.assert_close(net.head.hallucinator.bias.detach(), b)
    with pytest.raises(CheckpointError, match="hallucinator_init=random"):
        init_hallucinator_from_classifier(net, {"head.fc.weight": w[:, :64], "head.fc.bias": b},
                                          "s1.pt")
    with pytest.raises(CheckpointError, match="head.fc.weight"):
        init_hallucinator_from_classifier(net, {}, "s1.pt")


def test_frozen_backbone_bn_train_mode_moves_running_stats_not_weights():
    from facelt.models.build import build_net
    from facelt.train.stage import build_optimizer, freeze_backbone, set_train_mode
    for mode, stats_move in (("train", True), ("eval", False)):
        torch.manual_seed(0)
        cfg = _cfg(freeze_backbone=True, frozen_bn=mode, attention=False,
                   meta=StageConfig().meta)
        net = build_net(cfg, 2, 3)
        net.head.init_centroids(torch.randn(3, 128))
        freeze_backbone(net)
        bn = net.body.backbone.features[1]
        mean0, weight0 = bn.running_mean.clone(), bn.weight.detach().clone()
        conv0 = net.body.backbone.features[0].weight.detach().clone()
        opt = build_optimizer(net, cfg.stage2)
        set_train_mode(net, cfg.stage2)
        assert bn.training is stats_move
        x = torch.randn(8, 1, 28, 28) * 3 + 1
        loss = net(x)["logits"].logsumexp(1).mean()
        loss.backward()
        opt.step()
        assert (not torch.equal(bn.running_mean, mean0)) is stats_move
        torch.testing.assert_close(bn.weight.detach(), weight0, rtol=0, atol=0)
        torch.testing.assert_close(net.body.backbone.features[0].weight.detach(), conv0, rtol=0, atol=0)


def test_cosface_margin_is_0_35_by_default_and_arcface_0_5():
    from facelt.models.head_table import build_head
    st = StageConfig(head="cosface")
    assert st.margin.m is None
    head = build_head(st, 2, 2)
    assert head.m == 0.35
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    v = torch.tensor([[3.0, 4.0]])                   # cos = 0.6, 0.8
    logits, _ = head(v, torch.tensor([1]))
    torch.testing.assert_close(logits, torch.tensor([[64 * 0.6, 64 * (0.8 - 0.35)]]))
    assert build_head(StageConfig(head="arcface"), 2, 2).m == 0.5
    st.margin.m = 0.4
    assert build_head(st, 2, 2).m == 0.4


def test_margin_m_range_is_still_checked():
    with pytest.raises(ConfigError, match="stage1.margin.m"):
        load_config(None, ["stage1.margin.m=-0.1"])


# ------------------------------------------------------------------ schedules
def test_lr_schedules_by_hand():
    from facelt.train.stage import build_scheduler, lr_factor
    st = StageConfig(epochs=4, lr_schedule="cosine")
    # issue 19: classifier-balancing steps CosineAnnealingLR at each epoch's start, so epoch e
    # (0-based) trains at (1 + cos(pi (e + 1) / 4)) / 2 (was (1 + cos(pi e / 4)) / 2)
    assert [lr_factor(st, e) for e in range(4)] == pytest.approx(
        [(1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0])
    st = StageConfig(epochs=6, lr_schedule="poly", warmup_epochs=2, poly_power=2.0)
    # warmup 1/3, 2/3; then (1 - k/4)^2 for k = 0..3
    assert [lr_factor(st, e) for e in range(6)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.5625, 0.25, 0.0625])
    st = StageConfig(epochs=5, lr_step=2, lr_gamma=0.1)
    assert [lr_factor(st, e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    # the scheduler built for the optimizer follows it, epoch by epoch, and resumes from its state
    st = StageConfig(epochs=4, lr_schedule="cosine")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sch = build_scheduler(opt, st)
    seen = []
    for _ in range(2):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    opt2 = torch.optim.SGD([p], lr=0.2)
    sch2 = build_scheduler(opt2, st)
    opt2.load_state_dict(opt.state_dict())
    sch2.load_state_dict(sch.state_dict())
    for _ in range(2):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sch2.step()
    assert seen == pytest.approx([0.2 * f for f in ((1 + math.sqrt(0.5)) / 2, 0.5,
                                                    (1 - math.sqrt(0.5)) / 2, 0.0)])


# ------------------------------------------------------------------ tau-norm without bias
def test_tau_norm_drops_the_bias_like_classifier_balancing():
    from facelt.compare.collect import Collected
    from facelt.compare.evaluator import MethodEvaluator
    from facelt.compare.methods import MethodSpec
    from facelt.models.heads import LinearHead
    from facelt.models.net import Body, OLTRNet
    head = LinearHead(2, 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.0, 5.0]))
    net = OLTRNet(Body(torch.nn.Identity(), torch.nn.Identity()), head)
    f = np.array([[1.0, 0.5]], np.float32)
    val = Collected(f, np.array([0]))
    for bias, pred, z in ((False, 0, (2.0, 0.5)), (True, 1, (2.0, 5.5))):
        spec = MethodSpec("t", Path("t.yaml"), "reuse", "tau_norm",
                          {"taus": [0.0], "bias": bias}, "msp")
        ev = MethodEvaluator(spec, net, np.array([10, 2]), torch.device("cpu"))
        ev.prepare(val, None)
        out = ev.outputs(val)
        assert out.pred.tolist() == [pred]
        # MSP of the hand-computed logits
        assert out.score[0] == pytest.approx(1.0 / (1.0 + math.exp(-abs(z[0] - z[1]))))
        assert ev.info["bias"] is bias


# ------------------------------------------------------------------ seeds
def test_seed_summary_by_hand():
    from facelt.compare.report import COLUMNS
    from facelt.compare.seeds import parse_seeds, same_epochs_method, summarize_seeds
    from facelt.compare.methods import MethodSpec

    def rep(v):
        cols = {k: v for _, k in COLUMNS}
        return {"methods": {"m": {"closed_set": dict(cols), "open_set": dict(cols)}}}
    s = summarize_seeds({0: rep(0.5), 1: rep(0.7), 2: rep(0.9)})
    c = s["methods"]["m"]["closed.overall"]
    assert c["values"] == [0.5, 0.7, 0.9]
    assert c["mean"] == pytest.approx(0.7) and c["std"] == pytest.approx(0.2)  # ddof = 1
    assert parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(ConfigError):
        parse_seeds("0,0")
    base = MethodSpec("plain", Path("plain.yaml"), config={"stage1": {"head": "linear"}})
    cfg = Config()
    cfg.stage1.epochs, cfg.stage2.epochs = 4, 3
    long = same_epochs_method(base, cfg)
    assert long.name == "plain_same_epochs" and long.config["stage1"] == {"head": "linear",
                                                                          "epochs": 7}
    assert base.config["stage1"] == {"head": "linear"}


def test_checkpoints_saved_before_the_reference_defaults_keep_what_they_were_trained_with():
    from facelt.config import config_from_dict, upgrade_saved_config
    old = {"stage2": {"head": "meta", "attention": True, "freeze_backbone": True,
                      "centroid_loss": {"weight": 0.01}, "meta": {"reach_scale": 10.0}}}
    s2 = config_from_dict(upgrade_saved_config(old)).stage2
    assert (s2.spatial_attention, s2.frozen_bn, s2.init_weights, s2.meta.hallucinator_init,
            s2.centroid_loss.update) == ("conv", "eval", "last", "random", "autograd")
    assert s2.attention_init == "identity"              # the default before issue 19
    # a current config (every key present) comes back unchanged
    now = Config().to_dict()
    assert upgrade_saved_config(now) == now


@pytest.mark.parametrize("name,key,value", [
    ("oltr_autograd_centroids", ("centroid_loss", "update"), "autograd"),
    ("oltr_conv_attention", ("spatial_attention",), "conv"),
    ("oltr_no_fc_add", ("fc_add",), 0),
    ("oltr_random_hallucinator", ("meta", "hallucinator_init"), "random"),
    ("oltr_identity_attention", ("attention_init",), "identity"),
])
def test_each_ablation_overlay_differs_from_oltr_in_one_key(name, key, value):
    from facelt.compare import load_method, method_config
    methods = CONFIGS / "methods"
    base = load_method("plain", methods)
    recipe = CONFIGS / "fashion_lt.yaml"
    ref = method_config(recipe, load_method("oltr", methods), base).to_dict()["stage2"]
    var = method_config(recipe, load_method(f"ablation/{name}", methods), base).to_dict()["stage2"]
    node_r, node_v = ref, var
    for part in key[:-1]:
        node_r, node_v = node_r[part], node_v[part]
    assert node_v[key[-1]] == value and node_r[key[-1]] != value
    node_v[key[-1]] = node_r[key[-1]]
    assert var == ref


def test_crt_eval_bn_differs_from_crt_only_in_the_bn_mode():
    from facelt.compare import load_method, method_config
    methods = CONFIGS / "methods"
    base = load_method("plain", methods)
    recipe = CONFIGS / "fashion_lt.yaml"
    ref = method_config(recipe, load_method("crt", methods), base).to_dict()["stage2"]
    var = method_config(recipe, load_method("ablation/crt_eval_bn", methods), base).to_dict()["stage2"]
    assert (ref["frozen_bn"], var["frozen_bn"]) == ("train", "eval")
    var["frozen_bn"] = "train"
    assert var == ref


def test_summary_from_seed_folders(tmp_path):
    import json
    from facelt.compare.report import COLUMNS
    from facelt.compare.seeds import summarize_seed_folders

    def write(seed, v, methods=("plain", "oltr")):
        cols = {k: v for _, k in COLUMNS}
        rep = {"recipe": "r.yaml", "weights": "best", "threshold": 0.1, "protocol": "p",
               "shot_rule": "s",
               "methods": {m: {"closed_set": dict(cols), "open_set": dict(cols)} for m in methods}}
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "report.json").write_text(json.dumps(rep))
    write(0, 0.25)
    write(1, 0.75)
    s = summarize_seed_folders(tmp_path, [0, 1])
    c = s["methods"]["oltr"]["open.f_measure"]
    assert c["values"] == [0.25, 0.75] and c["mean"] == pytest.approx(0.5)
    assert c["std"] == pytest.approx(math.sqrt(0.125))        # (0.25^2 * 2) / (2 - 1), sqrt
    md = (tmp_path / "report.md").read_text()
    assert "| oltr | 50.00 ± 35.36 |" in md
    write(2, 0.5, methods=("plain",))
    with pytest.raises(ConfigError, match="methods"):
        summarize_seed_folders(tmp_path, [0, 2])
    with pytest.raises(ConfigError, match="seed 3"):
        summarize_seed_folders(tmp_path, [0, 3])


def test_hallucinator_from_a_margin_head_takes_its_weights_and_zero_bias():
    from facelt.models.build import build_net
    from facelt.train.stage import init_hallucinator_from_classifier
    net = build_net(_cfg(), 2, 3)
    w = torch.full((3, 128), 0.5)
    init_hallucinator_from_classifier(net, {"head.weight": w}, "s1.pt")
    torch.testing.assert_close(net.head.hallucinator.weight.detach(), w)
    assert net.head.hallucinator.bias.detach().tolist() == [0.0, 0.0, 0.0]
