"""The backbone / head / loss tables: the config keeps plain names, each table is the one list of
its names, and an unknown name is refused with its key before any long work."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from facelt.cli import main as cli_main
from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.models import backbone_table, head_table
from facelt.models.backbones import SmallCNN
from facelt.models.build import build_net
from facelt.models.components import check_component_names
from facelt.models.heads import LinearHead
from tests.conftest import ROOT, demo_overrides, set_args

RECIPE = ROOT / "configs" / "demo_list.yaml"


def _train(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(["train", "--config", str(RECIPE), *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("override, message", [
    ("stage2.head=foo", "stage2.head: unknown head 'foo' (known: linear, cosine, meta, arcface, "
                        "cosface, lws, normed_linear, ride, paco, fslwf)"),
    ("model.backbone=vgg16", "model.backbone: unknown backbone 'vgg16' (known: resnet10, "),
    ("stage1.loss=hinge", "stage1.loss: unknown loss 'hinge' (known: ce, focal, "),
    ("stage2.aux_loss=center", "stage2.aux_loss: unknown feature loss 'center' (known: none, "),
])
def test_train_refuses_an_unknown_name_before_any_work(override, message, demo_data, tmp_path,
                                                       capsys):
    # stage 2's head is built only after stage 1 trained: the name must be refused up front
    out = tmp_path / "run"
    rc, err = _train(["--out", str(out), *set_args(demo_overrides(demo_data, epochs=1)),
                      "--set", override], capsys)
    assert rc == 2 and message in err
    assert not out.exists()


def test_the_library_entry_points_refuse_it_too(demo_data, tmp_path):
    from facelt.train.stage import build_stage
    from facelt.jobs.train import train
    # no data at all: the name is checked before the lists are read
    cfg = load_config(RECIPE, ["device=cpu", "data.train=missing.txt", "stage2.head=foo"])
    with pytest.raises(ConfigError, match=r"stage2\.head: unknown head 'foo'"):
        train(cfg, [1, 2], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = load_config(RECIPE, ["device=cpu", "data.train=missing.txt", "stage1.aux_loss=center"])
    with pytest.raises(ConfigError, match=r"stage1\.aux_loss: unknown feature loss 'center'"):
        build_stage(cfg, 1)


def test_a_method_overlay_with_an_unknown_head_is_named(tmp_path):
    from facelt.compare.methods import load_method, method_config
    (tmp_path / "odd.yaml").write_text("train: stage1\nconfig:\n  stage1:\n    head: archface\n")
    with pytest.raises(ConfigError, match=r"odd\.yaml \(config overlay on .*\): stage1\.head: "
                                          r"unknown head 'archface' \(known: linear"):
        method_config(RECIPE, load_method("odd", tmp_path), None)


def test_a_checkpoint_with_an_unknown_name_is_named(tmp_path):
    from facelt.models.checkpoint import net_from_checkpoint, save_checkpoint
    cfg = load_config(RECIPE).to_dict()
    cfg["stage1"]["head"] = "retired_head"
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"config": cfg, "stage": 1, "num_classes": 3, "model": {}})
    with pytest.raises(ConfigError, match=r"old\.pt \(embedded config\): stage1\.head: unknown "
                                          r"head 'retired_head'"):
        net_from_checkpoint(path, torch.device("cpu"))


def test_build_time_errors_name_the_setting():
    with pytest.raises(ConfigError, match=r"model\.face_stem.*small_cnn"):
        build_net(load_config(RECIPE, ["model.face_stem=true"]), 1, 3)
    with pytest.raises(ConfigError, match=r"data\.channels.*IResNet"):
        build_net(load_config(RECIPE, ["model.backbone=iresnet18", "data.channels=1"]), 1, 3)


def test_a_backbone_added_to_the_table_is_accepted_everywhere(monkeypatch, demo_data, tmp_path,
                                                             capsys):
    # one table entry, nothing else edited: the config, the name check, build_net, training and
    # rebuilding the network from the checkpoint all take it
    monkeypatch.setitem(backbone_table.BACKBONES, "tiny_cnn", backbone_table.BackboneEntry(
        lambda ch, stem: SmallCNN(ch, widths=(4, 8, 16))))
    cfg = check_component_names(load_config(RECIPE, ["model.backbone=tiny_cnn"]))
    net = build_net(cfg, 1, 5)
    assert net.body.backbone.out_channels == 16 and net.head.fc.weight.shape == (5, 16)
    out = tmp_path / "run"
    rc, err = _train(["--stage", "1", "--out", str(out),
                      *set_args(demo_overrides(demo_data, epochs=1)),
                      "--set", "model.backbone=tiny_cnn", "--set", "stage1.max_steps_per_epoch=2"],
                     capsys)
    assert rc == 0, err
    from facelt.models.checkpoint import net_from_checkpoint
    net, saved, _ = net_from_checkpoint(out / "stage1" / "checkpoint.pt", torch.device("cpu"))
    assert saved.model.backbone == "tiny_cnn"
    assert [m.out_channels for m in net.body.backbone.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [4, 8, 16]


def test_a_head_added_to_the_table_is_accepted(monkeypatch):
    monkeypatch.setitem(head_table.HEADS, "plain_linear", lambda dim, k, st: LinearHead(dim, k))
    cfg = check_component_names(load_config(RECIPE, ["stage2.head=plain_linear"]))
    assert isinstance(build_net(cfg, 2, 4).head, LinearHead)


def test_the_config_imports_no_table_and_no_torch():
    code = ("import sys; import facelt.config; from facelt.cli import main; "
            "main(['config', '--config', %r, '--set', 'stage2.head=meta']); "
            "print('torch' in sys.modules, 'facelt.models.head_table' in sys.modules)" % str(RECIPE))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert out[-1] == "False False"
