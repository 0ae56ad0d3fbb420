"""Extra result tables of ``facelt compare``: one row per method, named columns of rates in
[0, 1] (or None), made by an evaluation ``compare`` is handed (the face table of
:mod:`facelt.jobs.face_table`); written into ``report.json`` (``tables.<name>``), ``report.md``
and one bar chart each, and summarised over ``--seeds`` (mean +- sample std per cell)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facelt.utils.io import atomic_path


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


#: ``(checkpoints by method, the base config, OUT, log) -> tables``: an evaluation compare runs
#: after training (an empty list: the recipe names no inputs for it)
TableEvaluation = Callable[[dict, object, Path, Callable[[str], None]], list["ResultTable"]]


@dataclass
class ResultTable:
    """``rows[method][column]``: a rate in [0, 1] or None (no trial)."""

    name: str
    title: str
    columns: list[str]
    rows: dict[str, dict[str, Optional[float]]]
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"title": self.title, "columns": list(self.columns), "rows": self.rows,
                "notes": list(self.notes), "details": self.details}


def chart_name(table: str) -> str:
    return f"report_{table}.png"


def _head(title: str, columns: list[str]) -> list[str]:
    head = ["method"] + columns
    return [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def table_markdown(name: str, table: dict) -> list[str]:
    """A table of ``report.json``'s ``tables`` (values in %) and the link to its chart."""
    lines = ["", *_head(table["title"], table["columns"])]
    for m, row in table["rows"].items():
        cells = [m] + ["-" if row.get(c) is None else f"{100 * row[c]:.2f}"
                       for c in table["columns"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *(f"{n}" for n in table.get("notes", [])), "",
                    f"![{table['title']}]({chart_name(name)})", ""]


def summarize_tables(reports: dict[int, dict]) -> dict:
    """Per table, method and column of the per-seed reports: values, mean and sample std
    (``ddof = 1``, 0 for one seed; None where a seed has no value)."""
    seeds = sorted(reports)
    first = reports[seeds[0]].get("tables") or {}
    out = {}
    for name, table in first.items():
        rows = {}
        for m in table["rows"]:
            cells = {}
            for c in table["columns"]:
                vals = [((reports[s].get("tables") or {}).get(name, {}).get("rows", {})
                         .get(m, {}).get(c)) for s in seeds]
                if any(v is None for v in vals):
                    cells[c] = {"values": vals, "mean": None, "std": None}
                else:
                    mu, sd = mean_std(vals)
                    cells[c] = {"values": vals, "mean": mu, "std": sd}
            rows[m] = cells
        out[name] = {"title": table["title"], "columns": table["columns"], "rows": rows,
                     "notes": table.get("notes", [])}
    return out


def summary_markdown(name: str, table: dict, seeds: list[int]) -> list[str]:
    lines = ["", *_head(f"{table['title']}, seeds {', '.join(map(str, seeds))}", table["columns"])]
    for m, row in table["rows"].items():
        cells = [m] + ["-" if row[c]["mean"] is None
                       else f"{100 * row[c]['mean']:.2f} ± {100 * row[c]['std']:.2f}"
                       for c in table["columns"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"Values in %, mean ± sample std over {len(seeds)} seeds (per-seed "
                    "values in report.json).", *table.get("notes", []), "",
                    f"![{table['title']}]({chart_name(name)})", ""]


def table_chart(table: dict, path: Path) -> None:
    """Grouped bars (one group per column, one bar per method, in %; error bars for a seed
    summary), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facelt.openset.reporting import legend_outside
    cols, methods = table["columns"], list(table["rows"])
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) + 2), 4))
    for i, m in enumerate(methods):
        row = table["rows"][m]
        vals, errs = [], []
        for c in cols:
            v = row.get(c)
            if isinstance(v, dict):
                vals.append(100 * (v["mean"] or 0.0))
                errs.append(100 * (v["std"] or 0.0))
            else:
                vals.append(100 * (v or 0.0))
                errs.append(0.0)
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, yerr=errs if any(errs) else None,
               label=m, capsize=2)
    ax.set_xticks(x, cols, fontsize=8)
    ax.set_ylabel("value (%)")
    ax.set_ylim(0, 100)
    ax.set_title(table["title"], fontsize=9)
    legend_outside(ax, title="method")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
