"""The MegaFace devkit's per-image feature files, and a converter to/from stacked ``.npy``.

A devkit ``.bin`` is an OpenCV matrix dump: ``struct '4i'`` (rows, cols, stride in bytes, type) in
native (little-endian) order, then ``rows`` rows of ``stride`` bytes each.  Only type 5 (``CV_32F``)
is used for features.  insightface writes a d-dim feature as ``rows=d, cols=1, stride=4``; a feature
is the matrix flattened.  The devkit names the file after the image: ``<image path>_<algo>.bin``
(e.g. ``Aaron_Eckhart/Aaron_Eckhart_136.png_r100.bin``), in a folder tree mirroring the images.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from facelt.errors import DataError
from facelt.utils.io import atomic_path
from facelt.utils.progress import progress

from facelt.features.files import (FeatureFile, finalize_feature_memmap, partial_path,
                                    read_manifest, write_feature_memmap, write_manifest)

HEADER = struct.Struct("<4i")
CV_32F = 5
# "<image>.<ext>_<algo>.bin" -> "<image>.<ext>"
_BIN_NAME = re.compile(r"^(?P<image>.+\.(?:jpe?g|png|bmp|gif|tiff?|webp))_[^/\\]*\.bin$", re.IGNORECASE)

PathLike = Union[str, os.PathLike]


def read_bin(path: PathLike) -> np.ndarray:
    """A devkit ``.bin`` as a float32 ``(rows, cols)`` array."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) < HEADER.size:
        raise DataError(f"devkit feature file {p}: {len(data)} bytes, shorter than the 16-byte header")
    rows, cols, stride, mtype = HEADER.unpack_from(data)
    if mtype != CV_32F:
        raise DataError(f"devkit feature file {p}: matrix type {mtype}, expected {CV_32F} (CV_32F)")
    if rows < 0 or cols < 1 or stride < cols * 4:
        raise DataError(f"devkit feature file {p}: header rows={rows} cols={cols} stride={stride}; "
                        f"expected rows >= 0, cols >= 1, stride >= 4*cols")
    need = HEADER.size + rows * stride
    if len(data) < need:
        raise DataError(f"devkit feature file {p}: {len(data)} bytes, header needs {need}")
    raw = np.frombuffer(data, dtype=np.uint8, count=rows * stride, offset=HEADER.size)
    return raw.reshape(rows, stride)[:, :cols * 4].copy().view("<f4").astype(np.float32)


def write_bin(path: PathLike, mat: np.ndarray) -> None:
    """Write a devkit ``.bin`` atomically; a 1-D feature is stored insightface-style as ``(d, 1)``."""
    a = np.asarray(mat, dtype="<f4")
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"write_bin: need a 1-D or 2-D array, got shape {a.shape}")
    rows, cols = a.shape
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(HEADER.pack(rows, cols, cols * 4, CV_32F))
            fh.write(np.ascontiguousarray(a).tobytes())


def image_path_of_bin(rel: str) -> str:
    """``a/b.jpg_r100.bin`` -> ``a/b.jpg``; a name without an image extension just loses ``.bin``."""
    m = _BIN_NAME.match(rel)
    if m:
        return m.group("image")
    return rel[:-4] if rel.lower().endswith(".bin") else rel


def bins_to_npy(folder: PathLike, out_npy: PathLike, manifest: PathLike) -> int:
    """Stack every ``.bin`` under ``folder`` (sorted by relative path) into ``out_npy``.

    ``manifest`` receives the image path of each row (the ``.bin`` name without ``_<algo>.bin``).
    Returns the number of rows.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"devkit feature folder {root}: not a directory")
    files = sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*.bin"))
    if not files:
        raise DataError(f"devkit feature folder {root}: no .bin files found")
    check_outputs_apart({"the .npy": Path(out_npy), "--manifest": Path(manifest),
                         "the unfinished .npy": partial_path(out_npy)},
                        [root] + [root / f for f in files])
    first = read_bin(root / files[0]).reshape(-1)
    dim = first.size
    mm = write_feature_memmap(out_npy, len(files), dim)
    try:
        for i, rel in enumerate(progress(files, desc="bin -> npy", unit="file")):
            v = first if i == 0 else read_bin(root / rel).reshape(-1)
            if v.size != dim:
                raise DataError(f"devkit feature file {root / rel}: {v.size} values, the first file "
                                f"{root / files[0]} has {dim}")
            mm[i] = v
        finalize_feature_memmap(mm, out_npy)
    finally:
        del mm
    write_manifest(manifest, [image_path_of_bin(f) for f in files])
    return len(files)


def npy_to_bins(npy: PathLike, manifest: PathLike, folder: PathLike, algo: str = "facelt") -> int:
    """Write one devkit ``.bin`` per row: ``folder/<manifest path>_<algo>.bin``.  Returns the count."""
    ff = FeatureFile.open(npy)
    items = read_manifest(manifest)
    if len(items) != ff.rows:
        raise DataError(f"manifest {manifest} has {len(items)} entries but {npy} has {ff.rows} rows")
    root = Path(folder)
    targets = bin_targets(root, items, algo, manifest, inputs=[Path(npy), Path(manifest)])
    chunk = 4096
    for a in progress(range(0, ff.rows, chunk), desc="npy -> bin", unit="chunk"):
        block = ff.read(a, min(a + chunk, ff.rows))
        for j, vec in enumerate(block):
            write_bin(targets[a + j], vec)
    return ff.rows


def check_outputs_apart(outputs: dict[str, Path], inputs: Iterable[Path]) -> None:
    """Refuse (before anything is written) an output that resolves to one of the ``inputs``, or
    two outputs that resolve to the same file; ``outputs`` maps what each one is to its path."""
    seen: dict[Path, str] = {}
    taken = {Path(p).resolve(): Path(p) for p in inputs}
    for what, path in outputs.items():
        real = Path(path).resolve()
        if real in taken:
            raise DataError(f"{what} {path} is the input {taken[real]}: writing it would destroy "
                            "the input; choose another output")
        if real in seen:
            raise DataError(f"{what} {path} and {seen[real]} are the same file: choose two "
                            "different outputs")
        seen[real] = what


def bin_targets(root: Path, items: list[str], algo: str, manifest: PathLike,
                inputs: Iterable[Path] = ()) -> list[Path]:
    """``root/<item>_<algo>.bin`` for every manifest row, each checked (before anything is
    written) to stay inside ``root``: no absolute path, no ``..``, no symlinked folder leading
    out, no row written twice, none of the ``inputs``; :class:`DataError` naming the manifest,
    the row and the entry otherwise. Each folder is resolved once."""
    if not algo or any(c in algo for c in "/\\\0") or algo in (".", ".."):
        raise DataError(f"--algo {algo!r}: expected a plain tag (no path separators)")
    inside = root.resolve()
    taken = {Path(p).resolve(): Path(p) for p in inputs}
    real_parent: dict[Path, Path] = {}
    targets, row_of = [], {}
    for i, item in enumerate(items):
        where = f"manifest {manifest}, row {i} ({item!r})"
        if not item or "\0" in item or item.startswith(("/", "\\")) \
                or re.match(r"^[A-Za-z]:", item):
            raise DataError(f"{where}: an absolute or empty path; entries are image paths "
                            f"relative to the output folder {root}")
        if ".." in re.split(r"[/\\]", item):
            raise DataError(f"{where}: '..' would write outside the output folder {root}")
        target = root / f"{item}_{algo}.bin"
        if target.parent not in real_parent:
            real_parent[target.parent] = target.parent.resolve()
        parent = real_parent[target.parent]
        if parent != inside and inside not in parent.parents:
            raise DataError(f"{where}: {target.parent} leads outside the output folder {root} "
                            f"(to {parent}, through a symbolic link)")
        real = parent / target.name
        if real in taken:
            raise DataError(f"{where}: {target} is the input {taken[real]}: writing it would "
                            "destroy the input")
        if real in row_of:
            raise DataError(f"{where}: the same file as row {row_of[real]}; each row needs its "
                            "own .bin")
        row_of[real] = i
        targets.append(target)
    return targets
