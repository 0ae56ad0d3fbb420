"""``facelt megaface-eval`` (MegaFace challenge-1 identification) and ``facelt megaface-convert``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facelt.cli.common import add_device_arg, positive_int
from facelt.errors import DataError
from facelt.jobs.megaface import NOISE_ENV, MegaFaceExtraction, MegaFaceJob, run_megaface_eval


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``megaface-eval``, ``megaface-convert`` and ``megaface-probes``."""
    p = subparsers.add_parser(
        "megaface-eval", help="MegaFace challenge-1 identification from feature files",
        description="Rank-1 / CMC of FaceScrub-style probes against 10..1M distractors, with "
                    "pseudo-shot buckets and attribute breakdown.  Features are stacked float32 .npy "
                    "files (rows aligned with their lists).")
    add_feature_args(p)
    add_extraction_args(p.add_argument_group("extract first (instead of feature files)"))
    add_protocol_args(p)
    p.set_defaults(func=run)
    register_convert(subparsers)
    register_probes(subparsers)


def add_feature_args(p: argparse.ArgumentParser) -> None:
    """The gallery sizes and the feature files of ``megaface-eval``."""
    p.add_argument("--gallery", required=True, metavar="SIZE[,SIZE...]",
                   help="distractors per gallery: 10, 100, 1K, 10K, 100K, 1M or an integer; a comma "
                        "list evaluates nested galleries in one pass")
    p.add_argument("--probe-features", type=Path, metavar="P.npy",
                   help="probe features (or give --checkpoint with --probe-images / --probe-rec)")
    p.add_argument("--probe-list", type=Path, metavar="P.csv",
                   help="CSV with header path,identity[,attribute...]; row i describes feature row i")
    p.add_argument("--distractor-features", type=Path, metavar="D.npy",
                   help="distractor features (or give --checkpoint with --distractor-images / "
                        "--distractor-rec)")


def add_extraction_args(x) -> None:
    """``--checkpoint`` / ``--onnx`` and the images they embed."""
    x.add_argument("--checkpoint", type=Path,
                   help="facelt checkpoint: extract features into OUT/features/")
    x.add_argument("--onnx", type=Path, metavar="MODEL",
                   help="ONNX recognition model instead of --checkpoint (insightface convention, "
                        "onnxruntime): extract features into OUT/features/")
    x.add_argument("--onnx-output", metavar="NAME",
                   help="with --onnx: the output holding the embedding, for a model with several")
    x.add_argument("--probe-images", type=Path, metavar="DIR",
                   help="probe image root; the probe list's 'path' column is relative to it")
    x.add_argument("--probe-rec", help="probe rec prefix (rows in rec order = probe list order)")
    x.add_argument("--distractor-images", type=Path, metavar="DIR", help="distractor image folder")
    x.add_argument("--distractor-rec", help="distractor rec prefix")
    x.add_argument("--train-rec", help="training rec prefix (for pseudo-shots)")
    x.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_device_arg(x)


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """Lists, protocol choices, the search and the report folder."""
    p.add_argument("--distractor-list", type=Path, metavar="D.txt",
                   help="one relative path per distractor row (or devkit JSON {\"path\": [...]}); "
                        "needed for --noise-lists and --gallery-order")
    p.add_argument("--gallery-order", type=Path, metavar="LIST",
                   help="take galleries as the first N distractors named in LIST instead of a seeded "
                        "permutation")
    p.add_argument("--train-features", type=Path, metavar="T.npy",
                   help="training features for the pseudo-shot buckets")
    p.add_argument("--noise-lists", nargs="?", const="", default=None, type=str, metavar="DIR",
                   help="refined protocol: drop the probes/distractors named in DIR/facescrub_noises.txt "
                        f"and DIR/megaface_noises.txt (DIR defaults to ${NOISE_ENV}, else the probe "
                        "list's folder)")
    p.add_argument("--index", choices=("flat", "ivf", "hnsw", "sq8"), default="flat",
                   help="flat = exact (default); others approximate, reported against exact")
    p.add_argument("--nprobe", type=positive_int, default=32, help="IVF cells visited (ivf, sq8)")
    p.add_argument("--seed", type=int, default=0, help="gallery permutation seed")
    p.add_argument("--pseudo-shot-threshold", "--threshold", dest="threshold", type=float,
                   default=0.7, help="pseudo-shot cosine threshold in [-1, 1] (strictly greater "
                                     "counts); --threshold is the older name")
    p.add_argument("--chunk-rows", type=positive_int, default=65536, help="rows read per chunk")
    p.add_argument("--no-normalize", action="store_true",
                   help="use raw inner products instead of L2-normalising features")
    p.add_argument("--out", type=Path, default=Path("megaface_report"), metavar="DIR",
                   help="report folder (report.json, report.md, plots; features/ when extracting)")


def register_convert(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser(
        "megaface-convert", help="MegaFace devkit .bin folder <-> stacked .npy + manifest",
        description="bin2npy: every *.bin under SRC -> DST.npy and a manifest of image paths; "
                    "npy2bin: SRC.npy + manifest -> DST/<path>_<algo>.bin")
    c.add_argument("direction", choices=("bin2npy", "npy2bin"), help="which way to convert")
    c.add_argument("src", type=Path, help="bin2npy: devkit feature folder; npy2bin: stacked .npy")
    c.add_argument("dst", type=Path, help="bin2npy: the .npy to write; npy2bin: output folder")
    c.add_argument("--manifest", type=Path, required=True, help="row manifest (written or read)")
    c.add_argument("--algo", default="facelt", help="algorithm tag in the .bin names (npy2bin)")
    c.set_defaults(func=run_convert)


def register_probes(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "megaface-probes", help="FaceScrub probe list (path,identity,gender) from the actor/actress lists",
        description="Write the probe CSV for megaface-eval from a FaceScrub image folder "
                    "(ROOT/<Identity_Name>/<image>) with gender from facescrub_actors.txt / "
                    "facescrub_actresses.txt.")
    p.add_argument("--root", required=True, type=Path, help="FaceScrub probe images, a folder per identity")
    p.add_argument("--actors", required=True, type=Path, help="facescrub_actors.txt")
    p.add_argument("--actresses", required=True, type=Path, help="facescrub_actresses.txt")
    p.add_argument("--out", required=True, type=Path, help="probe CSV to write")
    p.set_defaults(func=run_probes)


def run_probes(args: argparse.Namespace) -> int:
    import json
    from eval_megaface.facescrub import write_probe_list
    print(json.dumps(write_probe_list(args.root, args.actors, args.actresses, args.out)))
    return 0


def job_of(args: argparse.Namespace) -> MegaFaceJob:
    """The typed job of a parsed ``megaface-eval`` command line."""
    from eval_megaface.protocol import parse_gallery_sizes
    extract = MegaFaceExtraction(
        checkpoint=args.checkpoint, onnx=args.onnx, onnx_output=args.onnx_output,
        probe_images=args.probe_images, probe_rec=args.probe_rec,
        distractor_images=args.distractor_images, distractor_rec=args.distractor_rec,
        train_rec=args.train_rec, batch_size=args.batch_size)
    return MegaFaceJob(
        gallery_sizes=parse_gallery_sizes(args.gallery), probe_list=args.probe_list,
        out=args.out, probe_features=args.probe_features,
        distractor_features=args.distractor_features, train_features=args.train_features,
        distractor_list=args.distractor_list, gallery_order=args.gallery_order,
        noise_lists=args.noise_lists, index=args.index, nprobe=args.nprobe, seed=args.seed,
        threshold=args.threshold, chunk_rows=args.chunk_rows, normalize=not args.no_normalize,
        device=args.device, extract=extract)


def run(args: argparse.Namespace) -> int:
    report = run_megaface_eval(job_of(args))
    if report is None:  # another rank of torchrun: rank 0 reports
        return 0
    for r in report.get("results") or [report]:
        r1 = "n/a" if r["rank1"] is None else f"{100 * r['rank1']:.2f}%"
        print(f"gallery {r['gallery']:>9,}: rank-1 {r1} over {r['trials']:,} trials")
    print(f"report: {args.out / 'report.json'}", file=sys.stderr)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from eval_megaface.devkit import bins_to_npy, npy_to_bins

    if args.direction == "bin2npy":
        n = bins_to_npy(args.src, args.dst, args.manifest)
    else:
        if not args.src.is_file():
            raise DataError(f"{args.src}: not found")
        n = npy_to_bins(args.src, args.manifest, args.dst, algo=args.algo)
    print(f"{n} rows converted")
    return 0
