"""Issue 19, items 9 and 10: insightface's table rules and its model loader.

References, read and written out by hand: insightface ``recognition/arcface_torch/eval_ijbc.py``
(``fpr, tpr, _ = roc_curve(label, score)``; both flipped; per FAR ``min(zip(abs(fpr - far),
range(len(fpr))))`` -> ``tpr[index]``), scikit-learn's ``roc_curve`` (``drop_intermediate=True``:
keep the first and last points and those where ``np.diff(fps, 2)`` or ``np.diff(tps, 2)`` is not
zero, then prepend (0, 0)), ``recognition/arcface_torch/eval/verification.py`` ``calculate_val``
(``interpolate.interp1d(far_train, thresholds, kind='slinear')(1e-3)``) and
``python-package/insightface/model_zoo/model_zoo.py`` (``ModelRouter.get_model``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facelt.cli import main
from facelt.faces.ijb import (roc_counts, sklearn_kept_points, tar_at_far, tar_at_nearest_far,
                              tar_table)
from facelt.faces.insightface_route import insightface_route, insightface_route_warning
from facelt.faces.verification import VAL_THRESHOLDS, threshold_at_far
from tests.conftest import ROOT, interop_import

# scores 8 .. 1 (descending), labels: genuine 1, impostor 0
SCORES = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
LABELS = np.array([1, 0, 1, 0, 0, 1, 0, 1])


# ------------------------------------------------------------------ item 9: ROC and TAR rules
def test_roc_curve_drop_intermediate_by_hand():
    # labels 1 1 1 0 0 1 0 0 at distinct scores: fps 0 0 0 1 2 2 3 4, tps 1 2 3 3 3 4 4 4.
    # Points 1 (0,2), 3 (1,3) and 6 (3,4) sit in the middle of equal steps: dropped.
    fps, tps, _, pos, neg = roc_counts(np.arange(8.0, 0.0, -1.0), np.array([1, 1, 1, 0, 0, 1, 0, 0]))
    assert fps.tolist() == [0, 0, 0, 1, 2, 2, 3, 4] and tps.tolist() == [1, 2, 3, 3, 3, 4, 4, 4]
    assert sklearn_kept_points(fps, tps).tolist() == [0, 2, 4, 5, 7]
    # scikit-learn's own comment: fps = [1, 3, 7], tps = [1, 2, 4] (collinear, unequal steps) keeps all
    assert sklearn_kept_points(np.array([1, 3, 7]), np.array([1, 2, 4])).tolist() == [0, 1, 2]
    assert sklearn_kept_points(np.array([0, 1]), np.array([1, 1])).tolist() == [0, 1]


def test_nearest_far_rule_by_hand():
    # SCORES / LABELS: fps 0 1 1 2 3 3 4 4, tps 1 1 2 2 2 3 3 4 (4 genuine, 4 impostor pairs).
    # roc_curve drops point 3 (2, 2) (between (1, 2) and (3, 2)): with (0, 0) first,
    #   fpr 0 0 .25 .25 .75 .75 1 1,   tpr 0 .25 .25 .5 .5 .75 .75 1.
    # FAR 0.5: |fpr - .5| is .25 at fpr .25 and .75 alike; eval_ijbc flips the curve and takes
    # the first minimum, i.e. the last of them in roc_curve's order: tpr .75.
    fps, tps, _, pos, neg = roc_counts(SCORES, LABELS)
    assert (pos, neg) == (4, 4)
    # FAR 0.2: nearest fpr .25 (distance .05), points (.25, .25) and (.25, .5): the later, .5;
    # FAR 1e-6: nearest fpr 0, points (0, 0) and (0, .25): .25
    got = tar_table(fps, tps, pos, neg, "insightface", fars=(0.5, 0.2, 1e-6))
    assert got == {"0.5": 0.75, "0.2": 0.5, "1e-06": 0.25}
    # strict: the highest TPR with FPR <= FAR, on every point: FAR .5 reaches (2, 2) -> .5
    assert tar_table(fps, tps, pos, neg, "strict", fars=(0.5, 0.2)) == {"0.5": 0.5, "0.2": 0.25}
    # the nearest rule on the curve with no point dropped would also give .5 at FAR .5 (the
    # dropped point (0.5, 0.5) is at distance 0): the drop is what makes insightface's .75
    fpr_all = np.r_[0.0, fps / neg]
    tpr_all = np.r_[0.0, tps / pos]
    assert tar_at_nearest_far(fpr_all, tpr_all, (0.5,)) == {"0.5": 0.5}
    assert tar_at_far(fpr_all, tpr_all, (0.5,)) == {"0.5": 0.5}


def test_ijb_cli_names_the_rule(tmp_path, capsys):
    from tests.test_ijb import PAIRS, write_ijb
    feats = write_ijb(tmp_path, pairs=PAIRS + [(2, 1, 0)])
    f = tmp_path / "f.npy"
    np.save(f, feats)
    for rule in ("strict", "insightface"):
        out = tmp_path / rule
        args = ["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f),
                "--out", str(out)]
        assert main(args + ["--json"] + (["--tar-rule", rule] if rule != "strict" else [])) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["tar_rule"].startswith(f"{rule}:")
        assert f"TAR at FAR: {rule}:" in (out / "report.md").read_text()


def test_val_threshold_takes_the_last_of_an_exact_far_run():
    """1,000 impostor pairs, one at distance 0.5, the rest at 3.0: FAR(t) of ``dist < t`` is
    exactly 1e-3 for every threshold in (0.5, 3.0]. interp1d(far, thresholds, 'slinear') at 1e-3
    (scipy's degree-1 spline at a repeated x: the value of the last knot) gives the last of them,
    3.0; the first crossing would be 0.501."""
    neg = np.r_[0.5, np.full(999, 3.0)]
    dist = np.r_[neg, np.full(10, 1.0)]
    issame = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    far = np.array([np.sum(neg < t) / 1000.0 for t in VAL_THRESHOLDS])
    run = VAL_THRESHOLDS[far == 1e-3]
    assert run[0] == pytest.approx(0.501) and run[-1] == 3.0
    assert threshold_at_far(dist, issame, 1e-3) == run[-1]
    # not reached exactly: linear between the thresholds around the first crossing (unchanged)
    neg2 = np.r_[np.linspace(0.1, 0.2, 3), np.full(1497, 3.5)]     # FAR 1/1500 -> 2/1500
    t = threshold_at_far(neg2, np.zeros(1500, bool), 1e-3)
    far2 = np.array([np.sum(neg2 < x) / 1500.0 for x in VAL_THRESHOLDS])
    j = int(np.argmax(far2 >= 1e-3))
    want = VAL_THRESHOLDS[j - 1] + (1e-3 - far2[j - 1]) * (VAL_THRESHOLDS[j] - VAL_THRESHOLDS[j - 1]) \
        / (far2[j] - far2[j - 1])
    assert t == pytest.approx(want)


# ------------------------------------------------------------------ item 10: model_zoo routing
@pytest.mark.parametrize("shape,inputs,outputs,route", [
    ((1, 3, 32, 32), 1, 1, None),              # the demo's default export
    ((1, 3, 112, 112), 1, 1, "ArcFaceONNX"),
    ((1, 3, 128, 128), 1, 1, "ArcFaceONNX"),
    ((1, 3, 128, 128), 2, 1, "INSwapper"),
    ((1, 3, 224, 224), 1, 1, "ArcFaceONNX"),
    ((1, 3, 120, 120), 1, 1, None),            # not a multiple of 16
    ((1, 3, 96, 96), 1, 1, "Attribute"),
    ((1, 3, 192, 192), 1, 1, "Landmark"),
    ((1, 3, 112, 96), 1, 1, None),             # not square
    ((1, 3, 640, 640), 1, 9, "SCRFD"),         # five or more outputs: a detector
])
def test_insightface_routing_rules(shape, inputs, outputs, route):
    assert insightface_route(shape, inputs, outputs) == route


def test_export_warns_when_insightface_will_not_route(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.test_onnx import save_face_checkpoint
    ckpt, _ = save_face_checkpoint(tmp_path / "s1.pt", stage=1)       # 32 x 32 (demo_faces)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"),
                 "--no-check"]) == 0
    err = capsys.readouterr().err
    assert "warning: insightface's model_zoo.get_model returns None" in err and "32x32" in err
    ckpt112 = _checkpoint_112(tmp_path)
    assert main(["export", "--checkpoint", str(ckpt112), "--out", str(tmp_path / "m112.onnx"),
                 "--no-check"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert insightface_route_warning(112, channels=1).startswith("insightface's ArcFaceONNX feeds 3")


def _net_112(stage: int = 1):
    from facelt.config import load_config
    from facelt.models.build import build_net
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "demo_faces.yaml",
                      ["data.image_size=112", "model.embedding_dim=16"])
    return build_net(cfg, stage, 5).eval(), cfg


def _checkpoint_112(tmp_path):
    from facelt.models.checkpoint import save_checkpoint
    net, cfg = _net_112()
    path = tmp_path / "s1_112.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "stage": 1, "num_classes": 5,
                           "model": net.state_dict(), "class_counts": [1] * 5})
    return path


def test_demo_face_size_112_options():
    from facelt.jobs.demo import DemoOptions
    over = DemoOptions(out=ROOT, recipe=ROOT, face_size=112, overrides=("seed=1",)).recipe_overrides()
    assert over[:2] == ["data.image_size=112", "stage2.spatial_attention=conv"] and "seed=1" in over
    assert DemoOptions(out=ROOT, recipe=ROOT).recipe_overrides() == []


def test_insightface_get_model_round_trip(tmp_path):
    """With the real insightface wheel (installed without its dependencies in CI): get_model
    routes facelt's 112x112 export to ArcFaceONNX and its get_feat equals facelt's embedding; the
    32x32 export comes back None, as insightface_route says."""
    model_zoo = interop_import("insightface.model_zoo",
                               reason="insightface is not installed (interop check)")
    pytest.importorskip("onnxruntime")
    from facelt.faces.onnx_io import export_onnx
    net, _ = _net_112()
    path = export_onnx(net, tmp_path / "r112.onnx", image_size=112, channels=3)
    model = model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    assert type(model).__name__ == insightface_route((1, 3, 112, 112)) == "ArcFaceONNX"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(4, 112, 112, 3), dtype=np.uint8)
    theirs = model.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])  # BGR in
    x = torch.from_numpy(rgb.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        ours = net.embed(x).numpy()
    cos = np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.9999
    small, _ = _small_net()
    p32 = export_onnx(small, tmp_path / "r32.onnx", image_size=32, channels=3)
    assert model_zoo.get_model(str(p32), providers=["CPUExecutionProvider"]) is None
    assert insightface_route((1, 3, 32, 32)) is None


def _small_net():
    from tests.test_onnx import face_net
    return face_net(1)
