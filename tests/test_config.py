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
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
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
