"""Typed configs: YAML + --set overrides, unknown keys and wrong types named in the error."""
from pathlib import Path

import pytest

from facelt.config import load_config
from facelt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_shipped_recipe_loads():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths, "no recipes found"
    for p in paths:
        load_config(p)


def test_overrides_apply_and_keep_stage_defaults():
    cfg = load_config(None, ["stage2.backbone_lr=0.02", "data.channels=1", "eval.sweep=[0.1, 0.2]"])
    assert cfg.stage2.backbone_lr == 0.02
    assert cfg.data.channels == 1
    assert cfg.eval.sweep == [0.1, 0.2]
    # stage 2 keeps its own defaults (meta head, class-aware sampler) when one key is overridden
    assert cfg.stage2.head == "meta" and cfg.stage2.sampler == "class_aware"
    assert cfg.stage1.head == "linear" and cfg.stage1.sampler == "instance"
    # an int is accepted where a float is expected
    assert load_config(None, ["eval.threshold=1"]).eval.threshold == 1.0


@pytest.mark.parametrize("override, words", [
    ("stage2.bogus=1", ["unknown key", "stage2.bogus"]),
    ("bogus=1", ["unknown key", "bogus"]),
    ("data.channels=2", ["data.channels", "1, 3"]),
    ("stage1.epochs=1.5", ["stage1.epochs", "integer"]),
    ("amp=maybe", ["amp", "true or false"]),
    ("model.backbone=vgg16", ["model.backbone", "resnet10"]),
    ("stage1.lr_step=true", ["stage1.lr_step", "integer"]),
    ("data=3", ["data", "mapping"]),
    ("nokeyvalue", ["key=value"]),
])
def test_override_errors_name_the_key(override, words):
    # component names (model.backbone ...) are checked against their tables by
    # check_component_names, which every command that builds calls right after loading
    from facelt.models.components import check_component_names
    with pytest.raises(ConfigError) as e:
        check_component_names(load_config(None, [override]))
    for w in words:
        assert w in str(e.value)


def test_yaml_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  image_sise: 32\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "data.image_sise" in str(e.value)
    p.write_text("stage1:\n  sampler: balanced\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "stage1.sampler" in str(e.value) and "class_aware" in str(e.value)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError):
        load_config(p)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(e.value)


def test_flat_head_and_loss_keys_of_older_checkpoints_are_read_in_their_sections():
    from facelt.config import config_from_dict, upgrade_saved_config
    old = {"stage1": {"head": "arcface", "margin": 0.3, "margin_scale": 32.0, "focal_gamma": 1.5,
                      "la_tau": 0.5, "cos_scale": 8.0},
           "stage2": {"head": "meta", "reach_scale": 5.0, "centroid_loss_weight": 0.1,
                      "centroid_update": "reference", "centroid_margin": 7.0,
                      "centroid_repel_weight": 0.2, "fslwf_novel_max_count": 3,
                      "fslwf_fake_novel_prob": 0.25}}
    cfg = config_from_dict(upgrade_saved_config(old))
    s1, s2 = cfg.stage1, cfg.stage2
    assert (s1.margin.m, s1.margin.s, s1.focal.gamma, s1.logit_adjusted.tau, s1.cosine.scale) == \
        (0.3, 32.0, 1.5, 0.5, 8.0)
    assert (s2.meta.reach_scale, s2.centroid_loss.weight, s2.centroid_loss.update,
            s2.centroid_loss.margin, s2.centroid_loss.repel_weight) == (5.0, 0.1, "reference", 7.0, 0.2)
    assert (s2.fslwf.novel_max_count, s2.fslwf.fake_novel_prob) == (3, 0.25)
    assert s2.epochs == 60 and s2.cosine.scale == 16.0  # untouched keys keep their defaults
    with pytest.raises(ConfigError, match="stage1.margin"):  # a current config has no flat keys
        config_from_dict(old)
