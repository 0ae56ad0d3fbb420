"""The probe list: a CSV with a header holding at least ``path,identity``; other columns are attributes.

Row ``i`` of the list describes row ``i`` of the probe feature file.  Extra columns (e.g. ``gender``)
are kept as strings and give the attribute breakdown of the report.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from facelt.errors import DataError

REQUIRED = ("path", "identity")


@dataclass(frozen=True, eq=False)
class ProbeList:
    """Probe image paths, integer identity ids (dense 0..n-1 in first-seen order) and attributes."""

    source: Path
    paths: list[str]
    identities: np.ndarray           # int64, one per row
    identity_names: list[str]        # identity id -> name as written in the list
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> "ProbeList":
        """The rows where ``keep`` is True (identity ids unchanged)."""
        idx = np.flatnonzero(keep)
        return ProbeList(self.source, [self.paths[i] for i in idx], self.identities[idx],
                         self.identity_names,
                         {k: [v[i] for i in idx] for k, v in self.attributes.items()})


def read_probe_list(path: Union[str, os.PathLike]) -> ProbeList:
    """Parse a probe CSV; :class:`DataError` naming the file and line for a malformed one, and
    the lines of an image listed twice (it would inflate the trials)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"probe list {p}: not found")
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"probe list {p}: empty; expected a header row with path,identity") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"probe list {p}, line 1: header {header} lacks column(s) {missing}; "
                            f"expected at least path,identity")
        if len(set(header)) != len(header):
            raise DataError(f"probe list {p}, line 1: duplicate column names in {header}")
        extra = [c for c in header if c not in REQUIRED]
        col = {c: i for i, c in enumerate(header)}
        paths: list[str] = []
        ids: list[int] = []
        names: dict[str, int] = {}
        attrs: dict[str, list[str]] = {c: [] for c in extra}
        line_of: dict[str, int] = {}
        for row in reader:
            if not row or all(not x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise DataError(f"probe list {p}, line {reader.line_num}: {len(row)} fields, "
                                f"the header has {len(header)}")
            path, ident = row[col["path"]].strip(), row[col["identity"]].strip()
            if not path or not ident:
                raise DataError(f"probe list {p}, line {reader.line_num}: empty path or identity")
            first = line_of.setdefault(path, reader.line_num)
            if first != reader.line_num:  # the same image twice would count its trials twice
                raise DataError(f"probe list {p}: {path!r} is listed twice (lines {first} and "
                                f"{reader.line_num}); each probe image must appear once")
            paths.append(path)
            ids.append(names.setdefault(ident, len(names)))
            for c in extra:
                attrs[c].append(row[col[c]].strip())
    return ProbeList(p, paths, np.asarray(ids, dtype=np.int64), list(names), attrs)
