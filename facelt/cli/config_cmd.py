"""``facelt config``: print the fully resolved recipe as YAML (every key, defaults filled in)."""
from __future__ import annotations

import argparse

from facelt.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the fully resolved recipe as YAML",
                       description="Resolve --dataset NAME or --config FILE with every --set "
                                   "override and print the whole config as YAML: every key, "
                                   "defaults filled in (what `facelt train` would run with; "
                                   "each run also writes it as OUT/config.yaml).")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.config import config_yaml
    print(config_yaml(config_from_args(args)), end="")
    return 0
