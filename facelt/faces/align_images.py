"""Align every face photo under a folder to the ArcFace template (what ``facelt align`` runs).

Landmarks come from the sources of an :class:`AlignSources` spec, tried in order: a table
(CSV / JSON keyed by the image path relative to the photo folder), MegaFace/FaceScrub sidecars
(``<image>.json`` next to each image), the MTCNN detector (the default when no table or sidecars
are given, and the fallback for images a table lacks when named explicitly).

Outputs keep the relative paths and file names; each is written to a temporary name and renamed,
so an output that exists is complete and a rerun skips it. Images that could not be aligned are
listed in ``OUT/failures.txt`` (``relative/path<TAB>reason``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from facelt.data.decode import imread
from facelt.errors import DataError, FaceltError
from facelt.faces.align import check_image_size, norm_crop
from facelt.faces.landmarks import MTCNNDetector, read_landmarks, read_megaface_json
from facelt.utils.io import atomic_path, ensure_writable_dir, write_text
from facelt.utils.progress import progress

__all__ = ["IMAGE_SUFFIXES", "FAILURES_NAME", "LandmarkSource", "AlignSources", "AlignResult",
           "iter_images", "table_source", "sidecar_source", "detector_source", "build_sources",
           "align_one", "align_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FAILURES_NAME = "failures.txt"

#: ``(relative path, path, BGR image) -> (5 x 2 landmarks or None, why not)``
LandmarkSource = Callable[[str, Path, np.ndarray], "tuple[Optional[np.ndarray], str]"]


@dataclass(frozen=True)
class AlignSources:
    """Where landmarks come from: a ``landmarks`` table, ``sidecar_json`` files, the ``detector``
    (``"mtcnn"``; used anyway when nothing else is named) with optional ``detector_weights``
    (a folder with pnet.pt, rnet.pt, onet.pt) on ``device`` (auto / cpu / cuda)."""

    landmarks: Optional[Path] = None
    sidecar_json: bool = False
    detector: Optional[str] = None
    detector_weights: Optional[Path] = None
    device: str = "auto"


@dataclass
class AlignResult:
    """What :func:`align_folder` did: images aligned now, already there, failed (path, reason)."""

    total: int
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def iter_images(root: Path) -> Iterator[str]:
    """Image files under ``root`` as sorted relative POSIX paths, hidden entries skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                yield (rel_dir / name).as_posix()


def table_source(table: dict[str, np.ndarray]) -> LandmarkSource:
    """Landmarks looked up by relative path."""
    def find(rel: str, _path: Path, _img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        pts = table.get(rel)
        return (pts, "") if pts is not None else (None, "no landmarks in the table")
    return find


def sidecar_source(find_path: Callable[[Path], Path]) -> LandmarkSource:
    """Landmarks from the MegaFace/FaceScrub JSON file ``find_path(image)``."""
    def find(_rel: str, path: Path, _img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        side = find_path(path)
        if not side.is_file():
            return None, f"no landmark file {side.name}"
        return read_megaface_json(side), ""
    return find


def detector_source(detector: MTCNNDetector) -> LandmarkSource:
    """Landmarks detected in the image."""
    def find(_rel: str, _path: Path, img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        pts = detector.detect(img)
        return (pts, "") if pts is not None else (None, "no face detected")
    return find


def build_sources(spec: AlignSources) -> list[LandmarkSource]:
    """The landmark sources of ``spec`` in the order they are tried."""
    sources: list[LandmarkSource] = []
    if spec.landmarks is not None:
        sources.append(table_source(read_landmarks(spec.landmarks)))
    if spec.sidecar_json:
        sources.append(sidecar_source(lambda p: p.with_name(p.name + ".json")))
    if spec.detector == "mtcnn" or not sources:
        from facelt.parallel.process import pick_device
        device = str(pick_device(spec.device))
        sources.append(detector_source(MTCNNDetector(spec.detector_weights, device=device)))
    return sources


def align_one(rel: str, src: Path, dst: Path, sources: list[LandmarkSource],
              size: int) -> Optional[str]:
    """Align ``src`` into ``dst``; return None on success, else the reason it failed."""
    try:
        img = imread(src, cv2.IMREAD_COLOR)
    except DataError as exc:
        return f"unreadable image ({exc})"
    reasons = []
    for source in sources:
        try:
            pts, reason = source(rel, src, img)
        except DataError as exc:
            pts, reason = None, str(exc)
        if pts is not None:
            break
        reasons.append(reason)
    else:
        return "; ".join(reasons)
    try:
        crop = norm_crop(img, pts, size)
    except FaceltError as exc:
        return f"alignment failed: {exc}"
    ext = dst.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, crop, params)
    if not ok:
        return f"could not encode {ext}"
    with atomic_path(dst) as tmp:
        tmp.write_bytes(buf.tobytes())
    return None


def align_folder(images: Path, out: Path, spec: AlignSources, size: int = 112) -> AlignResult:
    """Align every image under ``images`` into ``out`` (same relative paths) at ``size``; images
    already in ``out`` are skipped; ``out/failures.txt`` lists the ones that failed."""
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder")
    if out.resolve() == images.resolve() or images.resolve() in out.resolve().parents:
        raise DataError(f"--out {out} must not be inside --images {images}")
    ensure_writable_dir(out, "--out")
    size = check_image_size(size)
    sources = build_sources(spec)
    rels = list(iter_images(images))
    result = AlignResult(total=len(rels))
    for rel in progress(rels, desc="align", unit="img"):
        dst = out / rel
        if dst.is_file():
            result.skipped += 1
            continue
        reason = align_one(rel, images / rel, dst, sources, size)
        if reason is None:
            result.done += 1
        else:
            result.failures.append((rel, reason))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / FAILURES_NAME, "".join(f"{r}\t{why}\n" for r, why in result.failures))
    return result
