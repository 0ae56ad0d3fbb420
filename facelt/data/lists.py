"""OLTR split lists: ``relative/path label`` a line.

The format of the public OLTR benchmark files (``Places_LT_train.txt``, ``ImageNet_LT_open.txt`` ...):
one image a line, the path relative to a data root, then whitespace, then an integer label; open-set
images carry label ``-1``.  Paths may contain spaces, so a line is split on its *last* run of
whitespace.  Blank lines and lines starting with ``#`` are ignored.
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facelt.data.shots import shot_counts
from facelt.errors import DataError
from facelt.utils.io import atomic_path
from facelt.utils.limits import MAX_LABEL
from facelt.utils.progress import progress

OPEN_LABEL = -1
_LABEL_RE = re.compile(r"[+-]?[0-9]+\Z")
_EXPECTED = '"<path> <integer label>" (label >= 0, or -1 for an open-set image)'


@dataclass(frozen=True, eq=False)
class ImageList:
    """An image list: paths relative to a data root and their int64 labels (-1 = open set).

    ``line_numbers`` (1-based, optional) maps each item back to its line in ``path`` so errors found
    later (a missing image) can point at the line to fix.
    """

    path: Path
    items: list[str]
    labels: np.ndarray
    line_numbers: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) != len(self.items):
            raise ValueError(f"ImageList {self.path}: {len(self.items)} items but labels of shape "
                             f"{labels.shape}")
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        """Max label + 1 over the labelled (>= 0) items; 0 for an all-open list."""
        known = self.labels[self.labels >= 0]
        return int(known.max()) + 1 if known.size else 0

    def class_counts(self, num_classes: Optional[int] = None) -> np.ndarray:
        """Images per class (int64, length ``num_classes`` or :attr:`num_classes`); open items skipped."""
        own = self.num_classes
        n = own if num_classes is None else int(num_classes)
        if n < own:
            raise DataError(f"{self.path}: labels go up to {own - 1} but num_classes is {n}")
        return np.bincount(self.labels[self.labels >= 0], minlength=n).astype(np.int64)

    def line_of(self, index: int) -> str:
        """Human-readable location of item ``index``: ``'<file> line N'`` or ``'<file> item N'``."""
        if self.line_numbers is not None:
            return f"{self.path} line {int(self.line_numbers[index])}"
        return f"{self.path} item {index}"


def labels_outside(labels: Sequence[int] | np.ndarray, num_classes: int, open_set: bool = False
                   ) -> np.ndarray:
    """Indices of the labels a split may not hold: anything but ``OPEN_LABEL`` in an open-set
    split, anything outside ``0..num_classes-1`` in a known-class split (train / val / test)."""
    labels = np.asarray(labels)
    if open_set:
        return np.flatnonzero(labels != OPEN_LABEL)
    return np.flatnonzero((labels < 0) | (labels >= num_classes))


def _bad_line(path: Path, lineno: int, text: str, why: str) -> DataError:
    return DataError(f"{path}, line {lineno}: {why} in {text!r}; expected {_EXPECTED}")


#: Compressed list files read as their text: suffix -> opener.
COMPRESSED_SUFFIXES = {".gz": gzip.open, ".xz": lzma.open}


def resolve_list_file(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else ``path.gz`` / ``path.xz`` if one of those exists, else ``path``
    (so the error of a later read names the file that was asked for)."""
    path = Path(path)
    if path.exists():
        return path
    for suffix in COMPRESSED_SUFFIXES:
        alt = path.with_name(path.name + suffix)
        if alt.is_file():
            return alt
    return path


def read_list_text(path: str | os.PathLike) -> str:
    """The text of a list file, plain or compressed (``.gz``, ``.xz``), UTF-8."""
    path = Path(path)
    opener = COMPRESSED_SUFFIXES.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"list file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"list file {path} is a directory, expected a text file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"list file {path} is not UTF-8 text ({e})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"list file {path} cannot be read as {path.suffix or 'text'} ({e})") from None


def list_file_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a list file as written (``.gz`` / ``.xz`` decompressed, line ends untouched):
    what ``git hash-object`` of the plain file hashes."""
    path = Path(path)
    opener = COMPRESSED_SUFFIXES.get(path.suffix, open)
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"list file {path} does not exist") from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"list file {path} cannot be read as {path.suffix or 'text'} ({e})") from None


def read_list(path: str | os.PathLike) -> ImageList:
    """Read an OLTR list file (plain, ``.gz`` or ``.xz``; ``NAME.txt`` also finds ``NAME.txt.gz``);
    raise :class:`DataError` naming file, line and text on a bad line."""
    path = resolve_list_file(path)
    text = read_list_text(path)

    items: list[str] = []
    labels: list[int] = []
    linenos: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise _bad_line(path, lineno, raw, "one field only")
        item, tok = parts
        if not _LABEL_RE.match(tok):
            raise _bad_line(path, lineno, raw, f"label {tok!r} is not an integer")
        label = int(tok)
        if label < OPEN_LABEL:
            raise _bad_line(path, lineno, raw, f"label {label} is negative but not -1")
        if label > MAX_LABEL:
            raise _bad_line(path, lineno, raw, f"label {label} is above {MAX_LABEL:,}, the "
                                               "largest class index facelt takes")
        items.append(item)
        labels.append(label)
        linenos.append(lineno)
    return ImageList(path=path, items=items, labels=np.asarray(labels, dtype=np.int64),
                     line_numbers=np.asarray(linenos, dtype=np.int64))


def write_list(path: str | os.PathLike, items: Sequence[str], labels: Sequence[int] | np.ndarray) -> None:
    """Write an OLTR list atomically (temp file, then rename); the result reads back unchanged."""
    path = Path(path)
    labels = np.asarray(labels, dtype=np.int64)
    if len(items) != len(labels):
        raise DataError(f"cannot write {path}: {len(items)} paths but {len(labels)} labels")
    lines = []
    for i, (item, label) in enumerate(zip(items, labels.tolist())):
        item = str(item)
        if not item or item != item.strip() or "\n" in item or "\r" in item or item.startswith("#"):
            raise DataError(f"cannot write {path}: path {i} {item!r} is empty, starts with '#', or has "
                            f"leading/trailing whitespace or a line break, so it would not read back")
        if label < OPEN_LABEL:
            raise DataError(f"cannot write {path}: label {label} of {item!r} is below -1")
        lines.append(f"{item} {label}\n")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(lines)


def check_files_exist(image_list: ImageList, root: str | os.PathLike, max_report: int = 10) -> None:
    """Raise one :class:`DataError` listing the first ``max_report`` missing images and the total."""
    root = Path(root)
    missing: list[int] = []
    folders: set[int] = set()
    for i, item in enumerate(progress(image_list.items, desc="checking images", unit="img")):
        if not os.path.isfile(root / item):
            missing.append(i)
            if os.path.isdir(root / item):
                folders.add(i)
    if missing:
        shown = "\n".join(f"  {root / image_list.items[i]} ({image_list.line_of(i)})"
                          + (" is a folder, not an image file" if i in folders else "")
                          for i in missing[:max_report])
        more = f"\n  ... and {len(missing) - max_report} more" if len(missing) > max_report else ""
        what = "missing" if not folders else \
            ("folders, not image files" if len(folders) == len(missing) else
             f"missing or folders ({len(folders)} folders)")
        raise DataError(f"{len(missing)} of {len(image_list)} images listed in {image_list.path} are "
                        f"{what} under root {root}:\n{shown}{more}")


def list_stats(image_list: ImageList, many: int = 100, few: int = 20,
               rule: str = "paper") -> dict[str, int]:
    """Class-size statistics over the classes that appear.

    ``many`` = classes with more than ``many`` images, ``few`` = fewer than ``few``, ``medium`` the
    rest (``rule`` ``paper``: many > 100, medium 20..100, few < 20; ``oltr_code``: >= 100 and
    <= 20, :mod:`facelt.data.shots`).  ``images`` counts every item, ``open`` the items labelled -1.
    """
    counts = image_list.class_counts()
    counts = counts[counts > 0]
    return {
        "classes": int(counts.size),
        "images": len(image_list),
        "open": int((image_list.labels < 0).sum()),
        "min_per_class": int(counts.min()) if counts.size else 0,
        "max_per_class": int(counts.max()) if counts.size else 0,
        **shot_counts(counts, many, few, rule),
    }
