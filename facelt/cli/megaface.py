"""``facelt megaface-eval`` (MegaFace challenge-1 identification) and ``facelt megaface-convert``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from facelt.cli.common import add_device_arg, positive_int
from facelt.utils.io import ensure_writable_dir
from facelt.errors import ConfigError, DataError

NOISE_ENV = "FACELT_NOISE_LISTS"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``megaface-eval``, ``megaface-convert`` and ``megaface-probes``."""
    p = subparsers.add_parser(
        "megaface-eval", help="MegaFace challenge-1 identification from feature files",
        description="Rank-1 / CMC of FaceScrub-style probes against 10..1M distractors, with "
                    "pseudo-shot buckets and attribute breakdown.  Features are stacked float32 .npy "
                    "files (rows aligned with their lists).")
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
    x = p.add_argument_group("extract first (instead of feature files)")
    x.add_argument("--checkpoint", help="facelt checkpoint: extract features into OUT/features/")
    x.add_argument("--onnx", metavar="MODEL",
                   help="ONNX recognition model instead of --checkpoint (insightface convention, "
                        "onnxruntime): extract features into OUT/features/")
    x.add_argument("--probe-images", type=Path, metavar="DIR",
                   help="probe image root; the probe list's 'path' column is relative to it")
    x.add_argument("--probe-rec", help="probe rec prefix (rows in rec order = probe list order)")
    x.add_argument("--distractor-images", type=Path, metavar="DIR", help="distractor image folder")
    x.add_argument("--distractor-rec", help="distractor rec prefix")
    x.add_argument("--train-rec", help="training rec prefix (for pseudo-shots)")
    x.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_device_arg(x)
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
                   default=0.7, help="pseudo-shot cosine threshold (strictly greater counts); "
                                     "--threshold is the older name")
    p.add_argument("--chunk-rows", type=positive_int, default=65536, help="rows read per chunk")
    p.add_argument("--no-normalize", action="store_true",
                   help="use raw inner products instead of L2-normalising features")
    p.add_argument("--out", type=Path, default=Path("megaface_report"), metavar="DIR",
                   help="report folder (report.json, report.md, plots; features/ when extracting)")
    p.set_defaults(func=run)

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
    register_probes(subparsers)


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


def _noise_dir(arg: Optional[str], probe_list: Path) -> Optional[Path]:
    import os
    if arg is None:
        return None
    if arg:
        return Path(arg)
    env = os.environ.get(NOISE_ENV)
    return Path(env) if env else probe_list.resolve().parent


def run(args: argparse.Namespace) -> int:
    if args.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {args.chunk_rows}: must be >= 1")
    ensure_writable_dir(args.out, "--out")       # before the evaluation, not after it
    from facelt.parallel import process as D
    dist = D.setup(args.device)  # under torchrun: extraction and the distractor search are split
    try:
        return evaluate_megaface(args, dist)
    finally:
        D.teardown(after_error=sys.exc_info()[0] is not None)


def evaluate_megaface(args: argparse.Namespace, dist) -> int:
    """``megaface-eval`` in this process (one rank of torchrun or alone); rank 0 reports."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    from eval_megaface.protocol import parse_gallery_sizes
    from eval_megaface.search import default_backend
    from eval_megaface.report import write_report

    if args.probe_list is None:
        from pipelines.getting_data import MEGAFACE_HOWTO
        raise ConfigError(f"--probe-list is required (the probe CSV). {MEGAFACE_HOWTO}")
    probe_features, distractor_features = args.probe_features, args.distractor_features
    train_features, distractor_list = args.train_features, args.distractor_list
    made = None
    if args.checkpoint and args.onnx:
        raise ConfigError("give --checkpoint or --onnx, not both")
    if args.onnx and dist is not None and dist.distributed:
        raise ConfigError("--onnx embeds in one process: run megaface-eval --onnx without torchrun "
                          "(or extract first, then run torchrun megaface-eval on the features)")
    if args.checkpoint or args.onnx:
        made = extract_with_onnx(args) if args.onnx else extract_with_checkpoint(args, dist)
        probe_features = made.probe or probe_features
        train_features = made.train or train_features
        if made.distractor is not None:
            distractor_features = made.distractor
            distractor_list = checked_distractor_list(distractor_list, made.distractor,
                                                      made.distractor_rows)
    if probe_features is None or distractor_features is None:
        raise ConfigError("give --probe-features and --distractor-features, or --checkpoint with "
                          "--probe-images/--probe-rec and --distractor-images/--distractor-rec "
                          "(or --onnx MODEL with them)")
    cfg = MegaFaceEvalConfig(
        gallery_sizes=parse_gallery_sizes(args.gallery), probe_features=probe_features,
        probe_list=args.probe_list, distractor_features=distractor_features,
        distractor_list=distractor_list, gallery_order_list=args.gallery_order,
        train_features=train_features, noise_dir=_noise_dir(args.noise_lists, args.probe_list),
        index=args.index, seed=args.seed, chunk_rows=args.chunk_rows, threshold=args.threshold,
        normalize=not args.no_normalize, nprobe=args.nprobe,
        backend=default_backend(args.device))
    report = run_evaluation(cfg, dist)
    if report is None:  # another rank: rank 0 merges its search and reports
        return 0
    if made is not None and made.stage is not None:
        report["meta"]["stage"] = made.stage
    write_report(report, args.out)
    for r in report.get("results") or [report]:
        r1 = "n/a" if r["rank1"] is None else f"{100 * r['rank1']:.2f}%"
        print(f"gallery {r['gallery']:>9,}: rank-1 {r1} over {r['trials']:,} trials")
    print(f"report: {args.out / 'report.json'}", file=sys.stderr)
    return 0


@dataclass
class ExtractedFeatures:
    """Feature files made from ``--checkpoint`` (None: that set was not asked for)."""

    probe: Optional[Path] = None
    distractor: Optional[Path] = None
    train: Optional[Path] = None
    distractor_rows: Optional[list[str]] = None
    stage: Optional[int] = None  # the checkpoint's training stage (shown in the report)


def extract_with_checkpoint(args: argparse.Namespace, dist=None) -> ExtractedFeatures:
    """Embed the probe / distractor / training images with ``--checkpoint`` (resumable) into
    ``OUT/features/``; returns the files made."""
    import csv

    from facelt.data.build import eval_transform
    from facelt.data.images import FolderImages
    from facelt.features.extract import dataset_for, extract_checkpoint_features
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.parallel.process import pick_device
    net, cfg, state = net_from_checkpoint(args.checkpoint, dist.device if dist is not None
                                          else pick_device(args.device))
    feats = Path(args.out) / "features"
    jobs = []
    if args.probe_rec or args.probe_images:
        if args.probe_rec:
            ds, rows = dataset_for(cfg, rec=args.probe_rec)
        else:
            with open(args.probe_list, newline="") as fh:
                rows = [r["path"] for r in csv.DictReader(fh)]
            ds = FolderImages([args.probe_images / r for r in rows], eval_transform(cfg.data),
                              channels=cfg.data.channels)
        jobs.append(("probe", "probes", ds, rows))
    if args.distractor_rec or args.distractor_images:
        ds, rows = dataset_for(cfg, rec=args.distractor_rec,
                               images=str(args.distractor_images) if args.distractor_images else None)
        jobs.append(("distractor", "distractors", ds, rows))
    if args.train_rec:
        ds, rows = dataset_for(cfg, rec=args.train_rec)
        jobs.append(("train", "train", ds, rows))
    if not jobs:
        raise ConfigError("--checkpoint needs --probe-images/--probe-rec, --distractor-images/"
                          "--distractor-rec or --train-rec")
    made = ExtractedFeatures(stage=int(state["stage"]))
    for field_name, name, ds, rows in jobs:
        out = feats / f"{name}.npy"  # reused only when made from this checkpoint and these rows
        extract_checkpoint_features(args.checkpoint, ds, rows, out, args.batch_size,
                                    device=args.device, net=net, dist=dist)
        setattr(made, field_name, out)
        if name == "distractors":
            made.distractor_rows = rows
    return made


def extract_with_onnx(args: argparse.Namespace) -> ExtractedFeatures:
    """``--onnx``: embed the probe / distractor / training images with an ONNX model (flip-sum +
    L2, resumable, :mod:`facelt.faces.onnx_io`) into ``OUT/features/``, rows named as with
    ``--checkpoint``; returns the files made."""
    import csv

    from facelt.features.embed import files_source, image_source
    from facelt.faces.onnx_io import OnnxEmbedder, extract_onnx_source_features
    jobs = []
    if args.probe_rec:
        jobs.append(("probe", "probes", image_source(rec=args.probe_rec)))
    elif args.probe_images:
        with open(args.probe_list, newline="") as fh:
            rows = [r["path"] for r in csv.DictReader(fh)]
        jobs.append(("probe", "probes", files_source([args.probe_images / r for r in rows], rows)))
    if args.distractor_rec or args.distractor_images:
        jobs.append(("distractor", "distractors",
                     image_source(rec=args.distractor_rec,
                                  images=str(args.distractor_images) if args.distractor_images else None)))
    if args.train_rec:
        jobs.append(("train", "train", image_source(rec=args.train_rec)))
    if not jobs:
        raise ConfigError("--onnx needs --probe-images/--probe-rec, --distractor-images/"
                          "--distractor-rec or --train-rec")
    embedder = OnnxEmbedder(args.onnx)
    feats = Path(args.out) / "features"
    made = ExtractedFeatures()
    for field_name, name, src in jobs:
        out = extract_onnx_source_features(embedder, src, feats / f"{name}.npy", args.batch_size)
        setattr(made, field_name, out)
        if name == "distractors":
            made.distractor_rows = list(src.rows)
    return made


def checked_distractor_list(distractor_list: Optional[Path], features: Path,
                            rows: list[str]) -> Path:
    """Noise lists and --gallery-order address distractors by the list's rows: the extracted rows
    must be that list, in that order. Returns the list to use (without one given, the
    extraction's manifest)."""
    from facelt.features.files import read_manifest
    from facelt.features.extract import manifest_path
    if distractor_list is None:
        return manifest_path(features)
    given = read_manifest(distractor_list)
    if given != rows:
        first = next((i for i, (a, b) in enumerate(zip(given, rows)) if a != b),
                     min(len(given), len(rows)))
        raise DataError(
            f"--distractor-list {distractor_list} ({len(given)} rows) does not list the "
            f"extracted distractors in order ({len(rows)} rows, {manifest_path(features)}): "
            f"first difference at row {first}: "
            f"{given[first] if first < len(given) else '<end>'!r} vs "
            f"{rows[first] if first < len(rows) else '<end>'!r}")
    return distractor_list


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
