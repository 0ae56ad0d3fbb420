"""Issue 11: every flag of every command has a help text, shows its default, no reST backticks;
``--version``; ``--device`` on every command that computes."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from facelt.cli import build_parser, main
from facelt.cli.common import iter_parsers

ROOT = Path(__file__).resolve().parents[1]

# the commands that run a network or a search (they must take --device)
COMPUTING = {"demo", "train", "classify", "compare", "align", "extract-features", "megaface-eval",
             "verify", "ijb"}


def _options(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                                  argparse._SubParsersAction))]


def _all_parsers():
    return list(iter_parsers(build_parser()))


def test_every_option_has_help_without_backticks():
    missing, ticks = [], []
    for name, parser in _all_parsers():
        for a in _options(parser):
            label = f"{name} {'/'.join(a.option_strings) or a.dest}"
            if not (a.help or "").strip():
                missing.append(label)
            if "`" in (a.help or ""):
                ticks.append(label)
        if "`" in parser.format_help():
            ticks.append(f"{name} --help")
    assert not missing, f"options without help: {missing}"
    assert not ticks, f"help with reStructuredText backticks: {ticks}"


def test_every_default_is_shown_in_help():
    unshown = []
    for name, parser in _all_parsers():
        text = parser.format_help()
        for a in _options(parser):
            d = a.default
            if d in (None, False, argparse.SUPPRESS) or (isinstance(d, (list, str)) and not d):
                continue
            flag = (a.option_strings or [a.dest])[-1]
            # the option's entry: from its flag to the next line that starts a new option
            m = re.search(r"\n  (?:-\S+ [^\n]*?, )?" + re.escape(flag) + r"\b.*?(?=\n  -|\n\n|\Z)",
                          text, re.S)
            entry = " ".join(m.group(0).split()) if m else ""
            if "default" not in entry:
                unshown.append(f"{name} {flag} (default {d!r})")
    assert not unshown, f"defaults not shown in --help: {unshown}"


def test_computing_commands_take_device():
    parsers = dict(_all_parsers())
    lacking = [c for c in sorted(COMPUTING)
               if not any("--device" in a.option_strings for a in parsers[f"facelt {c}"]._actions)]
    assert not lacking, f"computing commands without --device: {lacking}"
    for c in sorted(COMPUTING):
        dev = next(a for a in parsers[f"facelt {c}"]._actions if "--device" in a.option_strings)
        assert list(dev.choices) == ["auto", "cpu", "cuda"], c


def test_train_device_sets_the_recipe_key():
    from facelt.cli.common import config_from_args
    p = build_parser()
    args = p.parse_args(["train", "--dataset", "demo_faces", "--device", "cpu"])
    assert config_from_args(args).device == "cpu"
    args = p.parse_args(["train", "--dataset", "demo_faces"])
    assert config_from_args(args).device == "auto"  # the recipe's


def test_version_flag(capsys):
    import tomllib
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"facelt {expected}"
