"""``facelt verify``: insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin ...) with
insightface's 10-fold protocol, from a checkpoint, an ONNX model or precomputed features."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.cli.face_model import add_model_args, model_spec
from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="accuracy on insightface verification .bin files",
                       description=__doc__)
    p.add_argument("--bin", dest="bins", action="append", required=True,
                   help="a verification .bin (repeatable)")
    add_model_args(p, "precomputed features .npy, 2N rows in the .bin's image order (one "
                      "--features per --bin, in the same order)")
    p.add_argument("--resize", action="store_true",
                   help="resize the .bin's images to the model's input size (bilinear); without "
                        "it, images of another size are an error")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="folder for report.json and report.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.faces.face_model import face_embedder
    from facelt.faces.verification import (VerificationSet, tar_text, verification_report_files,
                                           verify_features_file, write_verification_report)
    if args.features and len(args.features) != len(args.bins):
        raise FaceltError(f"{len(args.bins)} --bin files but {len(args.features)} --features files: "
                          "give one features file per .bin, in the same order")
    if args.out:  # before any work: nothing an input holds is overwritten, the folder is writable
        from facelt.utils.io import ensure_writable_dir
        from facelt.utils.outputs import refuse_output_over_inputs
        refuse_output_over_inputs(args.out, [*args.bins, *(args.features or []), args.checkpoint,
                                             args.onnx, args.config], "--out",
                                  written=verification_report_files(args.out))
        ensure_writable_dir(args.out, "--out")
    embedder = face_embedder(model_spec(args))
    results = []
    for i, path in enumerate(args.bins):
        if args.features:
            res = verify_features_file(path, args.features[i])  # no image decoding
        else:
            vs = VerificationSet.load_for_model(path, embedder.input_size, resize=args.resize,
                                                name=Path(path).stem)
            res = vs.evaluate_model(embedder, batch_size=args.batch_size, flip=not args.no_flip)
        res["file"] = str(path)
        results.append(res)
    if args.out:
        write_verification_report(results, args.out)
    if args.json:
        keep = ("name", "file", "pairs", "accuracy", "std", "threshold", "xnorm", "val", "val_std",
                "far", "far_target", "impostors", "far_measurable")
        rows = [{k: r[k] for k in keep if k in r} for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        for r in results:
            xn = f"  XNorm {r['xnorm']:.4f}" if "xnorm" in r else ""
            print(f"{r['name']}: {r['pairs']} pairs  accuracy {100 * r['accuracy']:.2f}% "
                  f"+- {100 * r['std']:.2f}  threshold {r['threshold']:.3f}  "
                  f"{tar_text(r['val'], r['far_target'], r['far'], r['impostors'])}{xn}")
    return 0
