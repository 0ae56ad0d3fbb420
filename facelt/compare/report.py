"""The comparison's per-method report (one open-set protocol: :func:`facelt.openset.evaluate.open_set_scores_report`)
and its files: ``report.md`` (one table) and ``report.png`` (grouped bars)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from facelt.compare.evaluator import Outputs
from facelt.openset.evaluate import open_set_scores_report
from facelt.openset.metrics import shot_accuracy
from facelt.openset.reporting import legend_outside
from facelt.utils.io import atomic_path

#: the chart written beside report.md (and linked from it)
CHART_NAME = "report.png"

COLUMNS = [("closed", "many"), ("closed", "medium"), ("closed", "few"), ("closed", "overall"),
           ("open", "many"), ("open", "medium"), ("open", "few"), ("open", "overall"),
           ("open", "f_measure"), ("open", "auroc")]


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def method_report(test: Outputs, test_labels: np.ndarray, open_: Optional[Outputs],
                  counts: np.ndarray, threshold: float, many: int, few: int,
                  rule: str = "paper") -> dict:
    """Closed-set, open-set (rejection at ``score < threshold``), F-measure and AUROC; shot
    buckets by ``rule`` (:data:`facelt.data.shots.SHOT_RULES`)."""
    closed = shot_accuracy(test.pred, test_labels, counts, many=many, few=few, rule=rule)
    pred = np.concatenate([test.pred] + ([open_.pred] if open_ else []))
    score = np.concatenate([test.score] + ([open_.score] if open_ else []))
    labels = np.concatenate([test_labels] + ([np.full(len(open_.pred), -1)] if open_ else []))
    opened = open_set_scores_report(pred, score, labels, counts, threshold, many, few,
                                    with_auroc=True, rule=rule)
    return {"closed_set": _clean(closed), "open_set": _clean(opened), "threshold": float(threshold)}


def _cell(rep: dict, group: str, key: str) -> Optional[float]:
    return rep["closed_set" if group == "closed" else "open_set"].get(key)


def table_head(title: str) -> list[str]:
    """The title and the header rows of a comparison table (a method column, then COLUMNS)."""
    head = ["method"] + [f"{g} {k}" for g, k in COLUMNS]
    return [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def markdown_table(report: dict) -> str:
    lines = table_head(f"facelt compare ({report['recipe']})")
    for m, rep in report["methods"].items():
        cells = [m]
        for g, k in COLUMNS:
            v = _cell(rep, g, k)
            cells.append("-" if v is None else f"{100.0 * v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Values in %. Open-set threshold {report['threshold']}. {report['protocol']}.",
              f"Shots: {report['shot_rule']}.", "",
              *weights_lines(report),
              f"![every method, every column (%)]({CHART_NAME})", ""]
    return "\n".join(lines)


def weights_lines(report: dict) -> list[str]:
    """Which weights each method's numbers come from (``--weights``; empty for older reports)."""
    per = {m: rep["weights"] for m, rep in report["methods"].items() if rep.get("weights")}
    if not per:
        return []
    return [f"Weights (--weights {report.get('weights', '?')}): "
            + "; ".join(f"{m} {w}" for m, w in per.items()) + ".", ""]


def bar_chart(report: dict, path: Path) -> None:
    """:func:`comparison_figure` as a PNG, written atomically."""
    import matplotlib.pyplot as plt
    fig = comparison_figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def comparison_figure(report: dict):
    """Grouped bars: one group per column, one bar per method, in %."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(report["methods"])
    x = np.arange(len(COLUMNS))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(COLUMNS)), 4.5))
    for i, m in enumerate(methods):
        vals = [_cell(report["methods"][m], g, k) for g, k in COLUMNS]
        ax.bar(x - 0.4 + (i + 0.5) * width, [100.0 * (v or 0.0) for v in vals], width, label=m)
    ax.set_xticks(x, [f"{g}\n{k}" for g, k in COLUMNS], fontsize=8)
    ax.set_xlabel("set and metric (closed: test; open: test + open images)")
    ax.set_ylabel("value (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"facelt compare: {Path(str(report.get('recipe', ''))).stem} "
                 f"(open-set threshold {report.get('threshold')})")
    legend_outside(ax, title="method")
    return fig
