"""``facelt classify``: the OLTR report for a checkpoint, or labels for image files."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.cli.common import add_config_args, add_device_arg, config_from_args
from facelt.utils.io import ensure_writable_dir
from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="evaluate closed/open set, or classify images",
                       description="With --out: evaluate test + open splits and write report.json "
                                   "and predictions.csv. With image paths: print a label (or "
                                   "'unknown') per image.")
    add_config_args(p)
    p.add_argument("--checkpoint", help="a checkpoint file (evaluated as it is) or a stage folder "
                   "(default: OUT/stage2 of the recipe's run, weights chosen by --weights)")
    p.add_argument("--weights", choices=["auto", "best", "last"], default="auto",
                   help="in a stage folder: best.pt (best-on-val epoch, its centroids included, "
                        "as the OLTR reference evaluates), checkpoint.pt (the last epoch), or "
                        "auto: best.pt when the run has a val split, else the last epoch")
    p.add_argument("--out", help="report folder (default: eval/ beside the checkpoint)")
    p.add_argument("--threshold", type=float, help="open-set rejection threshold on max softmax "
                   "(default: the checkpoint's eval.threshold)")
    add_device_arg(p)
    p.add_argument("images", nargs="*", help="image files to classify")
    p.set_defaults(func=run)


def no_trained_model_message(cfg, ckpt: str, args: argparse.Namespace) -> str:
    """What to do when the recipe's run has no checkpoint yet: get the data (when absent) and
    train, then classify again."""
    from pipelines.getting_data import missing_data_message
    recipe = f"--dataset {args.dataset}" if args.dataset else f"--config {args.config}"
    text = f"no trained model for {cfg.name}: {ckpt} not found."
    missing = missing_data_message(cfg)
    if missing:
        text += f" {missing}."
    else:
        text += f" Next: facelt train {recipe} (or give --checkpoint)."
    return text + f" Then: facelt classify {recipe} --out REPORT_DIR"


def run(args: argparse.Namespace) -> int:
    from facelt.models.eval_weights import evaluation_weights
    from facelt.openset.classify import classify_images, evaluate_checkpoint
    cfg = config_from_args(args) if (args.config or args.dataset) else None
    target = args.checkpoint
    if target is None:
        if cfg is None:
            raise FaceltError("give --checkpoint, or --config/--dataset to use the recipe's run")
        stage_dir = Path(cfg.out or f"runs/{cfg.name}") / "stage2"
        if not (stage_dir / "checkpoint.pt").is_file():
            raise FaceltError(no_trained_model_message(cfg, str(stage_dir / "checkpoint.pt"), args))
        target = stage_dir
    ckpt = str(evaluation_weights(target, args.weights))
    if args.images:
        for path, label, score in classify_images(ckpt, args.images, args.threshold, args.device):
            print(f"{path}\t{label}\t{score:.4f}")
        return 0
    out = args.out or str(Path(ckpt).parent / "eval")
    ensure_writable_dir(out, "--out")
    report = evaluate_checkpoint(ckpt, out, data=cfg.data if cfg else None,
                                 threshold=args.threshold, device=args.device,
                                 shot_rule=cfg.eval.shot_rule if cfg else None)
    show = {k: report[k] for k in ("closed_set", "open_set", "threshold", "weights")}
    print(json.dumps(show, indent=2))
    print(f"report: {Path(out) / 'report.json'}")
    return 0
