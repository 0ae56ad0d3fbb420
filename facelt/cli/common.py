"""Helpers shared by the sub-commands: recipe lookup and config loading from flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from facelt.config import Config, load_config, resolve_config_path
from pipelines.splits import packaged_splits_dir


def configs_dir() -> Path:
    """Where ``--dataset NAME`` finds ``NAME.yaml``: $FACELT_CONFIGS, ./configs, or the repo's."""
    env = os.environ.get("FACELT_CONFIGS")
    if env:
        return Path(env)
    here = Path.cwd() / "configs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--config", help="YAML recipe (see configs/)")
    g.add_argument("--dataset", help="recipe by name: configs/NAME.yaml")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set stage2.epochs=10 (repeatable)")
    g.add_argument("--data-root", help="image root (sets data.root)")


def config_from_args(args: argparse.Namespace) -> Config:
    path = resolve_config_path(args.dataset, args.config, configs_dir())
    overrides = list(args.overrides)
    if getattr(args, "data_root", None):
        overrides.append(f"data.root={args.data_root}")
    return with_packaged_splits(load_config(path, overrides))


def with_packaged_splits(cfg: Config) -> Config:
    """``cfg`` with ``data.splits_dir`` set to the public lists shipped in ``pipelines/splits`` when
    the recipe (``places_lt``, ``imagenet_lt``) reads list files and gives no ``data.splits_dir``."""
    if cfg.data.format != "list" or cfg.data.splits_dir:
        return cfg
    shipped = packaged_splits_dir(cfg.name)
    if shipped is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, splits_dir=str(shipped)))
