"""``facelt prepare --dataset NAME``: build a benchmark's training split from its source data."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.errors import FaceltError

DATASETS = ("ms1m_lt", "imagenet_lt", "places_lt", "fashion_lt", "demo")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="build a long-tailed split (MS1M-LT, ImageNet-LT, Places-LT, ...)",
        description="ms1m_lt: sample MS1M-LT from an insightface rec (--source PREFIX or the folder "
                    "holding train.rec); imagenet_lt / places_lt: draw the Pareto long-tailed train "
                    "list (+ val) from a class-folder train directory; fashion_lt: the real "
                    "Fashion-MNIST-LT check set from the IDX files; demo: the generated demo lists.")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which benchmark to build")
    p.add_argument("--source", help="source data (see above)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--target-images", type=float,
                   help="ms1m_lt: expected number of kept images (default 887,500, the paper's)")
    p.add_argument("--splits", help="imagenet_lt / places_lt: folder of the public OLTR lists "
                                    "(class order check; their val images are never drawn)")
    p.set_defaults(func=run)


def _ms1m_source(source: str) -> str:
    s = Path(source)
    if s.is_dir():
        return str(s / "train")
    return str(s.with_suffix("")) if s.suffix in (".rec", ".idx") else source


def run(args: argparse.Namespace) -> int:
    name = args.dataset
    if name not in ("fashion_lt", "demo") and not args.source:
        raise FaceltError(f"--source is required for --dataset {name}")
    from facelt.utils.io import ensure_writable_dir
    ensure_writable_dir(args.out, "--out")
    if name == "ms1m_lt":
        from pipelines.ms1m_lt import PAPER_TARGET_IMAGES, prepare_ms1m_lt
        result = prepare_ms1m_lt(_ms1m_source(args.source), args.out, seed=args.seed,
                                 target_images=args.target_images or PAPER_TARGET_IMAGES)
        result = result.get("totals", result)
    elif name == "imagenet_lt":
        from pipelines.imagenet_lt import prepare_imagenet_lt
        result = prepare_imagenet_lt(args.source, args.out, seed=args.seed, splits_dir=args.splits)
    elif name == "places_lt":
        from pipelines.places_lt import prepare_places_lt
        result = prepare_places_lt(args.source, args.out, seed=args.seed, splits_dir=args.splits)
    elif name == "fashion_lt":
        from pipelines.fashion_lt import DEFAULT_SOURCE, prepare_fashion_lt
        result = prepare_fashion_lt(args.source or DEFAULT_SOURCE, args.out, seed=args.seed)
    else:
        from pipelines.demo_data import DemoSpec, make_demo_dataset
        result = make_demo_dataset(args.out, DemoSpec(seed=args.seed))
    print(json.dumps(result, indent=2, default=str))
    return 0
