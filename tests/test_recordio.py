"""RecordIO reader/writer against files written by MXNet 1.9.1 (tests/data/recordio)."""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelt.cli import rec as rec_cli
from facelt.data.recordio import (IRHeader, InsightfaceRecWriter, RecordReader, RecordWriter,
                                  encode_record, pack, read_insightface, unpack)
from facelt.errors import DataError

DATA = Path(__file__).resolve().parent / "data" / "recordio"  # MXNet-written, copied into the repo
MAGIC = b"\x0a\x23\xd7\xce"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((DATA / "expected.json").read_text())


def _label(value):
    return list(value) if isinstance(value, tuple) else value


def _check_record(header: IRHeader, payload: bytes, want: dict) -> None:
    assert (header.flag, header.id, header.id2) == (want["flag"], want["id"], want["id2"])
    assert _label(header.label) == want["label"]
    assert len(payload) == want["payload_len"]
    if "payload_sha256" in want:
        assert hashlib.sha256(payload).hexdigest() == want["payload_sha256"]
    if "payload_hex" in want:
        assert payload.hex() == want["payload_hex"]


# ----------------------------------------------------------------------------- reading
def test_every_faces_record_matches_expected(expected):
    want = expected["faces"]["records"]
    reader = RecordReader(DATA / "faces.rec", DATA / "faces.idx")
    assert reader.keys.tolist() == list(range(17)) and len(reader) == 17
    for key in reader.keys.tolist():
        header, payload = reader.read_unpacked(key)
        _check_record(header, payload, want[str(key)])
        if want[str(key)].get("pixels_bgr_sha256"):
            pixels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            assert hashlib.sha256(pixels.tobytes()).hexdigest() == want[str(key)]["pixels_bgr_sha256"]
            assert pixels.mean() == pytest.approx(want[str(key)]["pixels_bgr_mean"])


def test_every_split_record_is_rejoined(expected):
    reader = RecordReader(DATA / "split.rec", DATA / "split.idx")
    assert len(reader) == len(expected["split"])
    for key in reader.keys.tolist():
        _check_record(*reader.read_unpacked(key), expected["split"][str(key)])


@pytest.mark.parametrize("name", ["faces", "split"])
def test_scan_without_idx_gives_the_same_records(tmp_path, name):
    shutil.copy(DATA / f"{name}.rec", tmp_path / f"{name}.rec")
    bare = RecordReader(tmp_path / f"{name}.rec")
    assert bare.idx_path is None
    indexed = RecordReader(DATA / f"{name}.rec", DATA / f"{name}.idx")
    offsets = [int(line.split("\t")[1]) for line in (DATA / f"{name}.idx").read_text().split("\n") if line]
    scanned = list(bare.scan())
    assert [o for o, _ in scanned] == offsets
    assert [r for _, r in scanned] == [indexed.read(k) for k in indexed.keys.tolist()]
    assert [bare.read_at(o) for o in offsets] == [r for _, r in scanned]
    assert len(bare) == len(offsets)


def test_pack_rebuilds_the_mxnet_record_bytes():
    reader = RecordReader(DATA / "faces.rec")
    for key in reader.keys.tolist():
        record = reader.read(key)
        assert pack(*unpack(record)) == record


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("name", ["faces", "split"])
def test_writer_is_byte_identical_to_mxnet(tmp_path, name):
    reader = RecordReader(DATA / f"{name}.rec", DATA / f"{name}.idx")
    with RecordWriter(tmp_path / "out.rec", tmp_path / "out.idx") as writer:
        for key in reader.keys.tolist():
            writer.write(key, reader.read(key))
    assert (tmp_path / "out.rec").read_bytes() == (DATA / f"{name}.rec").read_bytes()
    assert (tmp_path / "out.idx").read_bytes() == (DATA / f"{name}.idx").read_bytes()


def test_split_encoding_hand_computed():
    # header word, an aligned magic word, 'x': parts [cflag 1, 4 bytes] and [cflag 3, 1 byte + 3 pad]
    record = b"abcd" + MAGIC + b"x"
    want = (MAGIC + struct.pack("<I", (1 << 29) | 4) + b"abcd"
            + MAGIC + struct.pack("<I", (3 << 29) | 1) + b"x\0\0\0")
    assert encode_record(record) == want
    # an unaligned magic word does not split; 6 bytes pad to 8
    assert encode_record(b"a" + MAGIC + b"b") == MAGIC + struct.pack("<I", 6) + b"a" + MAGIC + b"b\0\0"
    # two adjacent aligned magic words: start (0 bytes), middle (0 bytes), end (0 bytes)
    assert encode_record(MAGIC + MAGIC) == (MAGIC + struct.pack("<I", 1 << 29)
                                            + MAGIC + struct.pack("<I", 2 << 29)
                                            + MAGIC + struct.pack("<I", 3 << 29))


def test_pack_header_layout_hand_computed():
    assert pack(IRHeader(0, 3.0, 7, 9), b"P") == struct.pack("<IfQQ", 0, 3.0, 7, 9) + b"P"
    seq = pack(IRHeader(0, (1.5, 2.0), 4, 0), b"")
    assert seq == struct.pack("<IfQQ", 2, 0.0, 4, 0) + struct.pack("<2f", 1.5, 2.0)
    assert unpack(seq) == (IRHeader(2, (1.5, 2.0), 4, 0), b"")


def test_failed_write_leaves_previous_files_intact(tmp_path):
    rec, idx = tmp_path / "d.rec", tmp_path / "d.idx"
    with RecordWriter(rec, idx) as writer:
        writer.write(0, b"first")
    before = rec.read_bytes(), idx.read_bytes()
    with pytest.raises(RuntimeError):
        with RecordWriter(rec, idx) as writer:
            writer.write(0, b"second version")
            raise RuntimeError("boom")
    assert (rec.read_bytes(), idx.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.idx", "d.rec"]


# ----------------------------------------------------------------------------- corruption
def _copy(tmp_path: Path, name: str) -> tuple[Path, Path]:
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    shutil.copy(DATA / f"{name}.rec", rec)
    shutil.copy(DATA / f"{name}.idx", idx)
    return rec, idx


def _error(fn) -> str:
    with pytest.raises(DataError) as info:
        fn()
    return str(info.value)


def test_truncated_file_names_file_key_offset(tmp_path):
    rec, idx = _copy(tmp_path, "split")
    rec.write_bytes(rec.read_bytes()[:600])  # record 5 starts at 268 and runs to 1304
    msg = _error(lambda: RecordReader(rec, idx).read(5))
    assert str(rec) in msg and "key 5" in msg and "offset 268" in msg and "truncated" in msg
    assert "truncated" in _error(lambda: list(RecordReader(rec, None).scan()))


def test_bad_magic_word_names_file_key_offset(tmp_path):
    rec, idx = _copy(tmp_path, "split")
    data = bytearray(rec.read_bytes())
    data[252] ^= 0xFF  # second part of record 4 (212: start, 244: middle, 252: middle, 260: end)
    rec.write_bytes(bytes(data))
    msg = _error(lambda: RecordReader(rec, idx).read(4))
    assert str(rec) in msg and "key 4" in msg and "offset 212" in msg and "byte 252" in msg
    assert "magic" in msg


def test_idx_offset_past_the_end(tmp_path):
    rec, idx = _copy(tmp_path, "split")
    idx.write_text(idx.read_text() + "7\t99999\n")
    msg = _error(lambda: RecordReader(rec, idx).read(7))
    assert str(rec) in msg and "key 7" in msg and "offset 99999" in msg and "past the end" in msg


def test_bad_cflag_sequence(tmp_path):
    rec = tmp_path / "c.rec"
    # a lone 'end' part (cflag 3) where a record must start with cflag 0 or 1
    rec.write_bytes(MAGIC + struct.pack("<I", (3 << 29) | 4) + b"abcd")
    (tmp_path / "c.idx").write_text("0\t0\n")
    msg = _error(lambda: RecordReader(rec).read(0))
    assert str(rec) in msg and "key 0" in msg and "offset 0" in msg and "cflag" in msg


def test_label_count_overrunning_the_record(tmp_path):
    rec = tmp_path / "l.rec"
    with RecordWriter(rec) as writer:
        writer.write(0, pack(IRHeader(0, 1.0, 0, 0), b"ok"))
        writer.write(1, struct.pack("<IfQQ", 5, 0.0, 1, 0) + b"\0" * 8)  # claims 5 labels, holds 2
    reader = RecordReader(rec)
    assert reader.read_unpacked(0) == (IRHeader(0, 1.0, 0, 0), b"ok")
    msg = _error(lambda: reader.read_unpacked(1))
    assert str(rec) in msg and "key 1" in msg and f"offset {reader.offset_of(1)}" in msg
    assert "5 float32 labels" in msg
    assert "where-X" in _error(lambda: unpack(reader.read(1), "where-X"))


# ----------------------------------------------------------------------------- insightface layout
def test_insightface_writer_reproduces_the_mxnet_files(tmp_path, expected):
    reader = RecordReader(DATA / "faces.rec")
    images = [unpack(reader.read(k)) for k in range(1, expected["faces"]["num_images"] + 1)]
    with InsightfaceRecWriter(tmp_path / "faces", num_images=len(images)) as writer:
        for header, payload in images:
            writer.add_image(int(header.label), payload)
    for name in ("faces.rec", "faces.idx", "property"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_read_insightface_on_mxnet_files(expected):
    want = expected["faces"]["records"]
    index = read_insightface(DATA / "faces")
    assert index.num_classes == expected["faces"]["num_identities"]
    assert index.image_size == (112, 112)
    assert index.keys.tolist() == list(range(1, 13))
    assert index.labels.tolist() == [int(want[str(k)]["label"]) for k in range(1, 13)]
    assert index.ranges.tolist() == [want[str(k)]["label"] for k in range(13, 17)]


def test_insightface_round_trip_and_header_fallback(tmp_path):
    sizes = [2, 1, 3]
    labels = [k for k, n in enumerate(sizes) for _ in range(n)]
    with InsightfaceRecWriter(tmp_path / "train", num_images=len(labels), image_size=(96, 80)) as w:
        for i, label in enumerate(labels):
            w.add_image(label, bytes([i]) * (5 + i))
    assert (tmp_path / "property").read_text() == "3,96,80"
    index = read_insightface(tmp_path / "train")
    assert index.num_classes == 3 and index.image_size == (96, 80)
    assert index.keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert index.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert index.ranges.tolist() == [[1, 3], [3, 4], [4, 7]]
    reader = RecordReader(tmp_path / "train.rec")
    assert reader.read_unpacked(0)[0] == IRHeader(2, (7.0, 10.0), 0, 0)
    assert reader.read_unpacked(4) == (IRHeader(0, 2.0, 4, 0), bytes([3]) * 8)

    # plain rec (im2rec style, no record 0 / identity records): labels from the image headers
    with RecordWriter(tmp_path / "plain" / "plain.rec") as writer:
        for key, label in enumerate([1, 0, 1]):
            writer.write(key, pack(IRHeader(0, float(label), key, 0), b"img"))
    plain = read_insightface(tmp_path / "plain" / "plain")
    assert plain.keys.tolist() == [0, 1, 2] and plain.labels.tolist() == [1, 0, 1]
    assert plain.num_classes == 2 and plain.ranges is None


def test_insightface_writer_rejects_ungrouped_labels(tmp_path):
    with pytest.raises(DataError, match="grouped by identity"):
        with InsightfaceRecWriter(tmp_path / "t", num_images=3) as w:
            w.add_image(0, b"a")
            w.add_image(1, b"b")
            w.add_image(0, b"c")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    rec_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_inspect_record_1_matches_expected(capsys, expected):
    assert _cli(["rec", "inspect", str(DATA / "faces"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["key"] for r in rows] == list(range(17))
    row = rows[1]
    want = expected["faces"]["records"]["1"]
    assert row["offset"] == 40
    for field in ("flag", "label", "id", "id2", "payload_len", "payload_sha256"):
        assert row[field] == want[field], field
    assert _cli(["rec", "inspect", str(DATA / "faces")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 19 and table[0].split()[:2] == ["key", "offset"]
    assert table[-1].startswith("17 records,") and "17 shown" in table[-1]
    table = table[:-1]
    assert table[2].split() == ["1", "40", "0", "0", "1", "0", "524", want["payload_sha256"]]
    assert table[1].split()[3:5] == ["[13,", "17]"]
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_cli_pack_groups_by_label_and_keeps_file_bytes(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        name = f"p{i}.png"
        cv2.imwrite(str(root / name), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        files.append(name)
    lst = tmp_path / "train.lst"
    lst.write_text("".join(f"{i}\t{lab:f}\t{f}\n" for i, (lab, f) in enumerate(zip([1, 0, 1, 0], files))))
    assert _cli(["rec", "pack", "--list", str(lst), "--root", str(root), "--out",
                 str(tmp_path / "out" / "train")]) == 0
    index = read_insightface(tmp_path / "out" / "train")
    assert index.labels.tolist() == [0, 0, 1, 1] and index.num_classes == 2
    reader = RecordReader(tmp_path / "out" / "train.rec")
    stored = [reader.read_unpacked(k)[1] for k in index.keys.tolist()]
    assert stored == [(root / f).read_bytes() for f in ("p1.png", "p3.png", "p0.png", "p2.png")]
    assert (tmp_path / "out" / "property").read_text() == "2,112,112"

    lst.write_text(f"0\t0\t{files[0]}\n1\t2\t{files[1]}\n")
    with pytest.raises(DataError, match="label 1 has no image"):
        _cli(["rec", "pack", "--list", str(lst), "--root", str(root), "--out", str(tmp_path / "bad")])
