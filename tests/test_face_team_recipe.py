"""issue 21: the face-team recipe beside the paper's (configs/ms1m_lt_iresnet50.yaml): insightface's
iresnet50 with an ArcFace stage 1 at arcface_torch's ms1mv2_r50 values (lr 0.1, momentum 0.9,
weight decay 5e-4, s = 64, m = 0.5, 20 epochs, polynomial decay of power 2), then the OLTR stage 2.
The values are pinned against that config file; both stages' networks are built and run on a
112x112 batch (stage 2 after stage 1: its 512-d embedding, meta head with centroids)."""
from __future__ import annotations

import torch

from facelt.config import load_config
from facelt.models.build import build_net
from facelt.models.components import check_component_names
from tests.conftest import ROOT

RECIPE = ROOT / "configs" / "ms1m_lt_iresnet50.yaml"


def test_values_are_arcface_torch_ms1mv2_r50_then_oltr():
    cfg = check_component_names(load_config(RECIPE))
    s1, s2 = cfg.stage(1), cfg.stage(2)
    assert cfg.model.backbone == "iresnet50" and cfg.model.embedding_dim == 512
    assert (s1.head, s1.margin.s, s1.margin.m) == ("arcface", 64.0, 0.5)
    assert (s1.backbone_lr, s1.momentum, s1.weight_decay, s1.epochs) == (0.1, 0.9, 5e-4, 20)
    assert (s1.lr_schedule, s1.poly_power, s1.warmup_epochs) == ("poly", 2.0, 0)
    assert (s2.head, s2.init_from, s2.attention) == ("meta", "stage1", True)
    assert cfg.data.image_size == 112


def test_both_stages_build_and_embed_112px_faces():
    cfg = load_config(RECIPE)
    x = torch.randn(2, 3, 112, 112)
    for stage in (1, 2):
        net = build_net(cfg, stage, num_classes=5).eval()
        with torch.no_grad():
            v = net.embed(x)
        assert v.shape == (2, 512), (stage, v.shape)


def test_missing_data_names_the_source_and_the_face_team_train_command(tmp_path):
    from pipelines.getting_data import missing_data_message
    cfg = load_config(RECIPE, [f"data.root={tmp_path}"])
    msg = missing_data_message(cfg)
    assert "faces_emore" in msg and "facelt prepare --dataset ms1m_lt" in msg
    assert "facelt train --dataset ms1m_lt_iresnet50" in msg
