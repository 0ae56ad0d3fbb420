"""Face training smoke test on SYNTHETIC identities in the insightface RecordIO layout (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facelt.cli import main
from facelt.config import load_config
from facelt.models.build import build_net
from facelt.models.checkpoint import load_checkpoint
from tests.conftest import ROOT, set_args


@pytest.fixture(scope="module")
def face_rec(tmp_path_factory):
    from pipelines.synthetic_faces import write_synthetic_rec
    d = tmp_path_factory.mktemp("faces")
    write_synthetic_rec(d / "train", counts=[10, 7, 5, 3, 2, 2], seed=3, size=56)
    return d



def test_ms1m_lt_recipe_builds_the_paper_network():
    cfg = load_config(ROOT / "configs" / "ms1m_lt.yaml")
    net = build_net(cfg, 2, 100)
    assert net.body.backbone.out_channels == 2048
    with torch.no_grad():
        out = net.eval()(torch.zeros(2, 3, 112, 112))
    assert out["features"].shape == (2, 512) and out["logits"].shape == (2, 100)
    assert net.head.centroids.shape == (100, 512)


@pytest.mark.parametrize("stage1_head", ["linear", "arcface"])
def test_face_two_stage_smoke(face_rec, tmp_path, stage1_head):
    over = [f"data.root={face_rec}", "data.image_size=56", "data.num_workers=0",
            "model.backbone=resnet18", "device=cpu", f"stage1.head={stage1_head}",
            "stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=8", "stage2.batch_size=8",
            "stage1.max_steps_per_epoch=2", "stage2.max_steps_per_epoch=2", "eval.batch_size=16"]
    rc = main(["train", "--dataset", "ms1m_lt", "--config", str(ROOT / "configs" / "ms1m_lt.yaml"),
               "--out", str(tmp_path), *set_args(over)])
    assert rc == 0
    s2 = load_checkpoint(tmp_path / "stage2" / "checkpoint.pt")
    assert s2["num_classes"] == 6 and s2["class_counts"] == [10, 7, 5, 3, 2, 2]
    c = s2["model"]["head.centroids"]
    assert c.shape == (6, 512) and torch.isfinite(c).all() and (c.norm(dim=1) > 0).all()
    assert s2["metrics"]["images"] == 16


def _probes_and_distractors(face_rec, tmp_path):
    """The training rec's images as probes (CSV rows in rec order) and 12 SYNTHETIC distractors
    in ``tmp_path/dist/train``; returns (labels, probe CSV path)."""
    import csv
    from facelt.data.rec_dataset import RecordDataset
    from pipelines.synthetic_faces import write_synthetic_distractors
    write_synthetic_distractors(tmp_path / "dist" / "train", 12, seed=5, size=56)
    labels = RecordDataset(face_rec / "train", train=False).labels
    probe_csv = tmp_path / "probes.csv"
    with open(probe_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity"])
        w.writerows([f"img{i}.jpg", int(lab)] for i, lab in enumerate(labels))
    return labels, probe_csv


def test_megaface_eval_extracts_with_a_checkpoint(face_rec, face_checkpoint, tmp_path):
    """megaface-eval --checkpoint: features are extracted first (rows in rec order), then scored."""
    import json
    labels, probe_csv = _probes_and_distractors(face_rec, tmp_path)
    out = tmp_path / "mf"
    assert main(["megaface-eval", "--gallery", "10", "--checkpoint", str(face_checkpoint),
                 "--probe-rec",
                 str(face_rec / "train"), "--probe-list", str(probe_csv), "--distractor-rec",
                 str(tmp_path / "dist" / "train"), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    counts = np.bincount(labels)
    assert rep["trials"] == int((counts * (counts - 1)).sum())  # every ordered pair of an identity
    feats = np.load(out / "features" / "probes.npy")
    assert feats.shape == (len(labels), 512)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def face_checkpoint(face_rec, tmp_path_factory):
    out = tmp_path_factory.mktemp("facerun")
    over = [f"data.root={face_rec}", "data.image_size=56", "data.num_workers=0",
            "model.backbone=resnet18", "device=cpu", "stage1.epochs=1", "stage1.batch_size=8",
            "stage1.max_steps_per_epoch=1"]
    assert main(["train", "--config", str(ROOT / "configs" / "ms1m_lt.yaml"), "--stage", "1",
                 "--out", str(out), *set_args(over)]) == 0
    return out / "stage1" / "checkpoint.pt"


def test_image_files_are_embedded_like_the_rec_the_model_trained_on(face_rec, face_checkpoint,
                                                                    tmp_path):
    """A face model trained on RecordIO sees the whole aligned crop in [-1, 1]; the same faces as
    image files must give the same features (no ImageNet resize / crop / normalisation)."""
    import cv2
    from facelt.data.recordio import RecordReader, read_insightface, unpack
    index = read_insightface(face_rec / "train")
    reader = RecordReader(index.rec_path, index.idx_path)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, key in enumerate(index.keys[:10].tolist()):
        _, payload = unpack(reader.read(key))
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), img)  # lossless copy of the decoded pixels
    reader.close()
    assert main(["extract-features", "--checkpoint", str(face_checkpoint), "--images", str(folder),
                 "--out", str(tmp_path / "files.npy")]) == 0
    assert main(["extract-features", "--checkpoint", str(face_checkpoint), "--rec",
                 str(face_rec / "train"), "--out", str(tmp_path / "rec.npy")]) == 0
    a, b = np.load(tmp_path / "files.npy"), np.load(tmp_path / "rec.npy")[:10]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_features_are_reused_only_for_the_same_checkpoint(face_rec, face_checkpoint, tmp_path):
    import os
    import shutil
    from facelt.features.files import source_path
    out = tmp_path / "f.npy"
    args = ["extract-features", "--checkpoint", str(face_checkpoint), "--rec",
            str(face_rec / "train"), "--out", str(out)]
    assert main(args) == 0
    first = out.stat().st_mtime_ns
    assert main(args) == 0 and out.stat().st_mtime_ns == first      # same source: reused
    other = tmp_path / "other.pt"
    shutil.copy(face_checkpoint, other)
    os.utime(other, ns=(1, 1))                                       # another checkpoint file
    assert main(["extract-features", "--checkpoint", str(other), "--rec", str(face_rec / "train"),
                 "--out", str(out)]) == 0
    assert out.stat().st_mtime_ns != first                           # re-extracted
    assert str(other.resolve()) not in source_path(out).read_text()  # fingerprint, not the path


def test_megaface_distractor_list_must_match_the_extracted_rows(face_rec, face_checkpoint,
                                                                tmp_path, capsys):
    _, probe_csv = _probes_and_distractors(face_rec, tmp_path)
    rows = [f"{tmp_path / 'dist' / 'train'}#{k}" for k in range(1, 13)]
    (tmp_path / "dlist.txt").write_text("\n".join(reversed(rows)) + "\n")
    rc = main(["megaface-eval", "--gallery", "10", "--checkpoint", str(face_checkpoint),
               "--probe-rec", str(face_rec / "train"), "--probe-list", str(probe_csv),
               "--distractor-rec", str(tmp_path / "dist" / "train"),
               "--distractor-list", str(tmp_path / "dlist.txt"), "--out", str(tmp_path / "mf")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "dlist.txt" in err and "row 0" in err
