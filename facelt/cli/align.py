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
from pathlib import Path

from facelt.cli.common import add_device_arg


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


def run(args: argparse.Namespace) -> int:
    from facelt.faces.align_images import FAILURES_NAME, AlignSources, align_folder
    out: Path = args.out
    spec = AlignSources(landmarks=args.landmarks, sidecar_json=args.sidecar_json,
                        detector=args.detector, detector_weights=args.detector_weights,
                        device=args.device)
    r = align_folder(args.images, out, spec, args.size)
    print(f"aligned {r.done}, already done {r.skipped}, failed {len(r.failures)} of {r.total} "
          f"images -> {out}" + (f" (see {out / FAILURES_NAME})" if r.failures else ""))
    return 0
