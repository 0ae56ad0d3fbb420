"""``facelt megaface-eval`` as a user runs it: a CPU evaluation of feature files in a fresh
process never imports torch, and its report is the hand-computed one; argument and list refusals
come before any work (issue 18, issue 20)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facelt.cli import main
from tests.conftest import ROOT
from tests.linear_embedding import linear_flip_sum

# Two identities of two probes each, three distractors, all unit vectors in 2-D.
PROBES = np.array([[1.0, 0.0], [0.8, 0.6],        # identity a (gender m)
                   [0.0, 1.0], [-0.28, 0.96]],    # identity b (gender f)
                  dtype=np.float32)
DISTRACTORS = np.array([[0.6, 0.8], [-1.0, 0.0], [0.28, -0.96]], dtype=np.float32)


def tiny_case(folder: Path) -> dict[str, Path]:
    """Hand-computed (scores are plain dot products of the rows above):

    trial p0 -> p1: genuine 0.8, p0's best distractor 0.6 (d0): hit at rank 1;
    trial p1 -> p0: genuine 0.8, d0 scores 0.96 (> 0.8), d1 -0.8, d2 -0.352: rank 2;
    trial p2 -> p3: genuine 0.96, best distractor 0.8 (d0): hit;
    trial p3 -> p2: genuine 0.96, best distractor 0.6 (d0): hit.
    So rank-1 = 3/4, CMC = [0.75, 1, 1, ...]; gender m 1/2, f 2/2."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "p.npy", PROBES)
    np.save(folder / "d.npy", DISTRACTORS)
    (folder / "p.csv").write_text("path,identity,gender\na/0.png,a,m\na/1.png,a,m\n"
                                  "b/2.png,b,f\nb/3.png,b,f\n")
    return {"p": folder / "p.npy", "d": folder / "d.npy", "csv": folder / "p.csv"}


def eval_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["megaface-eval", "--gallery", "3", "--probe-features", str(files["p"]),
            "--probe-list", str(files["csv"]), "--distractor-features", str(files["d"]),
            "--device", "cpu", "--out", str(out), *extra]


WRAPPER = ("import json, sys\n"
           "from facelt.cli import main\n"
           "rc = main(json.loads(sys.argv[1]))\n"
           "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")


def test_cpu_megaface_eval_of_feature_files_imports_no_torch(tmp_path):
    files = tiny_case(tmp_path / "in")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), FACELT_QUIET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(eval_args(files, out))],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == {"rc": 0, "torch": False}
    rep = json.loads((out / "report.json").read_text())
    assert rep["gallery"] == 3 and rep["trials"] == 4
    assert rep["rank1"] == pytest.approx(0.75)
    assert rep["cmc"] == pytest.approx([0.75] + [1.0] * 9)
    assert rep["groups"] == {"gender": {"f": pytest.approx(1.0), "m": pytest.approx(0.5)}}
    assert "gallery         3: rank-1 75.00% over 4 trials" in proc.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1.5", "-1.01"])
def test_pseudo_shot_threshold_outside_the_cosines_is_refused(tmp_path, capsys, value):
    """NaN compares false against every score: every probe would land in the zero bucket."""
    files = tiny_case(tmp_path / "in")
    np.save(tmp_path / "in" / "t.npy", DISTRACTORS)
    out = tmp_path / "out"
    rc = main(eval_args(files, out, "--train-features", str(tmp_path / "in" / "t.npy"),
                        f"--pseudo-shot-threshold={value}"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "--pseudo-shot-threshold" in err and value in err
    assert not out.exists()  # refused before any work


def test_pseudo_shot_threshold_at_the_ends_is_accepted(tmp_path):
    """-1 counts every training row with a cosine above -1; 1 counts none (strictly greater)."""
    files = tiny_case(tmp_path / "in")
    np.save(tmp_path / "in" / "t.npy", DISTRACTORS)
    for value, buckets in (("1", {"zero": 4}), ("-0.9", {"few": 4, "many": 0, "one": 0, "zero": 0})):
        out = tmp_path / f"out{value}"
        assert main(eval_args(files, out, "--train-features", str(tmp_path / "in" / "t.npy"),
                              "--pseudo-shot-threshold", value)) == 0
        got = json.loads((out / "report.json").read_text())["pseudo_shots"]
        for name, n in buckets.items():
            assert got[name]["probes"] == n, (value, got)


def test_duplicated_probe_rows_are_refused_naming_the_lines(tmp_path, capsys):
    """The same image listed twice would count its trials twice."""
    files = tiny_case(tmp_path / "in")
    files["csv"].write_text("path,identity\na/0.png,a\na/1.png,a\nb/2.png,b\na/0.png,a\n")
    out = tmp_path / "out"
    assert main(eval_args(files, out)) == 2
    err = capsys.readouterr().err
    assert "p.csv" in err and "a/0.png" in err and "lines 2 and 5" in err
    assert not (out / "report.json").exists()


# ------------------------------------------------------------------------------- --onnx models

SIDE = 8
W_EMB = np.random.default_rng(5).standard_normal((3 * SIDE * SIDE, 4)).astype(np.float32)
W_Q = np.random.default_rng(6).standard_normal((3 * SIDE * SIDE, 1)).astype(np.float32)


def two_output_model(path: Path) -> Path:
    """x (N, 3, 8, 8) -> Flatten -> MatMul: 'quality' (N, 1) first, then 'embedding' (N, 4)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w_q"], ["quality"]),
             helper.make_node("MatMul", ["flat", "w_emb"], ["embedding"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("quality", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(W_Q, "w_q"), numpy_helper.from_array(W_EMB, "w_emb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def by_hand(images: np.ndarray) -> np.ndarray:
    """insightface's convention written out: (x - 127.5) / 127.5, NCHW, flip-sum, L2."""
    return linear_flip_sum(images, W_EMB)


def write_images(folder: Path, names: list[str], images: np.ndarray) -> None:
    import cv2
    for name, img in zip(names, images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def test_megaface_eval_onnx_output_and_no_stale_features(tmp_path, capsys):
    """--onnx-output picks the embedding of a two-output model; after a distractor image's pixels
    change, the next run embeds it again instead of reusing OUT/features."""
    model = two_output_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(7)
    probes = rng.integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)
    distractors = rng.integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    write_images(tmp_path / "p", ["a/0.png", "a/1.png", "b/2.png", "b/3.png"], probes)
    write_images(tmp_path / "d", ["0.png", "1.png", "2.png"], distractors)
    (tmp_path / "p.csv").write_text("path,identity\na/0.png,a\na/1.png,a\nb/2.png,b\nb/3.png,b\n")
    out = tmp_path / "out"
    args = ["megaface-eval", "--gallery", "3", "--onnx", str(model), "--probe-images",
            str(tmp_path / "p"), "--probe-list", str(tmp_path / "p.csv"), "--distractor-images",
            str(tmp_path / "d"), "--batch-size", "2", "--device", "cpu", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 outputs" in err and "--onnx-output" in err
    assert not (out / "features").exists()
    assert main(args + ["--onnx-output", "embedding"]) == 0
    feats = out / "features"
    np.testing.assert_allclose(np.load(feats / "distractors.npy"), by_hand(distractors), atol=1e-5)
    np.testing.assert_allclose(np.load(feats / "probes.npy"), by_hand(probes), atol=1e-5)
    changed = distractors.copy()
    changed[1] = 255 - changed[1]
    write_images(tmp_path / "d", ["1.png"], changed[1:2])
    assert main(args + ["--onnx-output", "embedding"]) == 0
    np.testing.assert_allclose(np.load(feats / "distractors.npy"), by_hand(changed), atol=1e-5)
    np.testing.assert_allclose(np.load(feats / "probes.npy"), by_hand(probes), atol=1e-5)
