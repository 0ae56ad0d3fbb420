"""``facelt verify``: insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin ...) with
insightface's 10-fold protocol, from a checkpoint, an ONNX model or precomputed features."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.cli.face_model import add_model_args, embedder_from_args
from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="accuracy on insightface verification .bin files",
                       description=__doc__)
    p.add_argument("--bin", dest="bins", action="append", required=True,
                   help="a verification .bin (repeatable)")
    add_model_args(p, "precomputed features .npy, 2N rows in the .bin's image order (one "
                      "--features per --bin, in the same order)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="folder for report.json and report.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.features.files import FeatureFile
    from facelt.faces.verification import VerificationSet, read_bin
    if args.features and len(args.features) != len(args.bins):
        raise FaceltError(f"{len(args.bins)} --bin files but {len(args.features)} --features files: "
                          "give one features file per .bin, in the same order")
    embedder = embedder_from_args(args)
    results = []
    for i, path in enumerate(args.bins):
        if args.features:
            from facelt.faces.verification import verification_metrics
            _, issame = read_bin(path)  # features need no image decoding
            ff = FeatureFile.open(args.features[i])
            if ff.rows != 2 * len(issame):
                raise FaceltError(f"features {ff.path}: {ff.rows} rows, but {path} holds "
                                  f"{len(issame)} pairs ({2 * len(issame)} images)")
            res = {"name": Path(path).stem, **verification_metrics(ff.read(0, ff.rows), issame)}
        else:
            vs = VerificationSet.load(path, name=Path(path).stem)
            res = vs.evaluate_model(embedder, batch_size=args.batch_size, flip=not args.no_flip)
        res["file"] = str(path)
        results.append(res)
    if args.out:
        _write(results, Path(args.out))
    if args.json:
        keep = ("name", "file", "pairs", "accuracy", "std", "threshold", "xnorm", "val", "val_std",
                "far")
        rows = [{k: r[k] for k in keep if k in r} for r in results]
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        for r in results:
            xn = f"  XNorm {r['xnorm']:.4f}" if "xnorm" in r else ""
            print(f"{r['name']}: {r['pairs']} pairs  accuracy {100 * r['accuracy']:.2f}% "
                  f"+- {100 * r['std']:.2f}  threshold {r['threshold']:.3f}  "
                  f"TAR@FAR={r['far_target']:g} {100 * r['val']:.2f}%{xn}")
    return 0


def _write(results: list[dict], out: Path) -> None:
    from facelt.utils.io import write_json, write_text
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", results)
    lines = ["# Face verification (insightface protocol)", "",
             "10 folds in file order; best training-fold threshold on squared L2 distance of "
             "L2-normalised flip-summed embeddings; accuracy = mean +- std of the fold accuracies.",
             "", "| set | pairs | accuracy | std | threshold | XNorm | TAR@FAR=1e-3 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        xn = f"{r['xnorm']:.4f}" if "xnorm" in r else "n/a"
        lines.append(f"| {r['name']} | {r['pairs']:,} | {100 * r['accuracy']:.2f}% | "
                     f"{100 * r['std']:.2f} | {r['threshold']:.3f} | {xn} | {100 * r['val']:.2f}% |")
    write_text(out / "report.md", "\n".join(lines) + "\n")
