"""Issue 20 (hard knocks, round three), hostile files: a verification .bin, an image, a RecordIO
file, a YAML recipe, an extraction's progress file or a report.json made to exhaust memory, to
change library state or to crash a reader ends in a FaceltError naming the file and what is wrong
(exit 2, no traceback), before anything large is allocated."""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelt.cli import main as cli_main
from facelt.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def limited_python(code: str, mem_mb: int = 1200, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose data segment (heap and private anonymous maps) is
    capped at ``mem_mb`` MiB, so a reader that allocates what a hostile file declares fails here
    instead of exhausting the machine."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (mem_mb << 20, mem_mb << 20))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap, env=env, cwd=str(ROOT))


# ------------------------------------------------------------------------- pickle opcodes by hand

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _bytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def _dtype(flags: int = 0) -> bytes:
    """numpy.dtype('u1', False, True) then BUILD with its state, ``flags`` as the dtype flags."""
    return (_global("numpy", "dtype") + _unicode("u1") + b"\x89\x88\x87R" + b"(" + _int(3)
            + _unicode("|") + b"NNN" + _int(-1) + _int(-1) + _int(flags) + b"tb")


def _pair_list(first_image: bytes, flags: bytes = b"(\x88l") -> bytes:
    """A protocol-3 pickle of ``([first_image, b'b'], [True])`` from raw opcodes."""
    return b"\x80\x03(" + first_image + _bytes(b"b") + b"l" + flags + b"\x86."


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_a_50_byte_bin_declaring_a_10_gb_array_is_refused_before_allocating(tmp_path):
    # numpy.ndarray(shape=(10**10,), dtype=uint8, buffer=b'x', offset=0, strides=(0,)): a view of
    # one byte that claims 10 GB; the reader used to copy it (tobytes) and exhaust memory
    stride0 = (_global("numpy", "ndarray") + b"((" + _long(10 ** 10) + b"t" + _dtype()
               + _bytes(b"x") + _int(0) + b"(" + _int(0) + b"ttR")
    # an array whose BUILD state claims 10**10 elements over 1 byte of data
    claimed = (_global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
               + _int(0) + b"\x85" + _bytes(b"b") + b"\x87R" + b"(" + _int(1) + _long(10 ** 10)
               + b"\x85" + _dtype() + b"\x89" + _bytes(b"x") + b"tb")
    # BINBYTES8 declaring 10 GB in a short file, and a memo index of 2**32 - 1 (the C unpickler
    # sizes its memo table by the index it is given)
    bytes8 = b"\x80\x04\x8e" + struct.pack("<Q", 10 ** 10) + b"xy."
    memo = b"\x80\x03(" + _bytes(b"a") + b"r" + struct.pack("<I", 2 ** 32 - 1) + _bytes(b"b") + b"l(\x88l\x86."
    paths = [_write(tmp_path, n, d) for n, d in (("stride0.bin", _pair_list(stride0)),
                                                  ("claimed.bin", _pair_list(claimed)),
                                                  ("bytes8.bin", bytes8), ("memo.bin", memo))]
    assert all(p.stat().st_size < 300 for p in paths)
    r = limited_python(f"""
        from facelt.errors import DataError
        from facelt.faces.verification import read_bin
        for p in {[str(p) for p in paths]!r}:
            try:
                read_bin(p)
            except DataError as exc:
                print("REFUSED", exc)
            else:
                print("LOADED", p)
        """, mem_mb=1500)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(ln.startswith("REFUSED") for ln in lines), r.stdout
    for ln, p in zip(lines, paths):
        assert p.name in ln and "MemoryError" not in ln
    assert "numpy.ndarray" in lines[0] and "refused" in lines[0]
    assert "10000000000" in lines[1]                      # the size the state claims
    assert "10000000000" in lines[2]                      # the size BINBYTES8 declares
    assert "memo" in lines[3]


def test_build_on_an_allowed_dtype_cannot_rewrite_numpy_state(tmp_path):
    """BUILD on numpy.dtype used to set the dtype's flags (here: 'holds Python objects'), after
    which numpy failed with internal errors; only the exact state of uint8 / bool is accepted."""
    arr = (_global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray") + _int(0)
           + b"\x85" + _bytes(b"b") + b"\x87R" + b"(" + _int(1) + _int(2) + b"\x85" + _dtype(flags=1)
           + b"\x89" + _bytes(b"\x01\x01") + b"tb")
    path = _write(tmp_path, "dtype.bin", b"\x80\x03(" + _bytes(b"a") + _bytes(b"b") + b"l" + arr + b"\x86.")
    r = limited_python(f"""
        import numpy as np
        from facelt.errors import DataError
        from facelt.faces.verification import read_bin
        try:
            read_bin({str(path)!r})
        except DataError as exc:
            print("REFUSED", exc)
        a = np.zeros(4, np.uint8) + np.uint8(3)
        print("NUMPY OK", int(a.sum()), np.dtype("u1").flags)
        """)
    assert r.returncode == 0 and "Internal error" not in r.stderr, r.stderr
    assert "REFUSED" in r.stdout and "dtype.bin" in r.stdout and "state" in r.stdout
    assert "NUMPY OK 12 0" in r.stdout


class _Call:
    """Pickles as a call of ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_the_allow_list_holds_constructors_that_change_no_state(tmp_path):
    from facelt.faces.verification import read_bin
    from facelt.faces import bin_pickle
    good = tmp_path / "good.bin"
    good.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=2))
    cases = {
        # calling an allowed class or function other than as numpy's pickles do
        "ndarray_call.bin": pickle.dumps(([_Call(np.ndarray, (4,)), b"b"], [True]), protocol=2),
        # BUILD on an allowed global (it would set attributes of the allow-list's callables)
        "build_global.bin": b"\x80\x03(" + _global("numpy", "dtype") + b"(" + _unicode("x")
                            + _int(1) + b"tb" + _bytes(b"b") + b"l(\x88l\x86.",
        # opcodes that instantiate classes or reach the extension registry
        "newobj.bin": b"\x80\x03" + _global("numpy", "dtype") + b")\x81.",
        "inst.bin": b"(" + b"inumpy\ndtype\n.",
        "ext.bin": b"\x80\x03\x82\x01.",
        "dict.bin": b"\x80\x03}" + _unicode("k") + _bytes(b"v") + b"s.",
        # a second BUILD on a finished dtype, and an array built twice
        "rebuild.bin": b"\x80\x03(" + _bytes(b"a") + _bytes(b"b") + b"l(" + _dtype()
                       + b"(" + _int(3) + _unicode("|") + b"NNN" + _int(-1) + _int(-1) + _int(0)
                       + b"tbl\x86.",
        # objects never found in a verification set
        "object_dtype.bin": pickle.dumps(([np.array([b"x"], dtype=object), b"y"], [True]), protocol=4),
        "float_dtype.bin": pickle.dumps(([np.zeros(3, np.float64), b"y"], [True]), protocol=2),
        "subclass.bin": pickle.dumps(([np.zeros(3, np.uint8).view(np.recarray), b"y"], [True]),
                                     protocol=2),
    }
    before = {k: v for k, v in vars(bin_pickle).items() if not k.startswith("__")}
    for name, data in cases.items():
        p = _write(tmp_path, name, data)
        with pytest.raises(DataError, match=rf"{name}.*refused") as info:
            read_bin(p)
        assert "Internal error" not in str(info.value)
    after = {k: v for k, v in vars(bin_pickle).items() if not k.startswith("__")}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    for g in bin_pickle.ALLOWED_GLOBALS.values():  # nothing was set on the callables
        assert not hasattr(g, "__dict__") or not vars(g)
    assert read_bin(good)[0] == [b"a", b"b"]


def test_every_numpy_flavour_still_loads(tmp_path):
    from facelt.faces.verification import read_bin
    img = np.arange(30, dtype=np.uint8).reshape(30, 1)
    for proto in (2, 3, 4, 5):
        p = tmp_path / f"p{proto}.bin"
        p.write_bytes(pickle.dumps(([img, img[:, 0].copy()], np.array([True])), protocol=proto))
        bins, same = read_bin(p)
        assert bins == [img.tobytes(), img.tobytes()] and same.tolist() == [True]
        p.write_bytes(pickle.dumps(([img, b"x"], [np.bool_(False)]), protocol=proto))
        assert read_bin(p)[1].tolist() == [False]


# ----------------------------------------------------------------------------------- images

def _png_header_only(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width x height`` followed by one short IDAT: decoding it would
    allocate the whole declared image first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def _small_png(seed: int = 0, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))[1].tobytes()


def test_an_image_declaring_1_2_gb_is_refused_from_its_header(tmp_path):
    bomb = _png_header_only(20000, 20000)  # 20000 x 20000 RGB = 1.2 GB decoded
    assert len(bomb) < 200
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bomb.png").write_bytes(bomb)
    binf = tmp_path / "bomb.bin"
    binf.write_bytes(pickle.dumps(([_small_png(), bomb], [True]), protocol=4))
    r = limited_python(f"""
        from facelt.errors import DataError
        from facelt.faces.verification import VerificationSet
        from facelt.data.rec_dataset import decode_image
        from facelt.features.embed import files_source
        from facelt.data.images import load_image
        bomb = open({str(tmp_path / "imgs" / "bomb.png")!r}, "rb").read()
        for what, call in (
                ("bin", lambda: VerificationSet.load({str(binf)!r})),
                ("record", lambda: decode_image(bomb, where="x.rec record 7")),
                ("file", lambda: files_source([{str(tmp_path / "imgs" / "bomb.png")!r}]).read(0)),
                ("pil", lambda: load_image({str(tmp_path / "imgs" / "bomb.png")!r}, "RGB", "line 3"))):
            try:
                call()
            except DataError as exc:
                print("REFUSED", what, exc)
            else:
                print("DECODED", what)
        """, mem_mb=1000)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["REFUSED", w] for w in ("bin", "record", "file", "pil")], r.stdout
    for ln in lines:
        assert "20000x20000" in ln, ln
    assert "bomb.bin" in lines[0] and "image 1" in lines[0]
    assert "x.rec record 7" in lines[1] and "bomb.png" in lines[2] and "line 3" in lines[3]


def test_an_empty_image_inside_a_bin_is_named(tmp_path, capsys):
    from facelt.faces.verification import VerificationSet
    p = tmp_path / "empty.bin"
    p.write_bytes(pickle.dumps(([_small_png(0), b"", _small_png(1), _small_png(2)],
                                [True, False]), protocol=4))
    with pytest.raises(DataError, match=r"empty\.bin: image 1\b.*empty"):
        VerificationSet.load(p)
    from facelt.data.rec_dataset import decode_image
    with pytest.raises(DataError, match=r"rec key 3.*empty"):
        decode_image(b"", where="rec key 3")


def test_an_empty_image_in_a_verification_set_stops_training_before_it_starts(tmp_path, capsys):
    from pipelines.synthetic_faces import write_synthetic_rec
    d = tmp_path / "faces"
    write_synthetic_rec(d / "train", counts=[3, 3], seed=1, size=16)
    bins = [_small_png(i, 16) for i in range(20)]
    bins[5] = b""
    (d / "lfw.bin").write_bytes(pickle.dumps((bins, [True, False] * 5), protocol=4))
    over = [f"data.root={d}", "data.format=rec", "data.train=train", "data.image_size=16",
            "data.num_workers=0", "device=cpu", "model.backbone=small_cnn", "model.neck=face",
            "model.embedding_dim=8", "stage1.epochs=1", "stage1.head=linear",
            "eval.verification=[lfw]"]
    out = tmp_path / "run"
    rc, err = _run(["train", "--config", str(ROOT / "configs" / "demo_faces.yaml"), "--stage", "1",
                    "--out", str(out)] + [a for o in over for a in ("--set", o)], capsys)
    assert rc == 2 and "lfw.bin" in err and "image 5" in err and "empty" in err
    assert not (out / "stage1" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------- YAML

def _config(tmp_path, text, capsys, name="recipe.yaml") -> tuple[int, str]:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _run(["config", "--config", str(p)], capsys)


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_lines(tmp_path, capsys):
    rc, err = _config(tmp_path, "name: a\nstage1:\n  epochs: 2\n  lr: 0.1\n  epochs: 5\n", capsys)
    assert rc == 2 and "recipe.yaml" in err and "'stage1.epochs'" in err
    assert "lines 3 and 5" in err
    rc, err = _config(tmp_path, "seed: 1\nname: a\nseed: 2\n", capsys)
    assert rc == 2 and "'seed'" in err and "lines 1 and 3" in err
    rc, err = _run(["config", "--dataset", "demo_list", "--set", "stage1={epochs: 1, epochs: 2}"],
                   capsys)
    assert rc == 2 and "--set stage1" in err and "'epochs'" in err
    # a merge key is not a duplicate: explicit keys override the merged ones, as YAML says
    rc, err = _config(tmp_path, "stage1: &s {epochs: 3, batch_size: 4}\n"
                                "stage2:\n  <<: *s\n  epochs: 7\n", capsys)
    assert rc == 0, err


def _alias_bomb(levels: int = 9) -> str:
    """The billion-laughs shape: each list holds 9 aliases of the previous one (9**9 strings)."""
    names = "abcdefghijkl"
    items = ['&a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        items.append(f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


def test_a_1_kb_alias_bomb_is_refused_with_its_expansion_bounded(tmp_path, capsys):
    text = f"seed: {_alias_bomb()}\n"
    assert len(text) < 1024
    r = limited_python(f"""
        from facelt.cli import main
        import sys
        sys.exit(main(["config", "--config", {str(_write(tmp_path, "bomb.yaml", text.encode()))!r}]))
        """, mem_mb=1500, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "bomb.yaml" in r.stderr and "alias" in r.stderr and "nodes" in r.stderr
    rc, err = _config(tmp_path, "name: &a [x, *a]\n", capsys, "loop.yaml")
    assert rc == 2 and "loop.yaml" in err and "recursive" in err


def test_non_utf8_deep_and_huge_yaml_are_named(tmp_path, capsys):
    rc, err = _config(tmp_path, b"name: caf\xe9\nseed: 1\n", capsys, "latin1.yaml")
    assert rc == 2 and "latin1.yaml" in err and "UTF-8" in err and "line 1" in err
    rc, err = _config(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n", capsys, "deep.yaml")
    assert rc == 2 and "deep.yaml" in err and "nested" in err
    rc, err = _config(tmp_path, "seed: " + "9" * 5000 + "\n", capsys, "digits.yaml")
    assert rc == 2 and "digits.yaml" in err and "seed" in err
    rc, err = _config(tmp_path, "name: a\n" + "#" * (2 << 20) + "\n", capsys, "big.yaml")
    assert rc == 2 and "big.yaml" in err and "bytes" in err
    # an error shows a value briefly, not the whole of it
    rc, err = _config(tmp_path, "seed: [" + ", ".join(["1"] * 5000) + "]\n", capsys, "long.yaml")
    assert rc == 2 and "long.yaml" in err and len(err) < 600


# -------------------------------------------------------------------------------- RecordIO

def _synthetic_rec(tmp_path):
    from facelt.data.recordio import RecordReader
    from pipelines.synthetic_faces import write_synthetic_rec
    d = tmp_path / "rec"
    write_synthetic_rec(d / "train", counts=[3, 3, 2], seed=2, size=16)
    with RecordReader(d / "train.rec", d / "train.idx") as r:
        offsets = dict(zip(r.keys.tolist(), r.offsets.tolist()))
    # record 0, images 1..8, identity records 9..11
    assert sorted(offsets) == list(range(12))
    return d, offsets


def test_a_rec_cut_at_a_record_boundary_is_said_to_be_truncated(tmp_path, capsys):
    d, offsets = _synthetic_rec(tmp_path)
    rec, idx = d / "train.rec", d / "train.idx"
    full_rec, full_idx = rec.read_bytes(), idx.read_bytes()
    rec.write_bytes(full_rec[:offsets[5]])   # the .idx still lists 12 records
    rc, err = _run(["rec", "inspect", str(d / "train")], capsys)
    assert rc == 2 and "train.rec" in err and "truncated" in err and "7 of the 12" in err
    from facelt.data.recordio import read_insightface
    with pytest.raises(DataError, match=r"train\.rec.*truncated.*7 of the 12"):
        read_insightface(d / "train")
    # both cut alike (an interrupted copy of both): record 0's identity range says 12 records
    idx.write_bytes(b"".join(ln + b"\n" for ln in full_idx.splitlines()[:5]))
    rc, err = _run(["rec", "inspect", str(d / "train")], capsys)
    assert rc == 2 and "truncated" in err and "record 0" in err and "12 records" in err
    with pytest.raises(DataError, match=r"truncated.*record 0.*12 records"):
        read_insightface(d / "train")
    # no .idx at all: counted by walking the framing
    idx.unlink()
    rc, err = _run(["rec", "inspect", str(d / "train")], capsys)
    assert rc == 2 and "truncated" in err and "12 records" in err and "5" in err
    # the whole file again: listed, exit 0
    rec.write_bytes(full_rec)
    idx.write_bytes(full_idx)
    capsys.readouterr()
    assert cli_main(["rec", "inspect", str(d / "train"), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 12


def test_a_property_that_disagrees_with_record_0_is_named(tmp_path, capsys):
    d, _ = _synthetic_rec(tmp_path)
    (d / "property").write_text("5,16,16")
    rc, err = _run(["rec", "inspect", str(d / "train")], capsys)
    assert rc == 2 and "property" in err and "5 classes" in err and "3" in err


# ---------------------------------------------------------------------- feature extraction files

def _rows_embed(x):
    return np.asarray(x, np.float32)


def _killed_after(batches, n_ok):
    def gen():
        for i, b in enumerate(batches):
            if i == n_ok:
                raise KeyboardInterrupt
            yield b
    return gen()


def _feature_batches(rows=12, dim=4, size=3, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32) + 0.1
    return x, [x[a:a + size] for a in range(0, rows, size)]


def test_a_tampered_progress_file_never_finalises_unwritten_rows(tmp_path):
    from facelt.features.files import extract_features, partial_path
    x, batches = _feature_batches()
    out = tmp_path / "f.npy"
    progress = tmp_path / "f.npy.progress.json"
    with pytest.raises(KeyboardInterrupt):
        extract_features(_rows_embed, _killed_after(batches, 1), out, 12, 4, flip=False)
    good = json.loads(progress.read_text())
    assert good["rows_done"] == 3
    # the progress file claims every row: the partial file holds 3; it used to finalise 9 rows
    # of zeros and exit 0
    progress.write_text(json.dumps({**good, "rows_done": 12}))
    with pytest.raises(DataError, match=r"f\.npy\.progress\.json.*rows"):
        extract_features(_rows_embed, iter(batches), out, 12, 4, flip=False)
    assert not out.exists() and partial_path(out).exists()
    for bad in ("{not json", "[1, 2]", json.dumps({**good, "rows_done": "3"}),
                json.dumps({**good, "rows_done": -3}), json.dumps({**good, "rows_done": 1e30}),
                json.dumps({**good, "rows_done": 13}), json.dumps({**good, "last_crc32": 1})):
        progress.write_text(bad)
        with pytest.raises(DataError, match=r"f\.npy\.progress\.json"):
            extract_features(_rows_embed, iter(batches), out, 12, 4, flip=False)
        assert not out.exists()
    # the untampered record resumes, and the file equals a run that was never killed
    progress.write_text(json.dumps(good))
    extract_features(_rows_embed, iter(batches), out, 12, 4, flip=False)
    want = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-6)
    # a tampered .source.json is not a finished file of this source (no traceback)
    src = tmp_path / "f.npy.source.json"
    src.write_text("[1, 2, 3]")
    from facelt.features.files import finished_with
    assert finished_with(out, "anything") is False


def test_tampered_rank_progress_files_are_named(tmp_path):
    from facelt.features.distributed import check_shares_done, rank_progress_path
    out = tmp_path / "f.npy"
    rank_progress_path(out, 0).write_text("{broken")
    with pytest.raises(DataError, match=r"progress\.rank0\.json"):
        check_shares_done(out, 12, 3, 2)
    rank_progress_path(out, 0).write_text(json.dumps({"start": 0, "stop": 6, "rows_done": [6]}))
    with pytest.raises(DataError, match=r"progress\.rank0\.json"):
        check_shares_done(out, 12, 3, 2)


def test_reserving_the_feature_file_reports_a_full_disk(tmp_path, monkeypatch):
    import errno
    from facelt.errors import OutputError
    from facelt.features.files import extract_features, partial_path
    x, batches = _feature_batches()

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    out = tmp_path / "f.npy"
    with pytest.raises(OutputError, match=r"f\.npy\.partial.*No space left.*[0-9,]+ bytes"):
        extract_features(_rows_embed, iter(batches), out, 12, 4, flip=False)
    assert not partial_path(out).exists() and not out.exists()


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    try:
        r = subprocess.run(["unshare", "-r", "-m", "sh", "-c",
                            f"mount -t tmpfs -o size=64k tmpfs {where}"], capture_output=True,
                           timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def test_a_full_disk_during_extraction_is_an_error_not_sigbus(tmp_path):
    """On a 1 MiB file system, a 4 MiB feature file used to be created sparse and mapped; the
    first write past the free space killed the process with SIGBUS."""
    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a small tmpfs here (unshare -r -m)")
    code = textwrap.dedent(f"""
        import numpy as np
        from facelt.errors import FaceltError
        from facelt.features.files import extract_features
        x = np.ones((2048, 512), np.float32)
        try:
            extract_features(lambda b: b, iter([x[a:a + 256] for a in range(0, 2048, 256)]),
                             {str(mnt / "f.npy")!r}, 2048, 512, flip=False)
        except FaceltError as exc:
            print("REFUSED", exc)
        """)
    script = tmp_path / "fill.py"
    script.write_text(code)
    r = subprocess.run(["unshare", "-r", "-m", "sh", "-c",
                        f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
                        f"PYTHONPATH={ROOT} {sys.executable} {script}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "REFUSED" in r.stdout and "f.npy.partial" in r.stdout and "4,194,432 bytes" in r.stdout


def test_a_full_disk_while_writing_a_small_file_keeps_the_old_copy(tmp_path, monkeypatch):
    import errno
    from facelt.errors import OutputError
    from facelt.utils.io import write_json
    target = tmp_path / "f.npy.progress.json"
    write_json(target, {"rows_done": 3})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"f\.npy\.progress\.json: No space left"):
        write_json(target, {"rows_done": 6})
    assert json.loads(target.read_text()) == {"rows_done": 3}
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ----------------------------------------------------------------------------- report.json

def _report_tree(root: Path) -> Path:
    """One report of each kind `facelt report` rewrites, as facelt writes them."""
    from eval_megaface.report import write_report
    from facelt.jobs.demo_report import write_demo_summary
    closed = {"overall": 0.5, "many": 0.6, "medium": 0.5, "few": 0.25}
    opened = dict(closed, f_measure=0.4)
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "report.json").write_text(json.dumps({
        "closed_set": closed, "open_set": opened, "threshold": 0.1, "stage": 2,
        "per_class": [{"class": k, "train_count": 5 + k, "accuracy": 0.5} for k in range(4)],
        "threshold_sweep": [{"threshold": 0.1, "f_measure": 0.4, "closed_accuracy_known": 0.5,
                             "open_rejection": 0.2}]}))
    ps = {b: {"rank1": 0.5, "probes": 3} for b in ("many", "few", "one", "zero")}
    mf = {"gallery": 10, "rank1": 0.8, "trials": 4, "cmc": [0.8] * 10, "pseudo_shots": ps,
          "meta": {"stage": 2, "pseudo_shot_threshold": 0.7}}
    write_report(mf, root / "mf")
    (root / "cmp").mkdir()
    (root / "cmp" / "report.json").write_text(json.dumps({
        "recipe": "r.yaml", "threshold": 0.1, "protocol": "p", "shot_rule": "s",
        "methods": {"plain": {"closed_set": closed, "open_set": opened}}}))
    manifest = {"totals": {"images": 10, "identities": 3}, "C": 2.0,
                "shots": {"many": 0, "medium": 1, "few": 2}}
    (root / "demo").mkdir()
    write_demo_summary(root / "demo", manifest, {s: {"closed_set": closed, "open_set": opened}
                                                 for s in (1, 2)}, mf, 12.0)
    return root


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tamper(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


TAMPERINGS = [
    ("cls", lambda r: r.pop("closed_set"), "closed_set"),
    ("cls", lambda r: r["closed_set"].update(overall="high"), "closed_set.overall"),
    ("cls", lambda r: r.update(threshold="a"), "threshold"),
    ("cls", lambda r: r.update(per_class=5), "per_class"),
    ("cls", lambda r: r["per_class"][1].pop("train_count"), "per_class[1].train_count"),
    ("cls", lambda r: r["per_class"][2].update(train_count=10 ** 400), "per_class[2].train_count"),
    ("cls", lambda r: r.update(threshold_sweep=[{"f_measure": 0.1}]), "threshold_sweep[0].threshold"),
    ("cls", lambda r: r["threshold_sweep"].append({"threshold": 0.2}), None),  # keys may be absent
    ("mf", lambda r: r.update(gallery="ten"), "gallery"),
    ("mf", lambda r: r.update(cmc=[0.8]), "cmc"),
    ("mf", lambda r: r.update(meta=[1]), "meta"),
    ("mf", lambda r: r["pseudo_shots"].update(many=3), "pseudo_shots.many"),
    ("mf", lambda r: r.update(results=[{"gallery": 10}]), "results[0].trials"),
    ("cmp", lambda r: r.update(methods=[]), "methods"),
    ("cmp", lambda r: r["methods"]["plain"].update(open_set=None), "methods.plain.open_set"),
    ("demo", lambda r: r["classify"].pop("2"), "classify.2"),
    ("demo", lambda r: r["classify"].update(x=r["classify"]["1"]), "classify.x"),
    ("demo", lambda r: r["manifest"].update(C="x"), "manifest.C"),
    ("demo", lambda r: r.pop("total_seconds"), "total_seconds"),
    ("demo", lambda r: r.update(verification={"pairs": 4}), "verification.positive"),
]


@pytest.mark.parametrize("where, change, key", TAMPERINGS)
def test_report_on_a_tampered_report_names_the_file_and_key(tmp_path, capsys, where, change, key):
    root = _report_tree(tmp_path / "runs")
    name = "demo_summary.json" if where == "demo" else "report.json"
    _tamper(root / where / name, change)
    before = _snapshot(root)
    rc, err = _run(["report", str(root)], capsys)
    if key is None:
        assert rc == 0, err
        return
    assert rc == 2, err
    assert str(root / where / name) in err and f"'{key}'" in err, err
    assert _snapshot(root) == before  # refused before any report.md was rewritten


def test_report_on_unreadable_json_is_named(tmp_path, capsys):
    root = _report_tree(tmp_path / "runs")
    for where, name, data in (("cls", "report.json", b'{"closed_set": "caf\xe9"}'),
                              ("cmp", "report.json", b"[" * 100000 + b"]" * 100000),
                              ("demo", "demo_summary.json", b"{not json")):
        good = (root / where / name).read_bytes()
        (root / where / name).write_bytes(data)
        rc, err = _run(["report", str(root)], capsys)
        assert rc == 2 and str(root / where / name) in err, err
        (root / where / name).write_bytes(good)
    assert _run(["report", str(root)], capsys)[0] == 0


def _seed_reports(root: Path) -> None:
    from facelt.compare.report import COLUMNS
    for seed, v in ((0, 0.25), (1, 0.75)):
        cols = {k: v for _, k in COLUMNS}
        rep = {"recipe": "r.yaml", "weights": "best", "threshold": 0.1, "protocol": "p",
               "shot_rule": "s",
               "methods": {m: {"closed_set": dict(cols), "open_set": dict(cols)}
                           for m in ("plain", "oltr")}}
        (root / f"seed{seed}").mkdir(parents=True)
        (root / f"seed{seed}" / "report.json").write_text(json.dumps(rep))


def test_report_regenerates_a_seeds_summary_and_refuses_a_tampered_seed(tmp_path, capsys):
    from facelt.compare.seeds import summarize_seed_folders
    root = tmp_path / "cmp"
    _seed_reports(root)
    summarize_seed_folders(root, [0, 1])
    (root / "report.md").unlink()
    rc, err = _run(["report", str(root)], capsys)       # the summary's report.json too
    assert rc == 0, err
    assert "| oltr | 50.00 ± 35.36 |" in (root / "report.md").read_text()
    _tamper(root / "seed1" / "report.json", lambda r: r["methods"]["oltr"].pop("open_set"))
    with pytest.raises(DataError, match=r"seed1/report\.json.*'methods\.oltr\.open_set'"):
        summarize_seed_folders(root, [0, 1])


# ------------------------------------------------------------------ the CLI's catch-all for bugs

def test_a_bug_is_an_internal_error_with_what_to_report(tmp_path, capsys, monkeypatch):
    from facelt.cli import config_cmd

    def broken(args):
        raise RuntimeError("boom in the library")

    monkeypatch.setattr(config_cmd, "run", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("FACELT_DEBUG", raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    capsys.readouterr()
    rc = cli_main(["config", "--dataset", "demo_list"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("facelt config: internal error: RuntimeError: boom in the library")
    assert "please report it with the command line and this traceback" in lines[0]
    saved = Path(lines[0].rsplit(" ", 1)[-1])
    assert saved.parent == tmp_path and saved.is_file()
    text = saved.read_text()
    assert "Traceback" in text and "boom in the library" in text
    assert "config --dataset demo_list" in text  # the command line is in the file
    # FACELT_DEBUG=1 prints the traceback as well
    monkeypatch.setenv("FACELT_DEBUG", "1")
    rc = cli_main(["config", "--dataset", "demo_list"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "internal error" in err


def test_one_byte_and_short_images_are_named(tmp_path):
    """Found by the fuzz test: a header parser that raised struct.error on a 1-byte image."""
    from facelt.data.decode import imdecode
    for payload in (b"\x00", b"\x89", b"\xff\xd8", b"BM", b"II*\x00", b"GIF8"):
        with pytest.raises(DataError, match="record 4"):
            imdecode(payload, cv2.IMREAD_COLOR, "record 4")


def test_found_by_fuzzing_feature_headers_ijb_text_and_cmc(tmp_path, capsys):
    from facelt.features.files import FeatureFile
    np.save(tmp_path / "f.npy", np.zeros((6, 4), np.float32))
    raw = bytearray((tmp_path / "f.npy").read_bytes())
    raw[20:24] = b"((((" # the header is a Python literal numpy parses: now an unclosed one
    (tmp_path / "f.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"f\.npy: not a valid \.npy"):
        FeatureFile.open(tmp_path / "f.npy")
    from facelt.faces.ijb import read_landmarks
    (tmp_path / "lm.txt").write_bytes(b"a.jpg " + b"1 " * 10 + b"0.9\nb\xff.jpg " + b"1 " * 10 + b"1\n")
    with pytest.raises(DataError, match=r"lm\.txt: not UTF-8 text: byte 0xff at line 2, column 2"):
        read_landmarks(tmp_path / "lm.txt")
    root = _report_tree(tmp_path / "runs")
    _tamper(root / "mf" / "report.json", lambda r: r["cmc"].__setitem__(3, None))
    rc, err = _run(["report", str(root)], capsys)
    assert rc == 2 and "'cmc[3]'" in err


def test_report_leaves_every_report_json_as_it_was(tmp_path, capsys):
    root = _report_tree(tmp_path / "runs")
    _tamper(root / "mf" / "report.json", lambda r: r.update(rank1=0.81234567891))
    before = {p: p.read_bytes() for p in root.rglob("*.json")}
    assert _run(["report", str(root)], capsys)[0] == 0
    assert {p: p.read_bytes() for p in root.rglob("*.json")} == before


def test_declared_sizes_are_those_of_the_written_images():
    import io as _io
    from PIL import Image
    from facelt.data.decode import encoded_image_size
    rng = np.random.default_rng(1)
    for h, w in ((112, 112), (37, 91), (300, 7)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for ext, params in ((".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                            (".png", []), (".bmp", []), (".webp", []), (".tiff", [])):
            buf = cv2.imencode(ext, img, params)[1].tobytes()
            assert encoded_image_size(buf, "x") == (w, h), ext
        b = _io.BytesIO()  # PIL's JPEG with an EXIF block before the frame header
        exif = Image.Exif()
        exif[274] = 6
        Image.fromarray(img).save(b, "JPEG", exif=exif.tobytes())
        assert encoded_image_size(b.getvalue(), "x") == (w, h)
    jpg = cv2.imencode(".jpg", rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))[1].tobytes()
    for cut in (3, 10, 40):  # a header cut short is named, never an IndexError
        with pytest.raises(DataError, match="rec key 1"):
            encoded_image_size(jpg[:cut], "rec key 1")
