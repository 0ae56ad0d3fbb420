"""``facelt ijb``: IJB-B / IJB-C 1:1 template verification (TAR at FAR 1e-6 .. 1e-1) and 1:N
identification (closed-set rank-1/5/10 on G1 + G2, open-set TPIR at FPIR 1e-2 / 1e-1 per gallery)
in insightface's layout (IJB_ROOT/meta/<t>_*.txt and <t>_1N_*.csv, IJB_ROOT/loose_crop/), from a
checkpoint, an ONNX model or precomputed raw image features."""
from __future__ import annotations

import argparse
import json

from facelt.cli.face_model import add_model_args, check_onnx_output, model_spec
from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ijb", help="IJB-B/IJB-C 1:1 verification (TAR@FAR) and 1:N "
                                   "identification (rank-k, TPIR@FPIR)", description=__doc__)
    p.add_argument("--root", required=True, help="IJB folder holding meta/ and loose_crop/")
    p.add_argument("--target", required=True, type=str.upper, choices=["IJBB", "IJBC"],
                   help="which benchmark: IJB-B or IJB-C (its meta/ file prefix)")
    add_model_args(p, "precomputed raw (flip-summed, unnormalised) image features .npy, one row "
                      "per line of meta/<t>_name_5pts_score.txt, in its order")
    p.add_argument("--no-detector-score", action="store_true",
                   help="do not weight image features by the detector score")
    p.add_argument("--normalize-images", action="store_true",
                   help="L2-normalise image features before aggregation (drops their norm)")
    p.add_argument("--tar-rule", choices=["strict", "insightface"], default="strict",
                   help="1:1 TAR@FAR: strict: the highest TPR with FPR <= FAR; insightface: the "
                        "TPR of the ROC point whose FPR is nearest FAR (scikit-learn roc_curve, "
                        "intermediate points dropped), the rule of insightface's eval_ijbc.py and "
                        "of published IJB tables")
    # --- 1:N (facelt/faces/ijb_1n.py)
    p.add_argument("--protocol", choices=["11", "1n", "both"], default="11",
                   help="11: 1:1 verification; 1n: 1:N identification (meta/<t>_1N_gallery_G1.csv, "
                        "_G2.csv (IJB-B: _S1, _S2), _1N_probe_mixed.csv); both: the two, from the "
                        "same image features. JSON of both: {target, \"11\": {...}, "
                        "\"1n\": {...}}")
    p.add_argument("--search-mib", type=int, default=256,
                   help="1:N: memory budget (MiB) of one block of the probe x gallery score matrix")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="folder for report.md, roc.png, pair_scores.npy (1:1), "
                                 "report_1n.{json,md}, candidates_1n.npz (1:N), and the image "
                                 "features when embedding: OUT/features.npy, resumable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.faces.ijb import evaluate_ijb, ijb_paths, read_meta, write_ijb_report
    check_onnx_output(args)
    one_one, one_n = args.protocol in ("11", "both"), args.protocol in ("1n", "both")
    paths = ijb_paths(args.root, args.target, pairs=one_one)
    lists = None
    if one_n:  # read and check the 1:N lists before any embedding
        from facelt.faces.ijb_1n import ijb_1n_paths, read_1n_lists
        lists = read_1n_lists(ijb_1n_paths(args.root, args.target))
    if args.out:  # before any work: nothing an input holds is overwritten, the folder is writable
        refuse_out_over_inputs(args, paths)
    meta = read_meta(paths)
    features = _image_features(args, meta, paths)
    blocks = {}
    if one_one:
        report, scores, roc = evaluate_ijb(features, meta, paths.pairs,
                                           detector_score=not args.no_detector_score,
                                           normalize_images=args.normalize_images,
                                           tar_rule=args.tar_rule)
        if args.out:
            write_ijb_report(report, scores, roc, args.out, args.target)
        blocks["11"] = report
    if one_n:
        blocks["1n"] = _run_1n(args, features, meta, lists, paths)
    _print(args, blocks)
    return 0


def refuse_out_over_inputs(args: argparse.Namespace, paths) -> None:
    from facelt.faces.ijb import ijb_output_files
    from facelt.utils.io import ensure_writable_dir
    from facelt.utils.outputs import refuse_output_over_inputs
    inputs = [*(args.features or []), args.checkpoint, args.onnx, args.config, paths.faces,
              paths.pairs, paths.landmarks]
    refuse_output_over_inputs(args.out, inputs, "--out", written=ijb_output_files(args.out, embedding=not args.features))
    ensure_writable_dir(args.out, "--out")


def _image_features(args: argparse.Namespace, meta, paths):
    from facelt.features.files import FeatureFile
    if args.features:
        if len(args.features) != 1:
            raise FaceltError("give one --features file")
        ff = FeatureFile.open(args.features[0])
        if ff.rows != len(meta):
            raise FaceltError(f"features {ff.path}: {ff.rows} rows, but {paths.landmarks} lists "
                              f"{len(meta)} images")
        return ff
    if not args.out:
        raise FaceltError("--out is needed when embedding: the image features are kept there "
                          "(OUT/features.npy) so an interrupted run resumes")
    from facelt.faces.ijb import ijb_image_features
    return ijb_image_features(model_spec(args), meta, paths.images, args.out, args.batch_size,
                              args.target)


def _print(args: argparse.Namespace, blocks: dict) -> None:
    if args.json:
        if args.protocol == "both":  # {"target", "11": 1:1 report, "1n": 1:N report}
            print(json.dumps({"target": args.target, **blocks}))
        else:
            print(json.dumps({"target": args.target, **blocks[args.protocol]}))
        return
    if "11" in blocks:
        report = blocks["11"]
        print(f"{args.target}: {report['pairs']:,} pairs, {report['templates']:,} templates")
        print(tar_at_far_line(report))
        print(f"TAR rule: {report['tar_rule']}")
    if "1n" in blocks:
        from facelt.faces.ijb_1n import summary_lines
        print("\n".join(summary_lines(blocks["1n"], args.target)))


def tar_at_far_line(report: dict) -> str:
    """``TAR@FAR=1e-06: 12.00% (achieved 0.00%)  ...``; a FAR the impostor pairs cannot measure
    says so (``not measurable from N impostor pairs``)."""
    cells = []
    for k, v in report["tar_at_far"].items():
        if not report["far_measurable"][k]:
            cells.append(f"TAR@FAR={k}: not measurable from {report['impostor']:,} impostor pairs")
        else:
            cells.append(f"TAR@FAR={k}: {100 * v:.2f}% (achieved {100 * report['achieved_far'][k]:.4g}%)")
    return "  ".join(cells)


def _run_1n(args: argparse.Namespace, features, meta, lists, paths) -> dict:
    import sys

    from facelt.faces.ijb_1n import evaluate_ijb_1n, published_size_note, write_1n_report
    report, result = evaluate_ijb_1n(features, meta, lists,
                                     detector_score=not args.no_detector_score,
                                     normalize_images=args.normalize_images,
                                     block_bytes=max(1, args.search_mib) << 20,
                                     features_name=f"features {features.path}",
                                     faces_file=str(paths.faces))
    note = published_size_note(report, args.target)
    if note:
        print(note, file=sys.stderr)
    if args.out:
        write_1n_report(report, result, lists, args.out, args.target)
    return report
