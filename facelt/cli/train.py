"""``facelt train``: the two OLTR stages from a recipe."""
from __future__ import annotations

import argparse
from pathlib import Path

from facelt.cli.common import add_config_args, add_device_arg, config_from_args
from facelt.utils.io import ensure_writable_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train stage 1, stage 2 or both",
                       description="Train the OLTR model in the paper's two stages. Under torchrun "
                                   "each process trains its share (DDP).")
    add_config_args(p)
    p.add_argument("--stage", choices=["1", "2", "all"], default="all",
                   help="which stage to train; all = stage 1 then stage 2")
    p.add_argument("--out", help="output folder (default: config 'out' or runs/<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/stageN/checkpoint.pt where it exists")
    p.add_argument("--init", help="stage-2 start checkpoint (default: OUT/stage1/best.pt, or "
                                  "OUT/stage1/checkpoint.pt with stage2.init_weights=last)")
    add_device_arg(p, from_recipe=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.jobs.train import train
    from facelt.errors import DataError
    from facelt.models.components import check_component_names
    from pipelines.getting_data import missing_data_message
    cfg = check_component_names(config_from_args(args))
    missing = missing_data_message(cfg)
    if missing:
        raise DataError(missing)
    out = Path(args.out or cfg.out or f"runs/{cfg.name}")
    stages = [1, 2] if args.stage == "all" else [int(args.stage)]
    from facelt.utils.outputs import refuse_output_over_inputs
    written = [out / f"stage{s}" / name for s in stages for name in ("checkpoint.pt", "best.pt")]
    refuse_output_over_inputs(out, [args.init, args.config], "--out", written=written)
    ensure_writable_dir(out, "--out")
    results = train(cfg, stages, out, resume=args.resume,
                    init_checkpoint=Path(args.init) if args.init else None)
    from facelt.parallel.process import is_primary_process
    if is_primary_process():  # under torchrun: one final line, rank 0's
        for r in results:
            print(f"stage {r.stage}: {r.checkpoint}")
    return 0
