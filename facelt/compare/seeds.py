"""``facelt compare --seeds 0,1,2``: every method over several seeds, mean +- std per column.

Each seed is one ordinary comparison in ``OUT/seed<N>/`` (``--set seed=N`` on every method), so a
finished seed is reused like any comparison and an interrupted one resumes. The summary keeps the
per-seed numbers (``report.json``: ``methods.<m>.<column>.values``) beside their mean and sample
standard deviation (``ddof = 1``; 0 for one seed).

``plain_same_epochs`` (:func:`same_epochs_method`) is the plain model trained for as many epochs as
OLTR's two stages together (``stage1.epochs + stage2.epochs``, same LR schedule), so OLTR's second
stage is not credited for the extra training alone.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from facelt.compare.methods import MethodSpec
from facelt.compare.report import COLUMNS, table_head
from facelt.compare.tables import (chart_name, mean_std, summarize_tables, summary_markdown,
                                   table_chart)
from facelt.config import Config
from facelt.errors import ConfigError
from facelt.utils.io import write_json, write_text

SAME_EPOCHS_METHOD = "plain_same_epochs"


def same_epochs_method(base: MethodSpec, recipe_cfg: Config) -> MethodSpec:
    """The base (plain) method trained ``stage1.epochs + stage2.epochs`` epochs of ``recipe_cfg``."""
    epochs = recipe_cfg.stage1.epochs + recipe_cfg.stage2.epochs
    over = dict(base.config)
    over["stage1"] = dict(over.get("stage1") or {}, epochs=epochs)
    return dataclasses.replace(base, name=SAME_EPOCHS_METHOD, config=over)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a ConfigError for anything else or a repeated seed."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct integers, got {text!r}")
    return seeds


def summarize_seeds(reports: dict[int, dict]) -> dict:
    """Per method and column: the per-seed values, their mean and std (None where missing)."""
    seeds = sorted(reports)
    methods = list(reports[seeds[0]]["methods"])
    out: dict[str, dict] = {}
    for m in methods:
        cols = {}
        for group, key in COLUMNS:
            section = "closed_set" if group == "closed" else "open_set"
            vals = [reports[s]["methods"][m][section].get(key) for s in seeds]
            if any(v is None for v in vals):
                cols[f"{group}.{key}"] = {"values": vals, "mean": None, "std": None}
                continue
            mu, sd = mean_std(vals)
            cols[f"{group}.{key}"] = {"values": vals, "mean": mu, "std": sd}
        out[m] = cols
    return {"seeds": seeds, "methods": out}


def seeds_markdown(summary: dict, recipe: str, protocol: str) -> str:
    lines = table_head(f"facelt compare ({recipe}), seeds {', '.join(map(str, summary['seeds']))}")
    for m, cols in summary["methods"].items():
        cells = [m]
        for g, k in COLUMNS:
            c = cols[f"{g}.{k}"]
            cells.append("-" if c["mean"] is None
                         else f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Values in %, mean ± sample std over {len(summary['seeds'])} seeds "
              f"(per-seed values in report.json). {protocol}.", ""]
    return "\n".join(lines)


def compare_seeds(recipe: str | Path, methods: list[str], out: str | Path,
                  methods_dir: str | Path, seeds: list[int],
                  overrides: list[str] | tuple[str, ...] = (), resume: bool = False,
                  same_epochs: bool = True, weights: str = "auto",
                  log: Callable[[str], None] = print, tables=None) -> dict:
    """Run :func:`facelt.compare.compare` once per seed into ``OUT/seed<N>`` and summarise
    (``tables``: its further evaluation, :data:`facelt.compare.tables.TableEvaluation`)."""
    from facelt.compare import compare
    out = Path(out)
    reports: dict[int, dict] = {}
    for s in seeds:
        log(f"== seed {s}")
        reports[s] = compare(recipe, methods, out / f"seed{s}", methods_dir,
                             list(overrides) + [f"seed={s}"], resume=resume,
                             same_epochs=same_epochs, weights=weights, log=log, tables=tables)
    return write_seed_summary(out, reports, weights)


def write_seed_summary(out: str | Path, reports: dict[int, dict], weights: str = "auto") -> dict:
    """Write ``OUT/report.{json,md}`` from the per-seed comparison reports."""
    out = Path(out)
    seeds = sorted(reports)
    summary = summarize_seeds(reports)
    first = reports[seeds[0]]
    summary.update(recipe=str(first["recipe"]), protocol=first["protocol"],
                   shot_rule=first["shot_rule"], threshold=first["threshold"],
                   weights=first.get("weights", weights),
                   runs={str(s): str(out / f"seed{s}") for s in seeds})
    md = (seeds_markdown(summary, str(first["recipe"]), first["protocol"])
          if summary["methods"] else f"# facelt compare ({first['recipe']})\n\n")
    tables = summarize_tables(reports)
    if tables:
        summary["tables"] = tables
        for name, table in tables.items():
            md += "\n".join(summary_markdown(name, table, seeds))
            table_chart(table, out / chart_name(name))
    write_json(out / "report.json", summary)
    write_text(out / "report.md", md)
    return summary


def summarize_seed_folders(out: str | Path, seeds: list[int]) -> dict:
    """The summary of comparisons already written to ``OUT/seed<N>/report.json`` (no training, no
    evaluation): for seeds run as separate ``facelt compare --set seed=N --same-epochs`` commands.
    Every seed must hold the same methods, recipe and weights."""
    out = Path(out)
    reports = {}
    for s in seeds:
        path = out / f"seed{s}" / "report.json"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: run the comparison of seed {s} first")
        from facelt.openset.report_checks import check_compare_report
        from facelt.utils.structure import read_json_file
        reports[s] = check_compare_report(read_json_file(path, "report.json"), path)
    first = reports[seeds[0]]
    for s, r in reports.items():
        for key in ("recipe", "weights"):
            if r.get(key) != first.get(key):
                raise ConfigError(f"{out}/seed{s}/report.json: {key} {r.get(key)!r} differs from "
                                  f"seed {seeds[0]}'s {first.get(key)!r}")
        if list(r["methods"]) != list(first["methods"]):
            raise ConfigError(f"{out}/seed{s}/report.json: methods {list(r['methods'])} differ "
                              f"from seed {seeds[0]}'s {list(first['methods'])}")
    return write_seed_summary(out, reports)
