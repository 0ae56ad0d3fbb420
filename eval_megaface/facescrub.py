"""FaceScrub probe lists with a gender column, from the FaceScrub actor / actress lists.

FaceScrub ships ``facescrub_actors.txt`` and ``facescrub_actresses.txt`` (tab-separated, header
``name  image_id  face_id  url  bbox  sha256``; names like ``Aaron Eckhart``). The MegaFace
challenge-1 probe set keeps FaceScrub images in one folder per identity named with underscores
(``Aaron_Eckhart/Aaron_Eckhart_136.png``). :func:`write_probe_list` turns such a folder into the
probe CSV of :mod:`eval_megaface.probes` -- ``path,identity,gender`` (``male`` from the actor list,
``female`` from the actress list, ``unknown`` otherwise) -- so the report breaks rank-1 down by gender.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Union

from facelt.errors import DataError
from facelt.utils.io import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _key(name: str) -> str:
    return "_".join(name.strip().split()).replace(" ", "_")


def read_facescrub_names(path: Union[str, os.PathLike]) -> set[str]:
    """The identity names of a FaceScrub list, as folder names (spaces -> underscores)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"FaceScrub list {p}: not found")
    names: set[str] = set()
    with open(p, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if not header or header[0].strip().lower() != "name":
            raise DataError(f"FaceScrub list {p}, line 1: expected a tab-separated header starting "
                            f"with 'name', got {header[:3]}")
        for lineno, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            name = line.split("\t", 1)[0]
            if not name.strip():
                raise DataError(f"FaceScrub list {p}, line {lineno}: empty name")
            names.add(_key(name))
    return names


def write_probe_list(root: Union[str, os.PathLike], actors: Union[str, os.PathLike],
                     actresses: Union[str, os.PathLike], out_csv: Union[str, os.PathLike]) -> dict:
    """Write ``path,identity,gender`` for every image under ``root/<identity>/`` (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"FaceScrub image folder {root}: not found")
    male, female = read_facescrub_names(actors), read_facescrub_names(actresses)
    both = sorted(male & female)
    if both:
        raise DataError(f"{both[0]} is in both {actors} and {actresses}")
    rows, counts = [], {"male": 0, "female": 0, "unknown": 0}
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        ident = folder.name
        gender = "male" if ident in male else "female" if ident in female else "unknown"
        for img in sorted(f for f in folder.iterdir()
                          if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS):
            rows.append((f"{ident}/{img.name}", ident, gender))
            counts[gender] += 1
    if not rows:
        raise DataError(f"no images under {root}/<identity>/")
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity", "gender"])
        w.writerows(rows)
    return {"images": len(rows), "identities": len({r[1] for r in rows}), "by_gender": counts}
