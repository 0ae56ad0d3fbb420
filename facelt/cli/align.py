"""``facelt align``: crop every face photo under a folder to the ArcFace template.

Landmarks come from a table (``--landmarks FILE.csv|.json``, keyed by the image path relative
to ``--images``), from MegaFace/FaceScrub sidecars (``--sidecar-json``: ``<image>.json`` next
to each image), or from the MTCNN detector (``--detector mtcnn``; the default when no table or
sidecars are given, and the fallback for images a table lacks when named explicitly).

Outputs keep the relative paths and file names; each is written to a temporary name and
renamed, so an output that exists is complete and a rerun skips it.  Images that could not be
aligned are listed in ``OUT/failures.txt`` (``relative/path<TAB>reason``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from facelt.faces.align import check_image_size, norm_crop
from facelt.cli.common import add_device_arg
from facelt.errors import DataError, FaceltError
from facelt.utils.io import ensure_writable_dir
from facelt.faces.landmarks import MTCNNDetector, read_landmarks, read_megaface_json
from facelt.utils.io import atomic_path, write_text
from facelt.utils.progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FAILURES_NAME = "failures.txt"

LandmarkSource = Callable[[str, Path, np.ndarray], "tuple[Optional[np.ndarray], str]"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align", help="align face photos to the ArcFace 112x112 template (5-point similarity)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, type=Path, help="folder of photos (searched "
                   "recursively for .jpg/.jpeg/.png)")
    p.add_argument("--out", required=True, type=Path, help="output folder (same relative paths)")
    p.add_argument("--landmarks", type=Path, default=None,
                   help="landmark table: CSV 'path,x1,y1,...,x5,y5' or JSON {path: record}")
    p.add_argument("--sidecar-json", action="store_true",
                   help="read MegaFace/FaceScrub '<image>.json' landmark files next to the images")
    p.add_argument("--size", type=int, default=112, help="crop size (multiple of 112 or 128)")
    p.add_argument("--detector", choices=["mtcnn"], default=None,
                   help="detect landmarks with MTCNN (needs facenet-pytorch); the default when "
                        "no landmark table or sidecars are given, else the fallback")
    p.add_argument("--detector-weights", type=Path, default=None,
                   help="folder with pnet.pt, rnet.pt, onet.pt to use instead of the packaged ones")
    add_device_arg(p)
    p.set_defaults(func=run)


def iter_images(root: Path) -> Iterator[str]:
    """Image files under ``root`` as sorted relative POSIX paths, hidden entries skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                yield (rel_dir / name).as_posix()


def _table_source(table: dict[str, np.ndarray]) -> LandmarkSource:
    def find(rel: str, _path: Path, _img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        pts = table.get(rel)
        return (pts, "") if pts is not None else (None, "no landmarks in the table")
    return find


def _sidecar_source(find_path: Callable[[Path], Path]) -> LandmarkSource:
    def find(_rel: str, path: Path, _img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        side = find_path(path)
        if not side.is_file():
            return None, f"no landmark file {side.name}"
        return read_megaface_json(side), ""
    return find


def _detector_source(detector: MTCNNDetector) -> LandmarkSource:
    def find(_rel: str, _path: Path, img: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        pts = detector.detect(img)
        return (pts, "") if pts is not None else (None, "no face detected")
    return find


def build_sources(args: argparse.Namespace) -> list[LandmarkSource]:
    """The landmark sources in the order they are tried."""
    sources: list[LandmarkSource] = []
    if args.landmarks is not None:
        sources.append(_table_source(read_landmarks(args.landmarks)))
    if args.sidecar_json:
        sources.append(_sidecar_source(lambda p: p.with_name(p.name + ".json")))
    if args.detector == "mtcnn" or not sources:
        from facelt.parallel.process import pick_device
        device = str(pick_device(args.device))
        sources.append(_detector_source(MTCNNDetector(args.detector_weights, device=device)))
    return sources


def align_one(rel: str, src: Path, dst: Path, sources: list[LandmarkSource],
              size: int) -> Optional[str]:
    """Align ``src`` into ``dst``; return None on success, else the reason it failed."""
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        return "unreadable image"
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


def run(args: argparse.Namespace) -> int:
    images: Path = args.images
    out: Path = args.out
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder")
    if out.resolve() == images.resolve() or images.resolve() in out.resolve().parents:
        raise DataError(f"--out {out} must not be inside --images {images}")
    ensure_writable_dir(out, "--out")
    size = check_image_size(args.size)
    sources = build_sources(args)

    rels = list(iter_images(images))
    failures: list[tuple[str, str]] = []
    done = skipped = 0
    for rel in progress(rels, desc="align", unit="img"):
        dst = out / rel
        if dst.is_file():
            skipped += 1
            continue
        reason = align_one(rel, images / rel, dst, sources, size)
        if reason is None:
            done += 1
        else:
            failures.append((rel, reason))

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / FAILURES_NAME, "".join(f"{r}\t{why}\n" for r, why in failures))
    print(f"aligned {done}, already done {skipped}, failed {len(failures)} of {len(rels)} images "
          f"-> {out}" + (f" (see {out / FAILURES_NAME})" if failures else ""))
    return 0
