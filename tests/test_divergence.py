"""The divergence guard (a finite loss that explodes, non-finite embeddings: a TrainingError, no
checkpoint for the bad step) and the BatchNorm re-estimation that keeps a short face stage 1 from
handing stage 2 exploded eval-mode centroids."""
from __future__ import annotations

import pytest
import torch

from facelt.config import load_config
from facelt.errors import TrainingError
from facelt.models.checkpoint import load_checkpoint
from facelt.train.loop import DivergenceGuard
from tests.conftest import ROOT, demo_overrides


def test_guard_by_hand():
    g = DivergenceGuard(1e4)
    for v in (1.0, 2.0, 3.0, 4.0, 100.0):  # median of the first five: 3
        assert not g.exploded(v)
    assert g.reference == 3.0
    assert not g.exploded(3e4) and g.exploded(3e4 + 1)
    off = DivergenceGuard(0)
    assert not any(off.exploded(v) for v in (1.0, 1.0, 1.0, 1.0, 1.0, 1e30))
    tiny = DivergenceGuard(10)
    for _ in range(5):
        tiny.exploded(1e-6)
    assert tiny.reference == 0.01  # floored: 0.05 is no explosion
    assert not tiny.exploded(0.05) and tiny.exploded(0.2)


def _trainer(cfg, out, scale_after_epoch1=None, nan_features=False):
    from facelt.train.trainer import StageTrainer

    class Sabotaged(StageTrainer):
        def build(self):
            parts = super().build()
            inner = parts.loss

            def loss_fn(o, y):
                loss, terms = inner(o, y)
                if self.state.metrics:  # after the first epoch finished
                    if scale_after_epoch1:
                        loss = loss * scale_after_epoch1
                    if nan_features:
                        o["features"] = o["features"] * float("nan")
                return loss, terms
            parts.loss = loss_fn
            return parts
    return Sabotaged(cfg, 1, out)


@pytest.mark.parametrize("kind", ["explodes", "nan_features"])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(kind, demo_data, tmp_path):
    cfg = load_config(ROOT / "configs" / "demo_list.yaml", demo_overrides(demo_data, epochs=3))
    t = _trainer(cfg, tmp_path, scale_after_epoch1=1e6 if kind == "explodes" else None,
                 nan_features=kind == "nan_features")
    with pytest.raises(TrainingError) as e:
        t.run()
    msg = str(e.value)
    assert "epoch 2, step 1" in msg and "checkpoint.pt" in msg
    if kind == "explodes":  # 1e6 x a loss near 1.8 is finite: only the guard stops it
        assert "diverged" in msg and "stage1.divergence_factor = 10000" in msg
    else:
        assert "non-finite embeddings" in msg
    state = load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")
    assert state["epoch"] == 0 and not state["complete"]
