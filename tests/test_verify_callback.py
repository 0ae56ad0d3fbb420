"""eval.verification during training: a .bin beside the training rec is evaluated every
verify_every steps and at each epoch end, on rank 0 only (2-process gloo run included); a missing
set is refused before training; a failing set stops every rank instead of hanging them."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from facelt.cli import main
from facelt.utils.io import read_jsonl
from tests.conftest import ROOT, free_port, set_args

CONFIG = ["--config", str(ROOT / "configs" / "demo_faces.yaml")]
PAIRS = 20  # 10 positive, 10 negative: the protocol's 10 folds of 2



def _bin_py3_bytes(path, images_bgr, issame):
    """insightface's py3 flavour, written here independently: pickle of (list of JPEG bytes,
    list of bool)."""
    bins = [cv2.imencode(".jpg", im)[1].tobytes() for im in images_bgr]
    path.write_bytes(pickle.dumps((bins, list(issame)), protocol=4))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from pipelines.synthetic_faces import synthetic_probes, write_synthetic_rec
    d = tmp_path_factory.mktemp("faces_emore")
    write_synthetic_rec(d / "train", counts=[8, 6, 5, 4, 3, 2], seed=5, size=32)
    # 4 unseen identities (indices 6..9) x 3 new images; pairs alternate positive / negative
    imgs, ids = synthetic_probes(np.arange(6, 10), 3, seed=5, size=32)
    order, same = [], []
    for j in range(PAIRS // 2):
        a, b = j % 4, (j + 1) % 4
        order += [3 * a, 3 * a + 1 + j % 2, 3 * a + j % 3, 3 * b + j % 3]
        same += [True, False]
    assert [ids[order[2 * i]] == ids[order[2 * i + 1]] for i in range(PAIRS)] == same
    _bin_py3_bytes(d / "lfw.bin", imgs[order], same)
    return d


TB = ("log.tensorboard=true", "log_every=100")  # no loss points: only the evaluations'


def _over(faces, *extra):
    return [f"data.root={faces}", "data.format=rec", "data.train=train", "data.image_size=32",
            "data.num_workers=0", "data.augment=false", "device=cpu", "model.backbone=small_cnn",
            "model.neck=face", "model.embedding_dim=32", "stage1.epochs=2", "stage1.batch_size=8",
            "stage1.max_steps_per_epoch=3", "stage1.head=linear", "eval.batch_size=16",
            "eval.verification=[lfw]", *extra]


def test_verification_every_steps_and_epoch_ends(faces, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    # epoch 1, then epoch 2 as a resumed run: the record and the highest so far carry over
    assert main(["train", *CONFIG, "--stage", "1", "--out", str(out),
                 *set_args(_over(faces, "eval.verify_every=2", "stage1.epochs=1", *TB))]) == 0
    printed = capsys.readouterr().out
    assert main(["train", *CONFIG, "--stage", "1", "--out", str(out), "--resume",
                 *set_args(_over(faces, "eval.verify_every=2", *TB))]) == 0
    printed += capsys.readouterr().out
    # 2 epochs x 3 steps: global steps 2 and 4 evaluate from the step callback (step 6 is the
    # second epoch's end and evaluates there, once), plus both epoch ends
    hist = json.loads((out / "stage1" / "verification.json").read_text())["history"]
    assert [(h["epoch"], h["step"], h["at"]) for h in hist] == [
        (1, 2, "step"), (1, 3, "epoch"), (2, 1, "step"), (2, 3, "epoch")]
    assert [h["global_step"] for h in hist] == [2, 3, 4, 6]
    assert "stage 1 epoch 1 step 2 | lfw " in printed and "stage 1 epoch 2 step 1 | lfw " in printed
    accs = [h["results"]["lfw"]["accuracy"] for h in hist]
    for h, k in zip(hist, range(1, 5)):
        r = h["results"]["lfw"]
        assert r["pairs"] == PAIRS and 0 <= r["accuracy"] <= 1 and r["xnorm"] > 0
        assert r["highest"] == max(accs[:k])  # the highest so far, as arcface_torch logs it
        # 10 folds of 2 pairs: each fold accuracy is 0, 1/2 or 1
        assert round(r["accuracy"] * 20) == pytest.approx(r["accuracy"] * 20)
    rows = read_jsonl(out / "stage1" / "metrics.jsonl")
    assert [r["verification"]["lfw"]["accuracy"] for r in rows] == [accs[1], accs[3]]
    assert any(line.startswith("stage 1 epoch 2 | loss") and "| lfw " in line
               for line in printed.splitlines())  # the epoch's progress line
    assert "| lfw | 20 |" in (out / "stage1" / "verification.md").read_text()
    # TensorBoard draws every evaluation, step or epoch end, at its global step (arcface_torch's
    # x axis), over both runs; the steps' evaluation time is left out of the epochs' images/s
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(out / "stage1" / "tensorboard"))
    tb.Reload()
    drawn = sorted((e.step, e.value) for e in tb.Scalars("verification/lfw/accuracy"))
    assert [g for g, _ in drawn] == [2, 3, 4, 6]
    assert [v for _, v in drawn] == pytest.approx(accs, abs=1e-6)
    for r in rows:
        assert r["callback_seconds"] > 0
        assert r["images_per_s"] == pytest.approx(
            r["images"] / (r["seconds"] - r["callback_seconds"]), rel=0.02, abs=0.2)

    # the epoch-end figure is the final model's: `facelt verify` on the checkpoint agrees
    capsys.readouterr()
    assert main(["verify", "--bin", str(faces / "lfw.bin"), "--checkpoint",
                 str(out / "stage1" / "checkpoint.pt"), "--json"]) == 0
    standalone = json.loads(capsys.readouterr().out)
    got = standalone[0] if isinstance(standalone, list) else standalone.get("lfw", standalone)
    assert got["accuracy"] == pytest.approx(accs[3])


def test_a_missing_set_is_refused_before_training(faces, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *CONFIG, "--stage", "1", "--out", str(out),
                 *set_args(_over(faces, "eval.verification=[lfw,agedb_30]"))]) == 2
    err = capsys.readouterr().err
    assert "eval.verification[1]" in err and str(faces / "agedb_30.bin") in err
    assert not (out / "stage1" / "checkpoint.pt").exists()


def test_a_frozen_backbone_keeps_its_eval_mode_after_an_evaluation():
    from facelt.features.embed import TorchEmbedder
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    net.train()
    net[1].eval()  # what set_train_mode does to a frozen backbone's BN
    TorchEmbedder(net, "cpu", (8, 8))(np.zeros((2, 8, 8, 3), np.uint8))
    assert net.training and net[0].training and not net[1].training



def _torchrun(out, overrides):
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "facelt", "train", *CONFIG,
           "--stage", "1", "--out", str(out), *set_args(overrides)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # torchrun start-up (~10 s)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_rank0_evaluates_rank1_waits(faces, tmp_path):
    out = tmp_path / "two"
    res = _torchrun(out, _over(faces, "stage1.epochs=1", "eval.verify_every=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    hist = json.loads((out / "stage1" / "verification.json").read_text())["history"]
    assert [(h["step"], h["at"]) for h in hist] == [(1, "step"), (2, "step"), (3, "epoch")]
    row = read_jsonl(out / "stage1" / "metrics.jsonl")[-1]
    assert row["verification"]["lfw"]["pairs"] == PAIRS
    assert res.stdout.count("step 1 | lfw") == 1  # printed by rank 0 only


@pytest.mark.slow  # torchrun start-up (~10 s)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_a_broken_set_stops_both_ranks(faces, tmp_path):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(pickle.dumps(([b"not a jpeg"] * 20, [True, False] * 5), protocol=4))
    res = _torchrun(tmp_path / "two", _over(faces, "stage1.epochs=1",
                                            f"eval.verification=[{bad}]"))
    assert res.returncode != 0
    assert "not an image OpenCV can decode" in res.stdout + res.stderr
    assert not (tmp_path / "two" / "stage1" / "checkpoint.pt").exists()


def test_a_resumed_stage_keeps_the_highest_up_to_its_checkpoint(tmp_path):
    """start_stage on a resumed stage rebuilds the record from verification.json, dropping the
    evaluations after the checkpoint's position (they will be redone)."""
    from types import SimpleNamespace

    from facelt.faces.verify_callback import VerificationCallback
    from facelt.parallel.process import DistInfo
    from facelt.train.hooks import StageStart
    from facelt.train.loop import EpochPosition, steps_in_epoch
    from facelt.train.state import TrainState

    def entry(epoch, step, g, acc):
        return {"stage": 1, "epoch": epoch, "step": step, "global_step": g, "at": "step",
                "results": {"lfw": {"accuracy": acc}}}
    # 10 steps an epoch; evaluations at global steps 5, 10, 15, 20 with accuracies .6 .9 .7 .95
    hist = [entry(1, 5, 5, 0.6), entry(1, 10, 10, 0.9), entry(2, 5, 15, 0.7), entry(2, 10, 20, 0.95)]
    (tmp_path / "verification.json").write_text(json.dumps({"history": hist}))
    parts = SimpleNamespace(st=SimpleNamespace(max_steps_per_epoch=0), loader=[0] * 10)
    cb = VerificationCallback([], DistInfo(), every=5, batch_size=8)
    # checkpoint inside epoch 2 (0-based 1) after 7 steps: global step 17
    steps = steps_in_epoch(parts)
    cb.start_stage(StageStart(parts, tmp_path, TrainState(
        epoch=0, position=EpochPosition(1, 7, [0.0] * 5, 1.0)), steps))
    assert [h["global_step"] for h in cb.history] == [5, 10, 15]
    assert cb.highest["lfw"]["accuracy"] == 0.9 and cb.highest["lfw"]["global_step"] == 10
    cb.start_stage(StageStart(parts, tmp_path, TrainState(), steps))  # a fresh stage: empty record
    assert cb.history == [] and cb.highest == {}
