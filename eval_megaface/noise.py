"""The public MegaFace / FaceScrub noise lists (insightface's "refined" protocol).

``facescrub_noises.txt`` names probe images by file name (``Aaron_Eckhart_136.png``) and
``megaface_noises.txt`` names distractors by path relative to the MegaFace root
(``375/37531198@N00/4174611825_0.jpg``); the first line of each is a ``#`` comment.

Matching rule: a list entry matches a row whose path *ends with* the entry's path components, so a
bare file name matches that file in any folder and a relative path matches however deep the row's
root is (``FlickrFinal2/375/...`` or ``375/...``).  Both sides are compared with ``/`` separators.

What "refined" means here: matched probes are removed from the probe set (no trial uses them, as
probe or as genuine match) and matched distractors are removed from the distractor pool before the
gallery subsets are drawn.  insightface's ``remove_noises.py`` reaches the distractor side the same
way in effect (a noisy distractor gets a feature that can never beat a genuine pair) but keeps noisy
probes with their feature replaced by the identity's clean-feature centre, so its trial count stays
that of the full probe set; dropping them instead, as here, evaluates only the clean images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from facelt.errors import DataError

FACESCRUB_NOISES = "facescrub_noises.txt"
MEGAFACE_NOISES = "megaface_noises.txt"


def read_noise_list(path: Union[str, os.PathLike]) -> list[str]:
    """Entries of a noise list: one path a line; ``#`` comments and blank lines skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"noise list {p}: not found")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s.replace("\\", "/").strip("/"))
    return out


def _parts(path: str) -> tuple[str, ...]:
    return tuple(x for x in path.replace("\\", "/").split("/") if x and x != ".")


def noise_mask(paths: Sequence[str], entries: Iterable[str]) -> np.ndarray:
    """Boolean mask over ``paths``: True where some entry matches the path's trailing components."""
    by_len: dict[int, set[tuple[str, ...]]] = {}
    for e in entries:
        parts = _parts(e)
        if parts:
            by_len.setdefault(len(parts), set()).add(parts)
    mask = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        parts = _parts(path)
        mask[i] = any(len(parts) >= n and parts[-n:] in keys for n, keys in by_len.items())
    return mask


def noise_list_paths(folder: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """``(facescrub_noises.txt, megaface_noises.txt)`` in ``folder``; DataError if either is missing."""
    d = Path(folder)
    fs, mf = d / FACESCRUB_NOISES, d / MEGAFACE_NOISES
    for p in (fs, mf):
        if not p.is_file():
            raise DataError(f"--noise-lists {d}: {p.name} not found there (expected both "
                            f"{FACESCRUB_NOISES} and {MEGAFACE_NOISES})")
    return fs, mf
