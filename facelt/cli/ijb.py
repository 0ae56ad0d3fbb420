"""``facelt ijb``: IJB-B / IJB-C 1:1 template verification (TAR at FAR 1e-6 .. 1e-1) in
insightface's layout (IJB_ROOT/meta/<t>_*.txt, IJB_ROOT/loose_crop/), from a checkpoint, an ONNX
model or precomputed raw image features."""
from __future__ import annotations

import argparse
import json

from facelt.cli.face_model import add_model_args, check_onnx_output, model_spec
from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ijb", help="IJB-B/IJB-C 1:1 verification (TAR@FAR)", description=__doc__)
    p.add_argument("--root", required=True, help="IJB folder holding meta/ and loose_crop/")
    p.add_argument("--target", required=True, type=str.upper, choices=["IJBB", "IJBC"],
                   help="which benchmark: IJB-B or IJB-C (its meta/ file prefix)")
    add_model_args(p, "precomputed raw (flip-summed, unnormalised) image features .npy, one row "
                      "per line of meta/<t>_name_5pts_score.txt, in its order")
    p.add_argument("--no-detector-score", action="store_true",
                   help="do not weight image features by the detector score")
    p.add_argument("--normalize-images", action="store_true",
                   help="L2-normalise image features before aggregation (drops their norm)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="folder for report.md, roc.png, pair_scores.npy (and the image "
                                 "features when embedding: OUT/features.npy, resumable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.features.files import FeatureFile
    from facelt.faces.ijb import evaluate_ijb, ijb_paths, read_meta, write_ijb_report
    check_onnx_output(args)
    paths = ijb_paths(args.root, args.target)
    meta = read_meta(paths)
    if args.features:
        if len(args.features) != 1:
            raise FaceltError("give one --features file")
        ff = FeatureFile.open(args.features[0])
        if ff.rows != len(meta):
            raise FaceltError(f"features {ff.path}: {ff.rows} rows, but {paths.landmarks} lists "
                              f"{len(meta)} images")
        features = ff
    else:
        if not args.out:
            raise FaceltError("--out is needed when embedding: the image features are kept there "
                              "(OUT/features.npy) so an interrupted run resumes")
        from facelt.faces.ijb import ijb_image_features
        features = ijb_image_features(model_spec(args), meta, paths.images, args.out,
                                      args.batch_size, args.target)
    report, scores, roc = evaluate_ijb(features, meta, paths.pairs,
                                       detector_score=not args.no_detector_score,
                                       normalize_images=args.normalize_images)
    if args.out:
        write_ijb_report(report, scores, roc, args.out, args.target)
    if args.json:
        print(json.dumps({"target": args.target, **report}))
    else:
        print(f"{args.target}: {report['pairs']:,} pairs, {report['templates']:,} templates")
        print("  ".join(f"TAR@FAR={k}: {100 * v:.2f}%" for k, v in report["tar_at_far"].items()))
    return 0
