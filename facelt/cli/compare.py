"""``facelt compare``: train or reuse each method on one recipe and evaluate all the same way."""
from __future__ import annotations

import argparse
from pathlib import Path

from facelt.cli.common import add_config_args, add_device_arg, configs_dir


def _methods_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    here = configs_dir() / "methods"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs" / "methods"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the paper's baselines and later methods on one engine",
                       description="Train (or reuse) each method's checkpoint on the recipe's data, "
                                   "evaluate all with one protocol and write report.json, "
                                   "report.md and report.png under --out.")
    add_config_args(p)
    p.add_argument("--methods", default="",
                   help="comma-separated method names (configs/methods/<name>.yaml); "
                        "default: every method there")
    p.add_argument("--methods-dir", help="folder of method YAML files (default configs/methods)")
    p.add_argument("--out", required=True, help="output folder (runs/<method>/ and the report)")
    p.add_argument("--resume", action="store_true",
                   help="continue incomplete training runs under --out")
    add_device_arg(p, from_recipe=True)
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds, e.g. 0,1,2: every method once per seed "
                        "(OUT/seed<N>/), table of mean +- std, per-seed values in report.json; "
                        "adds the plain_same_epochs row")
    p.add_argument("--summarize-only", action="store_true",
                   help="with --seeds: only write OUT/report.{json,md} from the existing "
                        "OUT/seed<N>/report.json (seeds compared by separate commands)")
    p.add_argument("--same-epochs", action="store_true",
                   help="(one seed) add the plain_same_epochs row: plain trained "
                        "stage1.epochs + stage2.epochs epochs")
    p.add_argument("--weights", choices=["auto", "best", "last"], default="auto",
                   help="evaluate each run's best-on-val weights (best.pt with that epoch's "
                        "centroids, as the OLTR reference and classifier-balancing do), its last "
                        "epoch (checkpoint.pt), or auto: best.pt when the recipe has a val split, "
                        "else the last epoch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.compare import compare
    from facelt.config import resolve_config_path
    recipe = resolve_config_path(args.dataset, args.config, configs_dir())
    mdir = _methods_dir(args.methods_dir)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or sorted(
        p.stem for p in mdir.glob("*.yaml"))
    overrides = list(args.overrides)
    if getattr(args, "data_root", None):
        overrides.append(f"data.root={args.data_root}")
    if args.device:
        overrides.append(f"device={args.device}")
    from facelt.utils.io import ensure_writable_dir
    ensure_writable_dir(args.out, "--out")
    from facelt.jobs.face_table import face_tables  # the face table, when the recipe names inputs
    from facelt.utils.run_lock import lock_run_folder
    with lock_run_folder(args.out):  # one compare per --out (each method's run locks its own)
        if args.summarize_only:
            from facelt.compare.seeds import parse_seeds, summarize_seed_folders
            if not args.seeds:
                from facelt.errors import ConfigError
                raise ConfigError("--summarize-only needs --seeds")
            summarize_seed_folders(Path(args.out), parse_seeds(args.seeds))
        elif args.seeds:
            from facelt.compare.seeds import compare_seeds, parse_seeds
            compare_seeds(recipe, methods, Path(args.out), mdir, parse_seeds(args.seeds), overrides,
                          resume=args.resume, same_epochs=True, weights=args.weights,
                          tables=face_tables)
        else:
            compare(recipe, methods, Path(args.out), mdir, overrides, resume=args.resume,
                    same_epochs=args.same_epochs, weights=args.weights, tables=face_tables)
    from facelt.parallel.process import is_primary_process
    if is_primary_process():  # under torchrun: one final line, rank 0's
        print(f"report: {Path(args.out) / 'report.md'}")
    return 0
