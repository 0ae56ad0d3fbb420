"""The training loader keeps its worker processes between epochs; AMP settings map to the loop."""
from __future__ import annotations

import pytest
import torch

from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.train.loop import train_one_epoch
from facelt.train.stage import build_stage
from tests.conftest import demo_overrides


def test_training_workers_persist_across_epochs(demo_data, demo_config_path, tmp_path):
    cfg = load_config(demo_config_path, demo_overrides(demo_data, epochs=2) + [
        "data.num_workers=1", "stage1.max_steps_per_epoch=2", "stage1.batch_size=8"])
    parts = build_stage(cfg, 1, out=tmp_path)
    assert parts.loader.persistent_workers
    first = train_one_epoch(parts, 0)
    workers = parts.loader._iterator._workers  # torch's own attribute: the same processes next epoch
    pids = [w.pid for w in workers]
    second = train_one_epoch(parts, 1)
    assert [w.pid for w in parts.loader._iterator._workers] == pids
    assert first["images"] == second["images"] == 16


def test_amp_dtype_choices(demo_data, demo_config_path, tmp_path):
    cfg = load_config(demo_config_path, demo_overrides(demo_data) + ["amp_dtype=bfloat16"])
    parts = build_stage(cfg, 1, out=tmp_path)
    assert parts.amp_dtype is torch.bfloat16
    assert not parts.scaler.is_enabled()  # CPU here; on CUDA bfloat16 also runs without a scaler
    with pytest.raises(ConfigError, match="amp_dtype"):
        load_config(demo_config_path, ["amp_dtype=half"])
