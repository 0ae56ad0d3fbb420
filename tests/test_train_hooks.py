"""The trainer's evaluation seams (facelt/train/hooks.py): a given validation decides best.pt (the
first epoch with the highest ``overall``) and fills ``val``; an epoch evaluation is attached at the
stage start, runs as a step callback and writes its entry at every epoch end; without either a
stage trains without evaluating. ClosedSetValidation against a hand-computed case."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facelt.config import load_config
from facelt.models.checkpoint import load_checkpoint
from facelt.utils.io import read_jsonl
from tests.conftest import ROOT, demo_overrides

STEPS = 2  # optimizer steps an epoch


def _cfg(demo_data, epochs):
    return load_config(ROOT / "configs" / "demo_list.yaml",
                       demo_overrides(demo_data, epochs=epochs)
                       + [f"stage1.max_steps_per_epoch={STEPS}", "stage1.lr_step=100"])


class ScriptedValidation:
    """Returns the next scripted report; records what it was given."""

    def __init__(self, reports):
        self.reports = list(reports)
        self.seen = []

    def __call__(self, net, data):
        self.seen.append((net, len(data.val.dataset), int(data.counts.sum())))
        return self.reports[len(self.seen) - 1]


class Probe:
    """An EpochEvaluation that counts what the trainer calls."""

    key = "probe"

    def __init__(self):
        self.start = None
        self.steps = []

    def start_stage(self, start):
        self.start = start
        self.started_after = start.state.epoch  # the state object goes on changing

    def __call__(self, ctx):
        self.steps.append((ctx.epoch, ctx.step))

    def at_epoch_end(self, epoch):
        return {"epoch_end": epoch + 1, "steps_seen": len(self.steps)}

    def summary(self, result):
        return f"probe {result['epoch_end']}"


def test_validation_chooses_best_pt_and_fills_val(demo_data, tmp_path, capsys):
    from facelt.train.trainer import StageTrainer
    reports = [{"overall": 0.2, "few": 0.1}, {"overall": 0.7, "few": float("nan")},
               {"overall": 0.5, "few": 0.3}, {"overall": 0.7, "few": 0.9}]
    validation = ScriptedValidation(reports)
    weights = {}

    def keep_weights(ctx):  # epoch callback: the weights after each epoch
        weights[ctx.metrics["epoch"]] = {k: v.detach().clone()
                                         for k, v in ctx.parts.net.state_dict().items()}

    probe = Probe()
    trainer = StageTrainer(_cfg(demo_data, 4), 1, tmp_path, validation=validation,
                           evaluations=[probe], epoch_callbacks=[keep_weights])
    trainer.run()

    rows = read_jsonl(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["val"] for r in rows] == [{"overall": 0.2, "few": 0.1}, {"overall": 0.7, "few": None},
                                        {"overall": 0.5, "few": 0.3}, {"overall": 0.7, "few": 0.9}]
    best = load_checkpoint(tmp_path / "stage1" / "best.pt")
    assert best["best"] == {"val_overall": 0.7, "epoch": 2}  # the first of the two highest
    for k, v in weights[2].items():
        assert torch.equal(best["model"][k].cpu(), v.cpu()), k
    assert not all(torch.equal(weights[2][k], weights[4][k]) for k in weights[2])
    # the validation saw the bare network and the stage's data: 6 classes x 3 val images, the
    # training counts of the list
    train_lines = len((demo_data / "demo_train.txt").read_text().splitlines())
    assert [(n_val, n_train) for _, n_val, n_train in validation.seen] == [(18, train_lines)] * 4
    assert all(net is probe.start.parts.net for net, _, _ in validation.seen)

    # the epoch evaluation: attached once, every step, one entry an epoch, on the progress line
    assert probe.start.steps_per_epoch == STEPS and probe.start.out_dir == tmp_path / "stage1"
    assert probe.started_after == -1 and probe.start.parts.stage == 1
    assert probe.steps == [(e, s) for e in range(4) for s in range(1, STEPS + 1)]
    assert [r["probe"] for r in rows] == [{"epoch_end": e, "steps_seen": STEPS * e}
                                          for e in range(1, 5)]
    progress = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("stage 1 epoch 3 | loss")]
    assert len(progress) == 1 and progress[0].endswith("| val overall 0.500 few 0.300 | probe 3")
    text = (tmp_path / "stage1" / "metrics.jsonl").read_text()
    assert "NaN" not in text


def test_without_evaluations_a_stage_only_trains(demo_data, tmp_path):
    from facelt.train.trainer import StageTrainer
    StageTrainer(_cfg(demo_data, 2), 1, tmp_path).run()
    rows = read_jsonl(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["val"] for r in rows] == [{}, {}] and "verification" not in rows[0]
    assert not (tmp_path / "stage1" / "best.pt").exists()
    assert load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")["complete"]


class _Items(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), self.labels[i], i


class _Fixed(torch.nn.Module):
    """Class scores from the item index: items 0, 1, 2 -> class 0, item 3 -> class 1."""

    def forward(self, x):
        pred = (x[:, 0] >= 3).long()
        return {"logits": torch.nn.functional.one_hot(pred, 2).float() * 5}


def test_closed_set_validation_by_hand():
    from types import SimpleNamespace

    from facelt.openset.evaluate import ClosedSetValidation
    # class 0: 150 training images (many), class 1: 10 (few); val labels 0, 0, 1, 1
    data = SimpleNamespace(val=SimpleNamespace(dataset=_Items([0, 0, 1, 1])),
                           counts=np.array([150, 10]))
    rep = ClosedSetValidation(torch.device("cpu"), batch_size=3, num_workers=0, many=100,
                              few=20)(_Fixed(), data)
    # class 0: 2 of 2 right; class 1: item 2 wrong, item 3 right -> 1/2
    assert rep["overall"] == pytest.approx(0.75)
    assert rep["many"] == pytest.approx(1.0) and rep["few"] == pytest.approx(0.5)
    assert rep["medium"] is None or math.isnan(rep["medium"])


class SlowScorer:
    """An EpochEvaluation that takes ``pause`` seconds at every step and publishes a score there
    (``10 * global step``) for the loggers after it; its epoch-end entry is ``-epoch``."""

    key = "slow"

    def __init__(self, pause):
        self.pause = pause

    def start_stage(self, start):
        pass

    def __call__(self, ctx):
        import time
        time.sleep(self.pause)
        ctx.results[self.key] = {"score": 10.0 * ctx.global_step, "note": "text is not a scalar"}

    def at_epoch_end(self, epoch):
        return {"score": -float(epoch + 1)}

    def summary(self, result):
        return ""


def test_step_evaluation_time_is_not_in_images_per_s_and_its_points_reach_tensorboard(demo_data,
                                                                                     tmp_path):
    """The seconds spent in step callbacks are reported as callback_seconds and left out of the
    epoch's images/s; what a callback publishes at a step is drawn in TensorBoard at that global
    step, and its epoch-end entry at the epoch's last global step (arcface_torch's x axis)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from facelt.train.trainer import StageTrainer
    pause = 0.4
    cfg = load_config(ROOT / "configs" / "demo_list.yaml",
                      demo_overrides(demo_data, epochs=2)
                      + [f"stage1.max_steps_per_epoch={STEPS}", "log.tensorboard=true",
                         "log_every=100"])
    StageTrainer(cfg, 1, tmp_path, evaluations=[SlowScorer(pause)]).run()
    rows = read_jsonl(tmp_path / "stage1" / "metrics.jsonl")
    for r in rows:
        assert r["callback_seconds"] >= STEPS * pause  # every step slept inside a callback
        training = r["seconds"] - r["callback_seconds"]
        assert training > 0 and r["seconds"] >= training + STEPS * pause
        assert r["images_per_s"] == pytest.approx(r["images"] / training, rel=0.02, abs=0.2)
        assert r["images_per_s"] > r["images"] / r["seconds"]  # wall time would be slower
    acc = EventAccumulator(str(tmp_path / "stage1" / "tensorboard"))
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("slow/score")]
    per_step = [(g, 10.0 * g) for g in range(1, 2 * STEPS + 1)]
    epoch_ends = [(STEPS, -1.0), (2 * STEPS, -2.0)]
    assert sorted(points) == sorted(per_step + epoch_ends)
    assert not any(t.startswith("slow/note") for t in acc.Tags()["scalars"])
    assert "train/loss" not in acc.Tags()["scalars"]  # log_every 100 > the steps run
    assert [e.step for e in acc.Scalars("epoch/centroid")] == [1, 2]  # metrics' centroid_loss
