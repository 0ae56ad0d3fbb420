"""Issue 11 (hard knocks): each bad input ends in a clear error (exit 2, the file / key / row named,
no traceback) or in the right result, and nothing written before is lost."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelt.cli import main as cli_main
from facelt.data.recordio import read_insightface

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _images(root: Path, labels: list[int], seed: int = 0, channels: int = 3) -> Path:
    """PNG files under ``root`` and an im2rec .lst over them (index, label, path)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i, lab in enumerate(labels):
        shape = (16, 16, 3) if channels == 3 else (16, 16)
        ok, buf = cv2.imencode(".png", rng.integers(0, 256, shape, dtype=np.uint8))
        (root / f"{i}.png").write_bytes(buf.tobytes())
        lines.append(f"{i}\t{lab}\t{i}.png")
    lst = root.parent / f"{root.name}.lst"
    lst.write_text("\n".join(lines) + "\n")
    return lst


# ------------------------------------------------------------------- C: rec pack onto an existing prefix
def test_rec_pack_refuses_existing_prefix_and_shared_property(tmp_path, capsys):
    six = _images(tmp_path / "six", [0, 1, 2, 3, 4, 5])
    three = _images(tmp_path / "three", [0, 1, 2], seed=1)
    out = tmp_path / "rec"
    assert _run(["rec", "pack", "--list", str(six), "--root", str(tmp_path / "six"),
                 "--out", str(out / "train")], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert before["property"] == b"6,112,112"

    # the same prefix again: refused without --force, nothing changed
    rc, err = _run(["rec", "pack", "--list", str(three), "--root", str(tmp_path / "three"),
                    "--out", str(out / "train")], capsys)
    assert rc == 2 and str(out / "train.rec") in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # another prefix in the folder needing another property: refused even with --force
    rc, err = _run(["rec", "pack", "--list", str(three), "--root", str(tmp_path / "three"),
                    "--out", str(out / "val"), "--force"], capsys)
    assert rc == 2 and "property" in err and "train.rec" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_insightface(out / "train").num_classes == 6

    # --force on the prefix itself replaces it (property then follows it: no other .rec uses it)
    assert _run(["rec", "pack", "--list", str(three), "--root", str(tmp_path / "three"),
                 "--out", str(out / "train"), "--force"], capsys)[0] == 0
    assert (out / "property").read_bytes() == b"3,112,112"
    assert read_insightface(out / "train").num_classes == 3


def test_rec_pack_same_property_is_left_untouched(tmp_path, capsys):
    a = _images(tmp_path / "a", [0, 1, 2])
    b = _images(tmp_path / "b", [0, 0, 1, 2], seed=2)
    out = tmp_path / "rec"
    assert _run(["rec", "pack", "--list", str(a), "--root", str(tmp_path / "a"),
                 "--out", str(out / "train")], capsys)[0] == 0
    stamp = (out / "property").stat().st_mtime_ns
    os.utime(out / "property", ns=(stamp - 10**9, stamp - 10**9))
    assert _run(["rec", "pack", "--list", str(b), "--root", str(tmp_path / "b"),
                 "--out", str(out / "val")], capsys)[0] == 0
    assert (out / "property").stat().st_mtime_ns == stamp - 10**9
    assert read_insightface(out / "val").num_classes == 3


def test_killed_writer_temporaries_are_cleaned_on_the_next_pack(tmp_path, capsys):
    out = tmp_path / "rec"
    out.mkdir()
    # a writer killed inside atomic_path (os._exit: no cleanup runs), as a killed `rec pack` is
    code = ("import os, sys; from facelt.utils.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as t:\n    t.write_bytes(b'x' * 4096)\n    os._exit(9)\n")
    for name in ("train.rec", "train.idx"):
        subprocess.run([sys.executable, "-c", code, str(out / name)], check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert len(list(out.glob(".*.tmp"))) == 2
    lst = _images(tmp_path / "imgs", [0, 1])
    assert _run(["rec", "pack", "--list", str(lst), "--root", str(tmp_path / "imgs"),
                 "--out", str(out / "train")], capsys)[0] == 0
    assert list(out.glob(".*.tmp")) == []
    assert read_insightface(out / "train").num_classes == 2


# ------------------------------------------------------------------- D: NaN / inf features
def _megaface_files(tmp_path: Path) -> dict[str, Path]:
    probes = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    np.save(tmp_path / "p.npy", probes)
    (tmp_path / "p.csv").write_text("path,identity\na/1.png,a\na/2.png,a\nb/1.png,b\nb/2.png,b\n")
    np.save(tmp_path / "d.npy", np.array([[0.5, 0.5, 0.5, 0.5], [0, 0, 0, 1], [0, 0, 0, 1]], np.float32))
    np.save(tmp_path / "t.npy", np.array([[1, 0, 0, 0]] * 3, np.float32))
    return {"p": tmp_path / "p.npy", "d": tmp_path / "d.npy", "t": tmp_path / "t.npy"}


def _megaface_argv(tmp_path: Path, files: dict[str, Path]) -> list[str]:
    return ["megaface-eval", "--gallery", "3", "--probe-features", str(files["p"]),
            "--probe-list", str(tmp_path / "p.csv"), "--distractor-features", str(files["d"]),
            "--train-features", str(files["t"]), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("which,row,value", [("d", None, np.nan), ("p", 2, np.nan), ("d", 1, np.inf),
                                             ("t", 2, -np.inf)])
def test_non_finite_features_are_refused(tmp_path, capsys, which, row, value):
    files = _megaface_files(tmp_path)
    assert _run(_megaface_argv(tmp_path, files), capsys)[0] == 0     # the clean files evaluate
    arr = np.load(files[which])
    if row is None:
        arr[:] = value                                                 # all rows NaN
    else:
        arr[row, 1] = value
    np.save(files[which], arr)
    rc, err = _run(_megaface_argv(tmp_path, files) + ["--out", str(tmp_path / "out2")], capsys)
    assert rc == 2 and str(files[which]) in err
    assert f"row(s) {0 if row is None else row}" in err
    assert ("NaN" if np.isnan(value) else "inf") in err
    assert not (tmp_path / "out2" / "report.json").exists()


# ------------------------------------------------------------------- a tiny face checkpoint
@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    from pipelines.synthetic_faces import write_synthetic_rec
    d = tmp_path_factory.mktemp("hk_faces")
    write_synthetic_rec(d / "faces" / "train", counts=[4, 3, 2], seed=3, size=32)
    over = [f"data.root={d / 'faces'}", "data.image_size=32", "data.num_workers=0",
            "model.backbone=resnet10", "model.embedding_dim=8", "device=cpu", "stage1.epochs=1",
            "stage1.batch_size=4", "stage1.max_steps_per_epoch=1"]
    sets = [a for o in over for a in ("--set", o)]
    assert cli_main(["--quiet", "train", "--config", str(ROOT / "configs" / "ms1m_lt.yaml"),
                     "--stage", "1", "--out", str(d / "run"), *sets]) == 0
    return {"dir": d, "rec": d / "faces" / "train", "ckpt": d / "run" / "stage1" / "checkpoint.pt"}


# ------------------------------------------------------------------- E: stale features
def test_repacked_source_is_re_extracted(face_run, tmp_path, capsys):
    from pipelines.synthetic_faces import write_synthetic_rec
    src = tmp_path / "dist"
    write_synthetic_rec(src / "train", counts=[2, 2, 1], seed=10, size=32)
    feats = tmp_path / "f.npy"
    argv = ["extract-features", "--checkpoint", str(face_run["ckpt"]), "--rec", str(src / "train"),
            "--out", str(feats)]
    assert _run(argv, capsys)[0] == 0
    old = np.load(feats)
    keys_before = (src / "train.idx").read_text().split("\n")
    # the same keys and labels, other pixels
    write_synthetic_rec(src / "train", counts=[2, 2, 1], seed=11, size=32)
    assert [ln.split("\t")[0] for ln in (src / "train.idx").read_text().split("\n")] == \
        [ln.split("\t")[0] for ln in keys_before]
    assert _run(argv, capsys)[0] == 0
    new = np.load(feats)
    fresh = tmp_path / "fresh.npy"
    assert _run(argv[:-1] + [str(fresh)], capsys)[0] == 0
    np.testing.assert_array_equal(new, np.load(fresh))
    assert not np.allclose(new, old)
    # an unchanged source is not extracted again (the file is left as it is)
    stamp = feats.stat().st_mtime_ns
    assert _run(argv, capsys)[0] == 0 and feats.stat().st_mtime_ns == stamp


def test_image_source_fingerprint_sees_content_and_files(tmp_path):
    from facelt.utils.fingerprint import image_source_fingerprint
    a, b, idx = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "x.idx"
    a.write_bytes(bytes(range(256)) * 40)
    b.write_bytes(b"\x01" * 5000)
    idx.write_text("1\t0\n")
    base = image_source_fingerprint([a, b], [idx], samples=8, window=512)
    assert image_source_fingerprint([a, b], [idx], samples=8, window=512) == base
    st = b.stat()
    b.write_bytes(b"\x02" * 5000)                       # same size, same mtime, other bytes
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image_source_fingerprint([a, b], [idx], samples=8, window=512) != base
    b.write_bytes(b"\x01" * 5000)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image_source_fingerprint([a, b], [idx], samples=8, window=512) == base
    idx.write_text("2\t0\n")
    assert image_source_fingerprint([a, b], [idx], samples=8, window=512) != base


# ------------------------------------------------------------------- F: config values
@pytest.mark.parametrize("override,words", [
    ("stage1.epochs=0", ["stage1.epochs", ">= 1", "got 0"]),
    ("stage2.epochs=-1", ["stage2.epochs", ">= 1", "got -1"]),
    ("stage1.batch_size=0", ["stage1.batch_size", ">= 1"]),
    ("stage2.samples_per_class=0", ["stage2.samples_per_class", ">= 1"]),
    ("eval.batch_size=0", ["eval.batch_size", ">= 1"]),
    ("stage1.backbone_lr=-0.1", ["stage1.backbone_lr", ">= 0", "-0.1"]),
    ("stage2.classifier_lr=-1", ["stage2.classifier_lr", ">= 0"]),
    ("eval.threshold=1.5", ["eval.threshold", "<= 1", "1.5"]),
    ("eval.threshold=-0.1", ["eval.threshold", ">= 0"]),
    ("eval.sweep=[0.1, 2]", ["eval.sweep[1]", "<= 1"]),
    ("stage1.weight_decay=abc", ["stage1.weight_decay", "number", "abc"]),
])
def test_config_ranges_are_checked_when_loaded(override, words, capsys, demo_data):
    from facelt.config import load_config
    from facelt.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)
    if override.startswith("stage1.epochs"):   # the CLI: exit 2 before anything is trained
        rc, err = _run(["train", "--config", str(ROOT / "configs" / "demo_list.yaml"), "--stage", "1",
                        "--out", str(demo_data.parent / "never"), "--set", override], capsys)
        assert rc == 2 and "stage1.epochs" in err and "already complete" not in err
        assert not (demo_data.parent / "never").exists()


def test_every_float_spelling_is_a_number(tmp_path):
    from facelt.config import load_config
    cfg = load_config(None, ["stage1.weight_decay=5e-4", "stage2.weight_decay=5E-2",
                             "stage1.backbone_lr=.5", "stage2.backbone_lr=1e0", "eval.threshold=+0.25",
                             "stage1.momentum=9e-1"])
    assert (cfg.stage1.weight_decay, cfg.stage2.weight_decay) == (0.0005, 0.05)
    assert (cfg.stage1.backbone_lr, cfg.stage2.backbone_lr, cfg.eval.threshold) == (0.5, 1.0, 0.25)
    assert cfg.stage1.momentum == 0.9
    p = tmp_path / "r.yaml"
    p.write_text("stage1:\n  weight_decay: 5e-2\n  classifier_lr: 1e-3\neval:\n  sweep: [1e-1, 5e-1]\n")
    cfg = load_config(p)
    assert (cfg.stage1.weight_decay, cfg.stage1.classifier_lr) == (0.05, 0.001)
    assert cfg.eval.sweep == [0.1, 0.5]


def test_extract_batch_size_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:         # refused by the parser, before any file is read
        cli_main(["extract-features", "--checkpoint", str(tmp_path / "c.pt"), "--rec",
                  str(tmp_path / "r"), "--out", str(tmp_path / "f.npy"), "--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err


# ------------------------------------------------------------------- G: messages, not tracebacks
def _demo_sets(demo_data: Path, *extra: str) -> list[str]:
    from tests.conftest import demo_overrides
    return [a for o in [*demo_overrides(demo_data), *extra] for a in ("--set", o)]


def test_damaged_checkpoints_are_named(face_run, tmp_path, capsys):
    import torch
    from facelt.models.checkpoint import FORMAT
    zero = tmp_path / "zero.pt"
    zero.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_text("this is a text file, not a checkpoint\n")
    state = torch.load(face_run["ckpt"], weights_only=True)
    del state["model"]
    nomodel = tmp_path / "nomodel.pt"
    torch.save(state, nomodel)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": FORMAT, "config": {}, "stage": 1, "num_classes": 3, "model": [1, 2]}, wrong)
    for path, words in ((zero, "empty"), (text, "not a torch checkpoint"), (nomodel, "'model'"),
                        (wrong, "'model'")):
        rc, err = _run(["extract-features", "--checkpoint", str(path), "--rec", str(face_run["rec"]),
                        "--out", str(tmp_path / "f.npy")], capsys)
        assert rc == 2 and str(path) in err and words in err, err


def test_empty_lists_are_errors(demo_data, face_run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    demo = str(ROOT / "configs" / "demo_list.yaml")
    rc, err = _run(["check", "--config", demo, *_demo_sets(demo_data, f"data.train={empty}")], capsys)
    assert rc == 2 and str(empty) in err and "train" in err and "no images" in err
    rc, err = _run(["classify", "--checkpoint", str(face_run["ckpt"]), "--config", demo,
                    *_demo_sets(demo_data, f"data.test={empty}"), "--out", str(tmp_path / "rep")],
                   capsys)
    assert rc == 2 and str(empty) in err and "test" in err and "no images" in err
    assert not (tmp_path / "rep" / "report.json").exists()


def test_binary_property_file_is_a_data_error(face_run, tmp_path):
    import shutil
    from facelt.errors import DataError
    for name in ("train.rec", "train.idx"):
        shutil.copy(face_run["rec"].parent / name, tmp_path / name)
    (tmp_path / "property").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError) as e:
        read_insightface(tmp_path / "train")
    assert str(tmp_path / "property") in str(e.value) and "num_classes,height,width" in str(e.value)


def test_unwritable_outputs_fail_before_the_work(face_run, tmp_path, capsys):
    files = _megaface_files(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    argv = _megaface_argv(tmp_path, files)
    rc, err = _run(argv[:-1] + [str(a_file)], capsys)
    assert rc == 2 and str(a_file) in err and "is a file" in err
    assert a_file.read_text() == "keep me"
    rc, err = _run(argv[:-1] + [str(a_file / "sub")], capsys)
    assert rc == 2 and "a_file" in err
    # extract-features --out that is a folder: refused before the checkpoint is even read
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    rc, err = _run(["extract-features", "--checkpoint", str(tmp_path / "missing.pt"), "--rec",
                    str(face_run["rec"]), "--out", str(folder)], capsys)
    assert rc == 2 and str(folder) in err and "is a folder" in err
    rc, err = _run(["train", "--config", str(ROOT / "configs" / "demo_list.yaml"), "--stage", "1",
                    "--out", str(a_file)], capsys)
    assert rc == 2 and str(a_file) in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder_fails_before_the_evaluation(tmp_path, capsys):
    files = _megaface_files(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = _run(_megaface_argv(tmp_path, files)[:-1] + [str(ro)], capsys)
    finally:
        ro.chmod(0o755)
    assert rc == 2 and str(ro) in err and "not writable" in err


def test_ensure_writable_helpers(tmp_path):
    from facelt.errors import OutputError
    from facelt.utils.io import ensure_writable_dir, ensure_writable_file
    assert ensure_writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        ensure_writable_dir(tmp_path / "f", "--out")
    with pytest.raises(OutputError, match="a parent of it is a file"):
        ensure_writable_dir(tmp_path / "f" / "g", "--out")
    with pytest.raises(OutputError, match="is a folder"):
        ensure_writable_file(tmp_path / "a", "--out")
    assert ensure_writable_file(tmp_path / "new" / "x.npy", "--out") == tmp_path / "new" / "x.npy"
    assert list((tmp_path / "a" / "b").iterdir()) == []          # the probe file is gone


# ------------------------------------------------------------------- H: check, grey models
def _demo_copy(demo_data: Path, tmp_path: Path) -> Path:
    import shutil
    data = tmp_path / "d"
    shutil.copytree(demo_data, data)
    return data


def _check(data: Path, *extra: str) -> list[str]:
    return ["check", "--config", str(ROOT / "configs" / "demo_list.yaml"), *_demo_sets(data), *extra]


def test_check_prints_a_table_and_says_what_it_did_not_check(demo_data, capsys):
    rc = cli_main(_check(demo_data))
    out = capsys.readouterr().out
    assert rc == 0 and "{" not in out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["split", "images", "classes"]
    test_row = next(ln for ln in lines if ln.startswith("test "))
    assert test_row.split() == ["test", "36", "6", "6..6"]        # 6 classes x 6 images
    assert "not decoded" in out
    assert cli_main(_check(demo_data, "--decode")) == 0
    assert "every image decodes" in capsys.readouterr().out


def test_check_reports_folders_undecodable_images_and_unknown_train_classes(demo_data, tmp_path, capsys):
    data = _demo_copy(demo_data, tmp_path)
    img = data / "images" / "test" / "id002" / "0001.png"
    img.unlink()
    img.mkdir()                                               # a folder where an image is listed
    rc, err = _run(_check(data), capsys)
    assert rc == 2 and str(img) in err and "is a folder" in err
    img.rmdir()
    img.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder accepts")
    assert _run(_check(data), capsys)[0] == 0                 # existence only: says so
    rc, err = _run(_check(data, "--decode"), capsys)
    assert rc == 2 and str(img) in err and "cannot be decoded" in err
    img.write_bytes((demo_data / "images" / "test" / "id002" / "0001.png").read_bytes())
    train = data / "demo_train.txt"
    lines = train.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 6"              # classes are 0..5 in val/test
    train.write_text("\n".join(lines) + "\n")
    rc, err = _run(_check(data), capsys)
    assert rc == 2 and "label 6" in err and "0..5" in err and lines[0].rsplit(" ", 1)[0] in err


def test_check_walks_the_whole_idx_and_rec(face_run, tmp_path, capsys):
    import shutil
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(face_run["rec"].parent / name, rec_dir / name)
    argv = ["check", "--config", str(ROOT / "configs" / "ms1m_lt.yaml"), "--data-root", str(rec_dir),
            "--set", "data.image_size=32"]              # the rec's size (property 3,32,32)
    assert _run(argv, capsys)[0] == 0
    idx = (rec_dir / "train.idx").read_text().splitlines()
    key, off = idx[5].split("\t")
    idx[5] = f"{key}\t{int(off) + 4}"                        # an entry pointing inside a record
    (rec_dir / "train.idx").write_text("\n".join(idx) + "\n")
    rc, err = _run(argv, capsys)
    assert rc == 2 and "train.idx" in err and f"key {key}" in err and "not the start of a record" in err
    shutil.copy(face_run["rec"].parent / "train.idx", rec_dir / "train.idx")
    # a damaged payload (the JPEG's bytes) passes the framing walk but not --decode
    reader_off = int(idx[6].split("\t")[1])
    data = bytearray((rec_dir / "train.rec").read_bytes())
    data[reader_off + 8 + 24: reader_off + 8 + 24 + 64] = b"\0" * 64    # past the IR header
    (rec_dir / "train.rec").write_bytes(bytes(data))
    assert _run(argv, capsys)[0] == 0
    rc, err = _run(argv + ["--decode"], capsys)
    assert rc == 2 and "train.rec" in err and "decode" in err
    # a broken magic word: the framing walk names the record
    data[reader_off:reader_off + 4] = b"XXXX"
    (rec_dir / "train.rec").write_bytes(bytes(data))
    rc, err = _run(argv, capsys)
    assert rc == 2 and "bad magic word" in err and "train.rec" in err


def test_rec_features_decode_to_the_models_channels(face_run):
    from facelt.features.extract import dataset_for
    from facelt.config import load_config
    from facelt.data.recordio import RecordReader, insightface_paths
    rec, idx, _ = insightface_paths(face_run["rec"])
    grey_cfg = load_config(None, ["data.channels=1"])
    ds, rows = dataset_for(grey_cfg, rec=str(face_run["rec"]))
    x = ds[0][0]
    _, payload = RecordReader(rec, idx).read_unpacked(int(ds.keys[0]))
    grey = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert tuple(x.shape) == (1, *grey.shape)
    np.testing.assert_allclose(x[0].numpy(), grey / 127.5 - 1.0, atol=1e-6)
    colour, _ = dataset_for(load_config(None, []), rec=str(face_run["rec"]))
    assert colour[0][0].shape[0] == 3
