"""Fingerprints of an image source's content, so that a derived file (features) made from other
images is never reused.

:func:`image_source_fingerprint` hashes the index files whole (``.idx``, list files: small, and
they carry keys and offsets) and, for the data files (``.rec``, image files), their paths, sizes
and modification times plus ``samples`` windows of bytes spread evenly over their concatenation:
re-packing other pixels under the same keys changes the ``.rec``'s mtime (and, almost always,
sampled bytes and sizes), so it changes the fingerprint.  Cost: one stat a file, the index files
read once, ``samples x window`` bytes read (256 KiB by default), whatever the source's size.

:func:`derived_file_fingerprint` is what every cached artefact (a feature file) is named by: the
model files (path, size, mtime), the settings that change it, the exact rows, and the image
source's content (:func:`image_source_fingerprint`).
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Sequence, Union

from facelt.errors import DataError

PathLike = Union[str, os.PathLike]


def git_blob_sha1(data: bytes) -> str:
    """The git blob hash of ``data`` (what ``git hash-object`` prints for a file holding it):
    sha1 of ``b"blob <len>\\0"`` followed by the bytes."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"image source {path}: not found") from None


def image_source_fingerprint(data_files: Sequence[PathLike], index_files: Sequence[PathLike] = (),
                             samples: int = 64, window: int = 4096) -> str:
    """A hex sha256 naming the content of an image source (see the module's docstring)."""
    h = hashlib.sha256(b"facelt-image-source-v1\n")
    for p in map(Path, index_files):
        st = _stat(p)
        h.update(f"index {p.resolve()} {st.st_size}\n".encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    files = [Path(p) for p in data_files]
    sizes = []
    for p in files:
        st = _stat(p)
        sizes.append(st.st_size)
        h.update(f"data {p.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    total = sum(sizes)
    if total == 0 or samples < 1:
        return h.hexdigest()
    ends = list(itertools.accumulate(sizes))          # file f holds bytes [ends[f-1], ends[f])
    for i in range(samples):                          # windows may cross file ends
        pos = (total - min(window, total)) * i // max(1, samples - 1)
        want = min(window, total - pos)
        while want > 0:
            f = bisect.bisect_right(ends, pos)
            start = ends[f] - sizes[f]
            take = min(want, ends[f] - pos)
            with open(files[f], "rb") as fh:
                fh.seek(pos - start)
                h.update(fh.read(take))
            pos += take
            want -= take
    return h.hexdigest()


def derived_file_fingerprint(model_files: Sequence[PathLike], rows: Sequence[str], settings: object,
                             data_files: Sequence[PathLike] = (),
                             index_files: Sequence[PathLike] = ()) -> str:
    """A hex sha256 naming everything a derived file (features) is computed from: each model file
    (resolved path, size, mtime), ``settings`` (JSON-able: flip, an output name ...), the rows in
    order and, when given, the content of the images (``data_files`` / ``index_files``, see
    :func:`image_source_fingerprint`)."""
    stamp = []
    for f in map(Path, model_files):
        st = _stat(f)
        stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    h = hashlib.sha256(json.dumps([stamp, settings]).encode())
    for r in rows:
        h.update(str(r).encode() + b"\n")
    if data_files or index_files:
        h.update(image_source_fingerprint(data_files, index_files).encode())
    return h.hexdigest()
