"""im2rec without mxnet, in the insightface layout: an im2rec ``.lst`` (``index<TAB>label<TAB>
relative/path``) -> ``PREFIX.rec`` / ``PREFIX.idx`` / ``property``, the image files' bytes stored
as they are, grouped by label (what ``facelt rec pack`` runs)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facelt.data.recordio import InsightfaceRecWriter, insightface_paths, property_needs_writing
from facelt.errors import DataError
from facelt.utils.io import ensure_writable_dir
from facelt.utils.progress import progress

__all__ = ["LstImages", "read_lst", "check_pack_target", "pack_rec", "PackResult"]


@dataclass
class LstImages:
    """An im2rec list: per image its label, path (relative to the image root) and line number."""

    labels: np.ndarray
    paths: list[str]
    lines: np.ndarray


@dataclass
class PackResult:
    images: int
    identities: int
    rec: Path
    idx: Path
    property: Path


def read_lst(path: Path) -> LstImages:
    """Parse an im2rec .lst (``index<TAB>label<TAB>path``); a malformed line is a
    :class:`DataError` naming the file and line."""
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
    return LstImages(np.array(labels, np.int64), paths, np.array(lines, np.int64))


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


def pack_rec(lst: Path, root: Path, out: Path, image_size: Sequence[int],
             force: bool = False) -> PackResult:
    """Pack the images ``lst`` names (under ``root``) into the insightface rec ``out`` (a prefix);
    labels must be 0..K-1 with every identity present."""
    images = read_lst(lst)
    present = np.unique(images.labels)
    if present.size != int(present[-1]) + 1:
        missing = np.setdiff1d(np.arange(present[-1] + 1), present)
        raise DataError(f"{lst}: labels must be 0..K-1 with every identity present; label "
                        f"{int(missing[0])} has no image (K would be {int(present[-1]) + 1})")
    check_pack_target(out, int(present.size), image_size, force)
    ensure_writable_dir(insightface_paths(out)[0].parent, "rec pack --out folder")
    order = np.argsort(images.labels, kind="stable")
    with InsightfaceRecWriter(out, len(images.paths), image_size) as writer:
        for i in progress(order.tolist(), desc="pack", unit="img"):
            image = root / images.paths[i]
            where = f"{lst}:{int(images.lines[i])}"
            try:
                data = image.read_bytes()
            except OSError as exc:
                raise DataError(f"{where}: cannot read {image}: {exc.strerror}") from exc
            if not data:
                raise DataError(f"{where}: {image} is empty")
            writer.add_image(int(images.labels[i]), data)
    rec, idx, prop = insightface_paths(out)
    return PackResult(len(images.paths), int(present.size), rec, idx, prop)
