"""End-to-end engine behaviour on the generated demo dataset (CPU, seconds)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from facelt.cli import main
from facelt.config import load_config
from facelt.errors import CheckpointError
from facelt.models.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from tests.conftest import ROOT, demo_overrides, set_args



@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    rc = main(["train", "--config", cfg, "--out", str(out), *set_args(demo_overrides(demo_data))])
    assert rc == 0
    return cfg, out


def test_two_stages_write_checkpoints_metrics_and_report(trained, demo_data, tmp_path, capsys):
    cfg, out = trained
    for s in (1, 2):
        state = load_checkpoint(out / f"stage{s}" / "checkpoint.pt")
        assert state["stage"] == s and state["complete"] and state["epoch"] == 1
        assert state["num_classes"] == 6
        lines = (out / f"stage{s}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
        assert (out / f"stage{s}" / "best.pt").is_file()
    s2 = load_checkpoint(out / "stage2" / "checkpoint.pt")
    assert "head.centroids" in s2["model"] and "body.attention.nonlocal_block.out.weight" in s2["model"]
    # per-module learning rates of the recipe
    lrs = json.loads((out / "stage2" / "metrics.jsonl").read_text().splitlines()[0])["lr"]
    assert lrs == {"backbone": 0.005, "attention": 0.05, "classifier": 0.05, "centroids": 0.01}

    rep_dir = tmp_path / "eval"
    rc = main(["classify", "--config", cfg, *set_args(demo_overrides(demo_data)),
               "--checkpoint", str(out / "stage2" / "checkpoint.pt"), "--out", str(rep_dir),
               "--threshold", "0.3"])
    assert rc == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["threshold"] == 0.3
    for key in ("overall", "many", "medium", "few"):
        assert 0.0 <= rep["closed_set"][key] <= 1.0
        assert 0.0 <= rep["open_set"][key] <= 1.0
    assert 0.0 <= rep["open_set"]["f_measure"] <= 1.0
    with open(rep_dir / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["path", "label", "pred", "score"]
    assert len(rows) == 6 * 6 + 2 * 6
    assert sum(r["label"] == "-1" for r in rows) == 12
    for r in rows:  # rejected exactly when the score is below the threshold
        assert (r["pred"] == "-1") == (float(r["score"]) < 0.3)
    # closed-set overall recomputed from the CSV (known rows, argmax before rejection is not in
    # the CSV, so check the open-set overall: accuracy of known rows with rejection)
    known = [r for r in rows if r["label"] != "-1"]
    acc = np.mean([r["label"] == r["pred"] for r in known])
    assert rep["open_set"]["overall"] == pytest.approx(acc)

    img = demo_data / "images" / "test" / "id000" / "0000.png"
    capsys.readouterr()
    assert main(["classify", "--checkpoint", str(out / "stage2" / "checkpoint.pt"), str(img),
                 "--threshold", "1.01"]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(img) and line[1] == "unknown"  # nothing reaches a 1.01 softmax


def test_refuses_to_overwrite_a_run_without_resume(trained, demo_data, capsys):
    cfg, out = trained
    ckpt = out / "stage1" / "checkpoint.pt"
    before = ckpt.read_bytes()
    rc = main(["train", "--config", cfg, "--out", str(out), "--stage", "1",
               *set_args(demo_overrides(demo_data))])
    assert rc == 2
    assert "--resume" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    # with --resume a complete stage is left as it is
    assert main(["train", "--config", cfg, "--out", str(out), "--stage", "1", "--resume",
                 *set_args(demo_overrides(demo_data))]) == 0
    assert ckpt.read_bytes() == before


def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {}, "x": Evil()}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert "evil.pt" in str(e.value)
    assert not marker.exists()


def test_checkpoint_from_another_model_is_refused(trained, tmp_path):
    from facelt.models.checkpoint import net_from_checkpoint
    _, out = trained
    state = load_checkpoint(out / "stage1" / "checkpoint.pt")
    state["model"].pop("head.fc.bias")
    state["model"]["head.fc.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "other.pt"
    save_checkpoint(bad, state)
    with pytest.raises(CheckpointError) as e:
        net_from_checkpoint(bad, torch.device("cpu"))
    msg = str(e.value)
    assert "head.fc.bias" in msg and "head.fc.weight" in msg and "other.pt" in msg
    (tmp_path / "trunc.pt").write_bytes((out / "stage1" / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "trunc.pt")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(demo_data, tmp_path):
    from facelt.train.trainer import NonFiniteLoss, StageTrainer
    cfg = load_config(ROOT / "configs" / "demo_list.yaml", demo_overrides(demo_data, epochs=3))

    class Exploding(StageTrainer):
        calls = 0

        def build(self):
            parts = super().build()
            inner = parts.loss

            def loss_fn(out, y):
                loss, terms = inner(out, y)
                Exploding.calls += 1
                if self.state.metrics:  # after the first epoch finished
                    loss = loss * float("nan")
                return loss, terms
            parts.loss = loss_fn
            return parts

    t = Exploding(cfg, 1, tmp_path)
    with pytest.raises(NonFiniteLoss) as e:
        t.run()
    assert "epoch 2" in str(e.value) and "checkpoint.pt" in str(e.value)
    state = load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")
    assert state["epoch"] == 0 and not state["complete"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_class_means_equal_per_class_average(demo_data):
    """Stage-2 centroids are the per-class mean of the direct features (checked by numpy)."""
    from facelt.data.build import build_split
    from facelt.models.build import build_net
    from facelt.parallel.centroids import class_means
    from facelt.parallel.process import DistInfo
    cfg = load_config(ROOT / "configs" / "demo_list.yaml", demo_overrides(demo_data))
    split = build_split(cfg.data, "train", train=False)
    net = build_net(cfg, 2, 6).eval()
    means, counts = class_means(net.body, split.dataset, 6, 50, 0, DistInfo())
    feats, labels = [], []
    with torch.no_grad():
        for i in range(len(split.dataset)):
            x, y, _ = split.dataset[i]
            feats.append(net.embed(x[None])[0].numpy())
            labels.append(y)
    feats, labels = np.stack(feats), np.array(labels)
    assert counts.tolist() == np.bincount(labels, minlength=6).tolist()
    for k in range(6):
        np.testing.assert_allclose(means[k].numpy(), feats[labels == k].mean(0), rtol=1e-4, atol=1e-5)


def test_resume_after_kill_ends_like_an_uninterrupted_run(demo_data, tmp_path):
    """kill -9 mid-training, then --resume: the final weights equal an uninterrupted run's."""
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    sets = set_args(demo_overrides(demo_data, epochs=4) + ["stage1.lr_step=2", "stage1.checkpoint_every=2"])
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "facelt", "train", "--config", cfg, "--stage", "1", *sets]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(cmd + ["--out", str(full)], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    metrics = killed / "stage1" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(killed / "stage1" / "checkpoint.pt")
    assert not done["complete"], "the run finished before it could be killed"
    subprocess.run(cmd + ["--out", str(killed), "--resume"], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    a = load_checkpoint(full / "stage1" / "checkpoint.pt")
    b = load_checkpoint(killed / "stage1" / "checkpoint.pt")
    assert a["complete"] and b["complete"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["metrics"]["loss"] == b["metrics"]["loss"]


def test_bad_inputs_stop_before_training_and_keep_earlier_outputs(trained, demo_data, tmp_path,
                                                                   capsys):
    """A missing image or a malformed list line is reported (file, line, count) before any
    training step, and an earlier run's outputs are left as they were."""
    import shutil
    cfg, out = trained
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    first = (data / "demo_train.txt").read_text().splitlines()[0].split()[0]
    (data / first).unlink()
    (data / "images" / "train" / "id001" / "0000.png").unlink()
    run = tmp_path / "run"
    rc = main(["train", "--config", cfg, "--out", str(run), *set_args(demo_overrides(data))])
    assert rc == 2
    err = capsys.readouterr().err
    assert first in err and "2" in err and "demo_train.txt" in err
    assert not (run / "stage1" / "checkpoint.pt").exists()

    lines = (data / "demo_train.txt").read_text().splitlines()
    lines[3] = "images/train/id000/0003.png three"
    (data / "demo_train.txt").write_text("\n".join(lines) + "\n")
    before = (out / "stage1" / "checkpoint.pt").read_bytes()
    rc = main(["train", "--config", cfg, "--out", str(out), "--resume", "--stage", "1",
               *set_args(demo_overrides(data))])
    assert rc == 2
    err = capsys.readouterr().err
    assert "demo_train.txt" in err and "line 4" in err and "three" in err
    assert (out / "stage1" / "checkpoint.pt").read_bytes() == before


def test_mid_epoch_checkpoint_resume_is_exact(demo_data, tmp_path):
    """A crash inside an epoch, after a mid-epoch checkpoint: the resumed run continues from that
    step and ends with exactly the weights of an uninterrupted run (CPU, num_workers 0)."""
    from facelt.train.trainer import StageTrainer
    over = demo_overrides(demo_data, epochs=2) + ["stage1.checkpoint_every=3"]
    cfg = load_config(ROOT / "configs" / "demo_list.yaml", over)
    StageTrainer(cfg, 1, tmp_path / "full").run()

    class Crash(Exception):
        pass

    class Crashing(StageTrainer):
        def build(self):
            parts = super().build()
            inner = parts.loss

            def loss_fn(out, y):
                Crashing.calls = getattr(Crashing, "calls", 0) + 1
                if Crashing.calls == 13:  # epoch 2 (8 steps an epoch), after its step-3 checkpoint
                    raise Crash()
                return inner(out, y)
            parts.loss = loss_fn
            return parts

    with pytest.raises(Crash):
        Crashing(cfg, 1, tmp_path / "crashed").run()
    mid = load_checkpoint(tmp_path / "crashed" / "stage1" / "checkpoint.pt")
    assert mid["epoch"] == 0 and mid["partial"]["epoch"] == 1 and mid["partial"]["step"] == 3
    StageTrainer(cfg, 1, tmp_path / "crashed", resume=True).run()
    a = load_checkpoint(tmp_path / "full" / "stage1" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "crashed" / "stage1" / "checkpoint.pt")
    assert b["complete"] and b["partial"] is None
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-12)
    assert a["metrics"]["images"] == b["metrics"]["images"]


@pytest.mark.parametrize("split, line, why", [
    ("train", "images/open/id006/0000.png -1", "training split"),
    ("val", "images/val/id000/0000.png 9", "validation split"),
])
def test_labels_outside_the_known_classes_stop_before_training(demo_data, tmp_path, capsys,
                                                                split, line, why):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    lst = data / f"demo_{split}.txt"
    lst.write_text(lst.read_text() + line + "\n")
    rc = main(["train", "--config", str(ROOT / "configs" / "demo_list.yaml"), "--stage", "1",
               "--out", str(tmp_path / "run"), *set_args(demo_overrides(data))])
    assert rc == 2
    err = capsys.readouterr().err
    assert why in err and line.split()[0] in err
    assert not (tmp_path / "run" / "stage1" / "checkpoint.pt").exists()
