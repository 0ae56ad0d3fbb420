"""Issue 20 (hard knocks, round three): outputs that would destroy inputs are refused and change
nothing; locks and temporaries never follow a symbolic link; non-finite features, detector scores
and weights are refused naming the file and rows / key; every TAR is printed with the FAR it
reached, and a FAR the impostor pairs cannot measure says so."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from facelt.cli import main  # noqa: E402
from facelt.errors import OutputError  # noqa: E402
from tests.test_onnx import save_face_checkpoint  # noqa: E402

SIZE = 32


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def _snapshot(*paths: Path) -> dict:
    return {p: p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A stage-2 face checkpoint, its ONNX export, a tiny rec and a list file."""
    from facelt.faces.onnx_io import export_onnx
    from pipelines.synthetic_faces import write_synthetic_rec
    d = tmp_path_factory.mktemp("knocks3")
    ckpt, net = save_face_checkpoint(d / "stage2.pt", stage=2)
    onnx_path = export_onnx(net, d / "m.onnx", image_size=SIZE)
    write_synthetic_rec(d / "rec" / "train", counts=[2, 1], seed=4, size=SIZE)
    import cv2
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(imgs / f"{i}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    lst = d / "list.txt"
    lst.write_text("".join(f"{i}.png 0\n" for i in range(3)))
    return {"dir": d, "ckpt": ckpt, "net": net, "onnx": onnx_path, "rec": d / "rec" / "train",
            "imgs": imgs, "list": lst}


# ------------------------------------------------------------------- A: outputs over inputs
@pytest.mark.parametrize("model", ["--checkpoint", "--onnx"])
def test_extract_features_never_writes_over_its_inputs(kit, tmp_path, capsys, model):
    m = str(kit["ckpt"] if model == "--checkpoint" else kit["onnx"])
    rec = kit["rec"]
    inputs = [Path(m), Path(f"{rec}.rec"), Path(f"{rec}.idx"), kit["list"]]
    before = _snapshot(*inputs)
    link = tmp_path / "link.npy"
    link.symlink_to(m)
    for out in (m, f"{rec}.rec", f"{rec}.idx", str(link)):
        rc, _, err = _run(["extract-features", model, m, "--rec", str(rec), "--out", out], capsys)
        assert rc == 2 and "--out" in err and "destroy" in err, err
    rc, _, err = _run(["extract-features", model, m, "--list", str(kit["list"]), "--root",
                       str(kit["imgs"]), "--out", str(kit["list"])], capsys)
    assert rc == 2 and str(kit["list"]) in err
    # the row manifest beside --out would be the list: OUT.npy -> OUT.rows.txt
    rows_list = tmp_path / "x.rows.txt"
    rows_list.write_text(kit["list"].read_text())
    rc, _, err = _run(["extract-features", model, m, "--list", str(rows_list), "--root",
                       str(kit["imgs"]), "--out", str(tmp_path / "x.npy")], capsys)
    assert rc == 2 and "x.rows.txt" in err
    assert rows_list.read_text() == kit["list"].read_text()
    assert _snapshot(*inputs) == before
    assert not (tmp_path / "x.npy").exists()


def test_export_refuses_its_checkpoint_and_an_existing_folder(kit, tmp_path, capsys):
    before = _snapshot(kit["ckpt"])
    rc, _, err = _run(["export", "--checkpoint", str(kit["ckpt"]), "--out", str(kit["ckpt"])],
                      capsys)
    assert rc == 2 and "--out" in err and str(kit["ckpt"]) in err
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    rc, _, err = _run(["export", "--checkpoint", str(kit["ckpt"]), "--out", str(folder)], capsys)
    assert rc == 2 and "is a folder" in err
    assert _snapshot(kit["ckpt"]) == before and (folder / "keep").read_text() == "mine"


def test_verify_out_never_replaces_its_features(tmp_path, capsys):
    rep = tmp_path / "rep"
    rep.mkdir()
    feats = rep / "report.json"              # a feature file that happens to sit where the report goes
    with open(feats, "wb") as fh:
        np.save(fh, np.eye(4, dtype=np.float32)[np.arange(40) % 4])
    path = tmp_path / "s.bin"
    path.write_bytes(pickle.dumps(([b"x"] * 40, [i % 2 == 0 for i in range(20)])))
    before = _snapshot(feats)
    rc, _, err = _run(["verify", "--bin", str(path), "--features", str(feats), "--out", str(rep)],
                      capsys)
    assert rc == 2 and "report.json" in err and "destroy" in err
    assert _snapshot(feats) == before


def test_ijb_out_never_replaces_its_features(tmp_path, capsys):
    from tests.test_ijb import PAIRS, write_ijb
    feats = write_ijb(tmp_path, pairs=PAIRS)
    out = tmp_path / "rep"
    out.mkdir()
    f = out / "pair_scores.npy"
    np.save(f, feats)
    before = _snapshot(f)
    rc, _, err = _run(["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f),
                       "--out", str(out)], capsys)
    assert rc == 2 and "pair_scores.npy" in err
    assert _snapshot(f) == before


def test_refuse_output_over_inputs_sees_links_and_hard_links(tmp_path):
    from facelt.utils.outputs import refuse_output_over_inputs
    a = tmp_path / "a.bin"
    a.write_bytes(b"data")
    hard = tmp_path / "hard"
    os.link(a, hard)
    soft = tmp_path / "soft"
    soft.symlink_to(a)
    for out in (a, hard, soft, tmp_path / "sub" / ".." / "a.bin"):
        with pytest.raises(OutputError, match="--out"):
            refuse_output_over_inputs(out, [None, a], "--out")
    refuse_output_over_inputs(tmp_path / "other", [a], "--out")     # a new file: fine
    with pytest.raises(OutputError, match="it writes"):
        refuse_output_over_inputs(tmp_path / "o", [a], "--out", written=[soft])


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    from facelt.utils.run_lock import LOCK_NAME, lock_run_folder
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(precious)
    with pytest.raises(OutputError) as e:
        lock_run_folder(run)
    assert str(run / LOCK_NAME) in str(e.value) and "symbolic link" in str(e.value)
    assert precious.read_text() == "do not truncate me\n"


def test_a_partial_feature_file_that_is_a_symlink_is_refused(tmp_path):
    from facelt.features.files import partial_path, write_feature_memmap
    precious = tmp_path / "precious.npy"
    np.save(precious, np.arange(6, dtype=np.float32).reshape(2, 3))
    before = _snapshot(precious)
    out = tmp_path / "f.npy"
    partial_path(out).symlink_to(precious)
    for reuse in (False, True):
        with pytest.raises(OutputError, match="symbolic link"):
            write_feature_memmap(out, 2, 3, reuse=reuse)
    assert _snapshot(precious) == before


# ------------------------------------------------------------------- C: non-finite and degenerate
def _bin(tmp_path: Path, pairs: int = 20) -> Path:
    path = tmp_path / "s.bin"
    path.write_bytes(pickle.dumps(([b"x"] * (2 * pairs), [i % 2 == 0 for i in range(pairs)])))
    return path


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_verify_refuses_non_finite_feature_rows(tmp_path, capsys, value, word):
    feats = np.eye(8, dtype=np.float32)[np.arange(40) % 8]
    feats[7, 2] = value
    feats[31, 0] = value
    f = tmp_path / "f.npy"
    np.save(f, feats)
    rc, _, err = _run(["verify", "--bin", str(_bin(tmp_path)), "--features", str(f)], capsys)
    assert rc == 2 and str(f) in err and "row(s) 7, 31" in err and word in err


def test_ijb_refuses_non_finite_features_and_bad_detector_scores(tmp_path, capsys):
    from tests.test_ijb import PAIRS, write_ijb
    feats = write_ijb(tmp_path, pairs=PAIRS)
    f = tmp_path / "f.npy"
    bad = feats.copy()
    bad[4, 1] = np.nan
    np.save(f, bad)
    argv = ["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f)]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and str(f) in err and "row 4 (image e.jpg, template 3)" in err and "NaN" in err
    np.save(f, feats)
    assert _run(argv, capsys)[0] == 0
    meta = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    good = meta.read_text()
    for score in ("nan", "inf", "-0.5"):
        lines = good.splitlines()
        lines[2] = lines[2].rsplit(" ", 1)[0] + f" {score}"
        meta.write_text("\n".join(lines) + "\n")
        rc, _, err = _run(argv, capsys)
        assert rc == 2 and str(meta) in err and "line(s) 3" in err and "detector score" in err


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_key(kit, tmp_path, capsys):
    state = torch.load(kit["ckpt"], weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][key] = state["model"][key].clone()
    state["model"][key].view(-1)[1] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    img = kit["imgs"] / "0.png"
    for argv in (["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")],
                 ["extract-features", "--checkpoint", str(bad), "--rec", str(kit["rec"]),
                  "--out", str(tmp_path / "f.npy")],
                 ["classify", "--checkpoint", str(bad), str(img)]):
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and str(bad) in err and f"'{key}'" in err and "NaN" in err, (argv, err)
        assert "nan" not in out
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "f.npy").exists()


def test_export_refuses_a_nan_parity_and_keeps_the_previous_file(kit, tmp_path, monkeypatch):
    from facelt.errors import FaceltError
    from facelt.faces import onnx_io
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(onnx_io, "compare_with_torch", lambda *a, **k: float("nan"))
    with pytest.raises(FaceltError, match="min cosine nan"):
        onnx_io.export_checked_onnx(kit["net"], out, SIZE)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]        # no temporary left


def test_constant_embeddings_show_the_achieved_far(tmp_path, capsys):
    f = tmp_path / "f.npy"
    np.save(f, np.ones((40, 4), np.float32))          # every pair at distance 0
    argv = ["verify", "--bin", str(_bin(tmp_path)), "--features", str(f)]
    rc, out, _ = _run(argv + ["--json"], capsys)
    got = json.loads(out)
    # 10 impostor pairs, 9 in each training fold: every one is accepted with the genuine ones
    assert rc == 0 and got["val"] == 1.0 and got["far"] == 1.0
    assert got["impostors"] == 9 and got["far_measurable"] is False   # 1e-3 < 1 / 9
    rc, out, _ = _run(argv, capsys)
    assert "TAR@FAR=0.001 100.00% (achieved FAR 100.00%)" in out and "not measurable" in out


def test_ijb_says_which_fars_its_impostors_cannot_measure(tmp_path, capsys):
    from tests.test_ijb import PAIRS, write_ijb
    feats = write_ijb(tmp_path, pairs=PAIRS + [(2, 1, 0)])     # 2 genuine, 3 impostor pairs
    f = tmp_path / "f.npy"
    np.save(f, feats)
    argv = ["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f)]
    rc, out, _ = _run(argv + ["--json"], capsys)
    got = json.loads(out)
    # only FAR >= 1/3 is measurable from 3 impostor pairs: none of 1e-6 .. 1e-1
    assert rc == 0 and got["impostor"] == 3
    assert got["far_measurable"] == {k: False for k in got["tar_at_far"]}
    assert set(got["achieved_far"]) == set(got["tar_at_far"])
    for v in got["achieved_far"].values():        # a rate of 3 impostor pairs: 0, 1/3, 2/3 or 1
        assert v in (0.0, 1 / 3, 2 / 3, 1.0)
    rc, out, _ = _run(argv, capsys)
    assert "TAR@FAR=1e-06: not measurable from 3 impostor pairs" in out


def test_ijb_achieved_far_by_hand():
    from facelt.faces.ijb import achieved_far_table, tar_table
    # scores 0.9 (gen) 0.8 (imp) 0.7 (gen) 0.6 (imp) ... as counts at each distinct score:
    fps = np.array([0, 1, 1, 2])
    tps = np.array([1, 1, 2, 2])
    # strict at FAR 0.5: points with fpr <= 0.5 are (0,0) (0,.5) (.5,.5) (.5,1): TAR 1, FAR .5
    assert tar_table(fps, tps, 2, 2, "strict", (0.5, 0.1)) == {"0.5": 1.0, "0.1": 0.5}
    assert achieved_far_table(fps, tps, 2, 2, "strict", (0.5, 0.1)) == {"0.5": 0.5, "0.1": 0.0}


def test_ijb_roc_plot_is_in_percent_and_off_the_edges():
    from facelt.faces.ijb import roc_plot_points
    fpr = np.array([0.0, 1e-3, 0.5, 1.0])
    tpr = np.array([0.0, 0.25, 0.75, 1.0])
    x, y, (x0, x1), (y0, y1) = roc_plot_points((fpr, tpr))
    np.testing.assert_allclose(x, [0.1, 50.0, 100.0])
    np.testing.assert_allclose(y, [25.0, 75.0, 100.0])
    assert x0 < 1e-4 and x1 > 100.0 and y0 < 0.0 and y1 > 100.0


# ------------------------------------------------------------------- B: stale caches
def test_onnx_features_are_re_extracted_after_the_images_change(kit, tmp_path, capsys):
    import shutil

    import cv2
    imgs = tmp_path / "imgs"
    shutil.copytree(kit["imgs"], imgs)
    feats = tmp_path / "f.npy"
    argv = ["extract-features", "--onnx", str(kit["onnx"]), "--images", str(imgs), "--out", str(feats)]
    assert _run(argv, capsys)[0] == 0
    old = np.load(feats)
    # the same file names and sizes, other pixels
    cv2.imwrite(str(imgs / "1.png"), np.full((SIZE, SIZE, 3), 200, np.uint8))
    assert _run(argv, capsys)[0] == 0
    new = np.load(feats)
    fresh = tmp_path / "fresh.npy"
    assert _run(argv[:-1] + [str(fresh)], capsys)[0] == 0
    np.testing.assert_array_equal(new, np.load(fresh))
    assert not np.allclose(new[1], old[1])
    np.testing.assert_array_equal(new[[0, 2]], old[[0, 2]])
    stamp = feats.stat().st_mtime_ns                      # unchanged images: reused as it is
    assert _run(argv, capsys)[0] == 0 and feats.stat().st_mtime_ns == stamp


def _ijb_112(tmp_path: Path) -> tuple[Path, Path]:
    """An IJB tree of 4 photos (templates 1 and 2, detector scores 1) and a 112x112 ONNX model."""
    from facelt.faces.onnx_io import export_onnx
    from tests.ijb_photos import tiny_112_network, write_self_aligned_ijb
    model = export_onnx(tiny_112_network(), tmp_path / "m.onnx", image_size=112)
    root = tmp_path / "ijb"
    photos = np.random.default_rng(4).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    write_self_aligned_ijb(root, photos, [(1, 2, 0), (1, 1, 1)], scores=np.ones(4))
    return root, model


def test_ijb_features_are_re_made_after_the_landmarks_change(tmp_path, capsys):
    root, model = _ijb_112(tmp_path)
    out = tmp_path / "o"
    argv = ["ijb", "--root", str(root), "--target", "IJBC", "--onnx", str(model), "--out", str(out)]
    assert _run(argv, capsys)[0] == 0
    old = np.load(out / "features.npy")
    meta = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = meta.read_text().splitlines()
    parts = lines[2].split()
    parts[1:11] = [f"{float(v) + 9.0:.6f}" for v in parts[1:11]]   # the face shifted 9 pixels
    lines[2] = " ".join(parts)
    meta.write_text("\n".join(lines) + "\n")
    assert _run(argv, capsys)[0] == 0
    new = np.load(out / "features.npy")
    assert not np.allclose(new[2], old[2])
    np.testing.assert_allclose(new[[0, 1, 3]], old[[0, 1, 3]], rtol=1e-6)


def test_compare_does_not_reuse_a_run_trained_on_another_data_root(tmp_path):
    from facelt.compare.runs import recipe_diff
    from facelt.config import load_config
    recipe = Path(__file__).resolve().parents[1] / "configs" / "demo_list.yaml"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    saved = load_config(recipe, [f"data.root={a}"]).to_dict()
    diff = recipe_diff(saved, load_config(recipe, [f"data.root={b}"]), 1)
    assert diff is not None and diff.startswith("data.root")
    # the same folder spelled another way is the same run
    assert recipe_diff(saved, load_config(recipe, [f"data.root={tmp_path}/b/../a"]), 1) is None


# ------------------------------------------------------------------- E: one image-size rule
def test_one_image_size_rule_before_any_work(kit, tmp_path, capsys):
    import cv2

    from pipelines.synthetic_faces import write_synthetic_rec
    recipe = str(Path(__file__).resolve().parents[1] / "configs" / "ms1m_lt.yaml")
    write_synthetic_rec(tmp_path / "faces" / "train", counts=[2, 2], seed=5, size=32)
    sets = [a for o in (f"data.root={tmp_path / 'faces'}", "device=cpu", "data.num_workers=0",
                        "model.backbone=resnet10") for a in ("--set", o)]
    # the recipe says 112 (ms1m_lt's data.image_size), property says 32: check says so (no --decode)
    rc, _, err = _run(["check", "--config", recipe, *sets], capsys)
    assert rc == 2 and "images are 32x32" in err and "112x112" in err and "data.image_size=32" in err
    rc, _, err = _run(["train", "--config", recipe, "--stage", "1", "--out", str(tmp_path / "run"),
                       *sets], capsys)
    assert rc == 2 and "images are 32x32" in err and "112x112" in err
    assert not (tmp_path / "run" / "stage1").exists()
    # extract-features: the checkpoint is 32, this rec 48
    write_synthetic_rec(tmp_path / "r48" / "train", counts=[1, 1], seed=6, size=48)
    for model in ("--checkpoint", "--onnx"):
        m = str(kit["ckpt"] if model == "--checkpoint" else kit["onnx"])
        rc, _, err = _run(["extract-features", model, m, "--rec", str(tmp_path / "r48" / "train"),
                           "--out", str(tmp_path / "f.npy")], capsys)
        assert rc == 2 and "images are 48x48" in err and "32x32" in err, err
    # verify: a .bin of 48x48 images for the 32x32 model: refused, unless --resize
    rng = np.random.default_rng(1)
    bins = [cv2.imencode(".png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))[1].tobytes()
            for _ in range(40)]
    path = tmp_path / "s.bin"
    path.write_bytes(pickle.dumps((bins, [i % 2 == 0 for i in range(20)])))
    rc, _, err = _run(["verify", "--bin", str(path), "--checkpoint", str(kit["ckpt"])], capsys)
    assert rc == 2 and str(path) in err and "48x48" in err and "--resize" in err
    assert _run(["verify", "--bin", str(path), "--checkpoint", str(kit["ckpt"]), "--resize"],
                capsys)[0] == 0


def test_fashion_lt_before_prepare_names_the_apt_package_and_the_command(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)                       # no data/fashion_lt here
    rc, _, err = _run(["train", "--dataset", "fashion_lt"], capsys)
    assert rc == 2 and "apt-get install dataset-fashion-mnist" in err
    assert "facelt prepare --dataset fashion_lt" in err
    assert not (tmp_path / "runs").exists()


def test_rec_inspect_prints_a_summary_and_a_limit(tmp_path, capsys):
    from pipelines.synthetic_faces import write_synthetic_rec
    write_synthetic_rec(tmp_path / "r" / "train", counts=[3, 2, 2, 1, 1], seed=7, size=16)
    prefix = str(tmp_path / "r" / "train")
    # 9 images + record 0 + 5 identity records = 15 records
    rc, out, _ = _run(["rec", "inspect", prefix, "--limit", "4"], capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 1 + 4 + 1
    assert lines[-1].startswith("15 records,") and "4 shown" in lines[-1] and "--limit 0" in lines[-1]
    assert "property 5,16,16" in lines[-1]
    rc, out, _ = _run(["rec", "inspect", prefix, "--limit", "0"], capsys)
    assert len(out.splitlines()) == 1 + 15 + 1 and "15 shown" in out.splitlines()[-1]
    rc, out, _ = _run(["rec", "inspect", prefix], capsys)          # default: the first 20
    assert len(out.splitlines()) == 17


def test_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    from pipelines.synthetic_faces import write_synthetic_rec
    write_synthetic_rec(tmp_path / "r" / "train", counts=[40] * 30, seed=8, size=8)
    root = Path(__file__).resolve().parents[1]
    cmd = (f"{sys.executable} -m facelt rec inspect {tmp_path / 'r' / 'train'} --limit 0 | head -n 2")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert len(done.stdout.splitlines()) == 2
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_failed_command_leaves_no_empty_folder_it_created(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "f.npy"
    rc, _, err = _run(["extract-features", "--checkpoint", str(tmp_path / "missing.pt"),
                       "--images", str(tmp_path), "--out", str(out)], capsys)
    assert rc == 2 and "missing.pt" in err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"                            # a folder that was there stays
    kept.mkdir()
    rc, _, _ = _run(["extract-features", "--checkpoint", str(tmp_path / "missing.pt"),
                     "--images", str(tmp_path), "--out", str(kept / "sub" / "f.npy")], capsys)
    assert rc == 2 and kept.is_dir() and not (kept / "sub").exists()


def test_loader_workers_are_fitted_to_the_cores():
    from facelt.data.build import fitted_workers
    cores = len(os.sched_getaffinity(0))
    assert fitted_workers(8) == min(8, cores)
    assert fitted_workers(0) == 0 and fitted_workers(cores + 5) == cores


def test_only_rank_0_prints_the_final_line(monkeypatch):
    from facelt.parallel.process import is_primary_process
    monkeypatch.setenv("RANK", "1")
    assert not is_primary_process()
    monkeypatch.setenv("RANK", "0")
    assert is_primary_process()
    monkeypatch.delenv("RANK")
    assert is_primary_process()


# ------------------------------------------------------------------- D: arguments and environment
@pytest.mark.parametrize("label", [float("nan"), float("inf"), 3e9])
def test_prepare_refuses_nan_infinite_and_huge_labels(tmp_path, capsys, label):
    import cv2

    from facelt.data.recordio import IRHeader, RecordWriter, pack
    prefix = tmp_path / "src" / "train"
    prefix.parent.mkdir()
    img = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with RecordWriter(f"{prefix}.rec", f"{prefix}.idx") as w:
        for i, lab in enumerate((0.0, label, 1.0)):
            w.write(i, pack(IRHeader(0, lab, i, 0), img))
    rc, _, err = _run(["prepare", "--dataset", "ms1m_lt", "--source", str(prefix), "--out",
                       str(tmp_path / "out")], capsys)
    assert rc == 2 and f"{prefix}.rec" in err and "is not a class index" in err, err
    lst = tmp_path / "l.txt"
    lst.write_text("a.jpg 0\nb.jpg 3000000000\n")
    from facelt.data.lists import read_list
    from facelt.errors import DataError
    with pytest.raises(DataError, match="line 2: .*above"):
        read_list(lst)


def test_arguments_and_config_values_are_checked(tmp_path, capsys):
    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo_list.yaml")
    for setting, words in (("data.channels=3.0", "must be one of 1, 3, got 3.0"),
                           ("seed=-1", "must be >= 0"),
                           ("stage1.batch_size=1e20", "must be an integer"),
                           ("stage2.centroid_loss_weight=0.5",
                            "renamed: it is now stage2.centroid_loss.weight")):
        rc, _, err = _run(["config", "--config", demo, "--set", setting], capsys)
        assert rc == 2 and words in err, (setting, err)
    yml = tmp_path / "c.yaml"
    yml.write_text("name: x\ndata:\n  channels: 3.0\n")
    rc, _, err = _run(["config", "--config", str(yml)], capsys)
    assert rc == 2 and "data.channels" in err and "3.0" in err
    for argv in (["verify", "--bin", "x.bin", "--features", "f.npy", "--batch-size", "0"],
                 ["prepare", "--dataset", "demo", "--out", str(tmp_path / "d"), "--seed", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert not (tmp_path / "d").exists()


def test_verify_and_ijb_out_are_checked_before_the_work(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    f = tmp_path / "f.npy"
    np.save(f, np.ones((40, 4), np.float32))
    rc, out, err = _run(["verify", "--bin", str(_bin(tmp_path)), "--features", str(f), "--out",
                         str(a_file)], capsys)
    assert rc == 2 and "is a file" in err and out == "" and a_file.read_text() == "keep"
    from tests.test_ijb import PAIRS, write_ijb
    np.save(f, write_ijb(tmp_path, pairs=PAIRS))
    rc, out, err = _run(["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f),
                         "--out", str(a_file / "sub")], capsys)
    assert rc == 2 and "a_file" in err and out == ""


def test_train_never_writes_over_its_init_checkpoint(kit, tmp_path, capsys):
    import shutil

    from pipelines.synthetic_faces import write_synthetic_rec
    recipe = str(Path(__file__).resolve().parents[1] / "configs" / "ms1m_lt.yaml")
    write_synthetic_rec(tmp_path / "faces" / "train", counts=[2, 2], seed=5, size=32)
    run = tmp_path / "run"
    init = run / "stage2" / "checkpoint.pt"           # what stage 2 of this --out writes
    init.parent.mkdir(parents=True)
    shutil.copy(kit["ckpt"], init)
    before = _snapshot(init)
    rc, _, err = _run(["train", "--config", recipe, "--stage", "2", "--out", str(run), "--init",
                       str(init), "--set", f"data.root={tmp_path / 'faces'}", "--set",
                       "data.image_size=32", "--set", "device=cpu"], capsys)
    assert rc == 2 and "--out" in err and "checkpoint.pt" in err and "destroy" in err
    assert _snapshot(init) == before
