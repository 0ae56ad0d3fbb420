"""``facelt rec``: look inside MXNet RecordIO files and pack images into them, without mxnet.

``facelt rec inspect PREFIX [--json]`` prints one row per record of ``PREFIX.rec`` (key, offset,
header, payload length and sha256); ``facelt rec pack --list L.lst --root DIR --out PREFIX``
is im2rec for the insightface layout: image file bytes stored as they are, grouped by label.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from facelt.data.recordio import (InsightfaceRecWriter, RecordReader, insightface_paths,
                                  property_needs_writing, unpack)
from facelt.errors import DataError
from facelt.utils.io import ensure_writable_dir
from facelt.utils.progress import progress

_COLUMNS = (("key", 8), ("offset", 12), ("flag", 4), ("label", 22), ("id", 10), ("id2", 6),
            ("payload_len", 11), ("payload_sha256", 64))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rec", help="MXNet RecordIO: inspect records, pack images",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="rec_command", metavar="ACTION")
    actions.required = True
    inspect = actions.add_parser("inspect", help="one row per record: key, offset, header, payload")
    inspect.add_argument("prefix", help="PREFIX of PREFIX.rec (and PREFIX.idx when present)")
    inspect.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    pack = actions.add_parser("pack", help="im2rec without mxnet, insightface layout")
    pack.add_argument("--list", required=True, type=Path,
                      help="im2rec .lst: index<TAB>label<TAB>relative/path a line")
    pack.add_argument("--data-root", "--root", dest="root", required=True, type=Path,
                      help="folder the .lst paths are under")
    pack.add_argument("--out", required=True, type=Path,
                      help="PREFIX: writes PREFIX.rec, PREFIX.idx and property beside them")
    pack.add_argument("--image-size", default="112,112", type=_size,
                      help="H,W written to the property file (default 112,112)")
    pack.add_argument("--force", action="store_true",
                      help="replace an existing PREFIX.rec / PREFIX.idx (refused without it)")
    parser.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W, got {text!r}") from None
    return h, w


def run(args: argparse.Namespace) -> int:
    if args.rec_command == "inspect":
        return _inspect(args.prefix, args.json)
    return _pack(args.list, args.root, args.out, args.image_size, args.force)


# ----------------------------------------------------------------------------- inspect
def inspect_records(prefix: str | Path) -> Iterator[dict]:
    """One dict per record of ``PREFIX.rec`` in file order (key None when it has no .idx)."""
    rec_path, idx_path, _ = insightface_paths(prefix)
    reader = RecordReader(rec_path, idx_path if idx_path.is_file() else None)
    return _rows(reader)


def _rows(reader: RecordReader) -> Iterator[dict]:
    for offset, record in reader.scan():
        key = reader.key_at(offset)
        header, payload = unpack(record, reader.where(key, offset))
        label = list(header.label) if isinstance(header.label, tuple) else header.label
        yield {"key": key, "offset": offset, "flag": header.flag, "label": label, "id": header.id,
               "id2": header.id2, "payload_len": len(payload),
               "payload_sha256": hashlib.sha256(payload).hexdigest()}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _inspect(prefix: str, as_json: bool) -> int:
    out = sys.stdout
    rows = inspect_records(prefix)
    if not as_json:
        out.write("  ".join(name.rjust(width) for name, width in _COLUMNS).rstrip() + "\n")
    for row in rows:
        if as_json:
            out.write(json.dumps(row) + "\n")
        else:
            out.write("  ".join(_cell(row[name]).rjust(width) for name, width in _COLUMNS) + "\n")
    return 0


# ----------------------------------------------------------------------------- pack
def read_lst(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Parse an im2rec .lst (``index<TAB>label<TAB>path``): labels, paths, line numbers."""
    labels: list[int] = []
    paths: list[str] = []
    lines: list[int] = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read list: {exc.strerror}") from exc
    with fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise DataError(f"{path}:{lineno}: expected 'index<TAB>label<TAB>path' (one identity "
                                f"label per image), got {len(fields)} tab-separated fields")
            try:
                int(fields[0])
                value = float(fields[1])
            except ValueError:
                raise DataError(f"{path}:{lineno}: index {fields[0]!r} / label {fields[1]!r} is not "
                                "a number") from None
            if value < 0 or value != int(value):
                raise DataError(f"{path}:{lineno}: label {fields[1]} is not a class index (integer >= 0)")
            labels.append(int(value))
            paths.append(fields[2])
            lines.append(lineno)
    if not labels:
        raise DataError(f"{path}: the list holds no images")
    return np.array(labels, np.int64), paths, np.array(lines, np.int64)


def check_pack_target(out: Path, num_classes: int, image_size: Sequence[int], force: bool) -> None:
    """Refuse to replace an existing ``PREFIX.rec``/``.idx`` unless ``force``, and to change a
    ``property`` file that another ``.rec`` in the folder depends on (even with ``force``)."""
    rec, idx, _ = insightface_paths(out)
    existing = [p for p in (rec, idx) if p.exists()]
    if existing and not force:
        raise DataError(f"{existing[0]} already exists: pass --force to replace it (other files in "
                        f"{rec.parent} are never touched)")
    for p in (rec, idx):
        if p.is_dir():
            raise DataError(f"--out {out}: {p} is a folder, expected a file name")
    property_needs_writing(out, num_classes, image_size)


def _pack(lst: Path, root: Path, out: Path, image_size: Sequence[int], force: bool = False) -> int:
    labels, paths, lines = read_lst(lst)
    present = np.unique(labels)
    if present.size != int(present[-1]) + 1:
        missing = np.setdiff1d(np.arange(present[-1] + 1), present)
        raise DataError(f"{lst}: labels must be 0..K-1 with every identity present; label "
                        f"{int(missing[0])} has no image (K would be {int(present[-1]) + 1})")
    check_pack_target(out, int(present.size), image_size, force)
    ensure_writable_dir(insightface_paths(out)[0].parent, "rec pack --out folder")
    order = np.argsort(labels, kind="stable")
    with InsightfaceRecWriter(out, len(paths), image_size) as writer:
        for i in progress(order.tolist(), desc="pack", unit="img"):
            image = root / paths[i]
            try:
                data = image.read_bytes()
            except OSError as exc:
                raise DataError(f"{lst}:{int(lines[i])}: cannot read {image}: {exc.strerror}") from exc
            if not data:
                raise DataError(f"{lst}:{int(lines[i])}: {image} is empty")
            writer.add_image(int(labels[i]), data)
    rec, idx, prop = insightface_paths(out)
    print(f"packed {len(paths)} images of {present.size} identities into {rec}, {idx}, {prop}",
          file=sys.stderr)
    return 0
