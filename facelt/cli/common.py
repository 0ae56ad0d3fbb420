"""Helpers shared by the sub-commands: recipe lookup and config loading from flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path

from typing import TYPE_CHECKING

from pipelines.splits import packaged_splits_dir

if TYPE_CHECKING:  # loaded when a command needs it (the parser is built without it)
    from facelt.config import Config

DEVICES = ("auto", "cpu", "cuda")


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should append ``(default: ...)`` to ``action``'s help: an option with a
    real default (not None / False / an empty list) whose help does not already state it."""
    if not action.option_strings and action.nargs not in ("?", "*"):
        return False
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    if isinstance(default, (list, tuple, str)) and len(default) == 0:
        return False
    return "default" not in (action.help or "").lower()


def without_backticks(text: str) -> str:
    """``text`` with reStructuredText literals (double or single backticks) shown plainly."""
    return re.sub(r"``([^`]*)``", r"'\1'", text).replace("`", "'")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help texts end with ``(default: X)`` where the option has a default (:func:`shows_default`);
    descriptions (module docstrings) lose their reStructuredText backticks."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(without_backticks(text))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return f"{text} (default: %(default)s)" if shows_default(action) else text


class RawDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """:class:`DefaultsHelpFormatter` keeping the description's own line breaks."""


def iter_parsers(parser: argparse.ArgumentParser, name: str = "facelt"):
    """``(command name, parser)`` for ``parser`` and every sub-parser below it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from iter_parsers(sub, f"{name} {sub_name}")


def apply_help_format(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its sub-parsers the defaults-showing help formatter (raw
    descriptions stay raw)."""
    for _, p in iter_parsers(parser):
        raw = issubclass(p.formatter_class, argparse.RawDescriptionHelpFormatter)
        p.formatter_class = RawDefaultsHelpFormatter if raw else DefaultsHelpFormatter


def add_device_arg(p: argparse.ArgumentParser, from_recipe: bool = False) -> None:
    """The one ``--device {auto,cpu,cuda}`` flag of every computing command (auto: CUDA when
    available, else the CPU). ``from_recipe``: absent means the recipe's ``device`` key."""
    if from_recipe:
        p.add_argument("--device", choices=DEVICES, default=None,
                       help="where to compute; sets the recipe's 'device' key (default: the "
                            "recipe's, auto = CUDA when available, else the CPU)")
    else:
        p.add_argument("--device", choices=DEVICES, default="auto",
                       help="where to compute: auto = CUDA when available, else the CPU")


def configs_dir() -> Path:
    """Where ``--dataset NAME`` finds ``NAME.yaml``: $FACELT_CONFIGS, ./configs, or the repo's."""
    env = os.environ.get("FACELT_CONFIGS")
    if env:
        return Path(env)
    here = Path.cwd() / "configs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "configs"


def int_at_least(text: str, low: int) -> int:
    """``text`` as an integer >= ``low``; :class:`argparse.ArgumentTypeError` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts)."""
    return int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds, limits where 0 means all)."""
    return int_at_least(text, 0)


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--config", help="YAML recipe (see configs/)")
    g.add_argument("--dataset", help="recipe by name: configs/NAME.yaml")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set stage2.epochs=10 (repeatable)")
    g.add_argument("--data-root", help="image root (sets data.root)")


def config_from_args(args: argparse.Namespace) -> "Config":
    from facelt.config import load_config, resolve_config_path
    path = resolve_config_path(args.dataset, args.config, configs_dir())
    overrides = list(args.overrides)
    if getattr(args, "data_root", None):
        overrides.append(f"data.root={args.data_root}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    return with_packaged_splits(load_config(path, overrides))


def with_packaged_splits(cfg: "Config") -> "Config":
    """``cfg`` with ``data.splits_dir`` set to the public lists shipped in ``pipelines/splits`` when
    the recipe (``places_lt``, ``imagenet_lt``) reads list files and gives no ``data.splits_dir``."""
    if cfg.data.format != "list" or cfg.data.splits_dir:
        return cfg
    shipped = packaged_splits_dir(cfg.name)
    if shipped is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, splits_dir=str(shipped)))
