"""``facelt prepare --dataset NAME``: build a benchmark's training split from its source data
(the datasets and what each ``--source`` is: ``pipelines.prepare_table``)."""
from __future__ import annotations

import argparse
import json

from facelt.cli.common import non_negative_int
from facelt.errors import FaceltError
from pipelines.prepare_table import PREPARE_TABLE, PrepareRequest


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="build a long-tailed split (MS1M-LT, ImageNet-LT, Places-LT, ...)",
        description="; ".join(f"{e.name}: {e.source}" for e in PREPARE_TABLE.values()) + ".")
    p.add_argument("--dataset", required=True, choices=list(PREPARE_TABLE),
                   help="which benchmark to build")
    p.add_argument("--source", help="source data (see above)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (0 or more)")
    p.add_argument("--target-images", type=float,
                   help="ms1m_lt: expected number of kept images (default 887,500, the paper's)")
    p.add_argument("--splits", help="imagenet_lt / places_lt: folder of the public OLTR lists "
                                    "(class order check; their val images are never drawn)")
    p.add_argument("--train-list",
                   help="imagenet_lt: the official ImageNet_LT_train.txt (OLTR release; "
                        "classifier-balancing's data/ImageNet_LT/), checked by its git blob hash "
                        "and copied into --out; no rebuild, no --source needed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.utils.io import ensure_writable_dir
    entry = PREPARE_TABLE[args.dataset]
    if args.train_list and not entry.takes_train_list:
        raise FaceltError(f"--train-list is for --dataset imagenet_lt, not {entry.name}")
    if entry.needs_source and not args.source and not args.train_list:
        raise FaceltError(f"--source is required for --dataset {entry.name}"
                          + (" (or --train-list FILE)" if entry.takes_train_list else ""))
    ensure_writable_dir(args.out, "--out")
    result = entry.build(PrepareRequest(out=args.out, source=args.source, seed=args.seed,
                                        target_images=args.target_images, splits=args.splits,
                                        train_list=args.train_list))
    print(json.dumps(result, indent=2, default=str))
    return 0
