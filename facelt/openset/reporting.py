"""Human-facing classification reports: ``report.md`` with the shot table, a per-class accuracy vs
training-count plot and the open-set threshold sweep, regenerated from ``report.json`` alone.

Plot conventions shared by every report (classification, compare, MegaFace): values in % as in the
tables, axis labels with units, the stage (when known) in the title, legends outside the axes (they
cover no data), class names on per-class plots of at most :data:`MAX_NAMED_CLASSES` classes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from facelt.utils.io import atomic_path, write_text

#: per-class plots name each class up to this many classes
MAX_NAMED_CLASSES = 30
#: decimals kept for fractions in report.json (0.123457 = 12.3457 %)
RESULT_DECIMALS = 6


def round_floats(obj: Any, decimals: int = RESULT_DECIMALS) -> Any:
    """``obj`` (JSON-like) with every float rounded to ``decimals`` places (NaN / inf -> None);
    ints, strings and the structure are unchanged."""
    if isinstance(obj, float):
        return round(obj, decimals) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: round_floats(v, decimals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, decimals) for v in obj]
    return obj


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **kw)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def save_figure_png(fig, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as a PNG (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_classification_report(report: dict, folder: str | Path) -> Path:
    """Write ``report.md``, ``per_class.png`` and ``threshold_sweep.png`` into ``folder``."""
    import matplotlib
    matplotlib.use("Agg")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c, o = report["closed_set"], report["open_set"]
    lines = ["# Classification report", "",
             f"Checkpoint: `{report.get('checkpoint', '?')}` (stage {report.get('stage', '?')}"
             + (f", weights {report['weights']}" if report.get("weights") else "") + "); "
             f"{report.get('test_images', '?')} test and {report.get('open_images', '?')} open images; "
             f"open-set threshold {report['threshold']}.", "",
             f"Shot rule: {report.get('shot_rule', '')}", "",
             "| setting | overall | many | medium | few | F-measure |", "|---|---|---|---|---|---|",
             f"| closed set | {_pct(c['overall'])} | {_pct(c['many'])} | {_pct(c['medium'])} | "
             f"{_pct(c['few'])} | |",
             f"| open set | {_pct(o['overall'])} | {_pct(o['many'])} | {_pct(o['medium'])} | "
             f"{_pct(o['few'])} | {_pct(o['f_measure'])} |", "", "Values in %.", ""]
    stage = report.get("stage")
    where = f"stage {stage}: " if stage not in (None, "?") else ""
    per_class = report.get("per_class") or []
    if per_class:
        fig = per_class_figure(per_class, where)
        save_figure_png(fig, folder / "per_class.png")
        lines += ["![per-class accuracy](per_class.png)", ""]
    sweep = report.get("threshold_sweep") or []
    if sweep:
        fig = threshold_sweep_figure(sweep, report["threshold"], where)
        save_figure_png(fig, folder / "threshold_sweep.png")
        lines += ["![threshold sweep](threshold_sweep.png)", "",
                  "| threshold | F-measure | known accuracy | open rejected |", "|---|---|---|---|"]
        for r in sweep:
            lines.append(f"| {r['threshold']:.2f} | {_pct(r.get('f_measure'))} | "
                         f"{_pct(r.get('closed_accuracy_known'))} | {_pct(r.get('open_rejection'))} |")
    out = folder / "report.md"
    write_text(out, "\n".join(lines) + "\n")
    return out


def threshold_sweep_figure(sweep: list[dict], threshold: float, where: str = ""):
    """F-measure, known accuracy and open rejection (%) over the rejection threshold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    t = [r["threshold"] for r in sweep]
    for key, label in (("f_measure", "F-measure"), ("closed_accuracy_known", "known accuracy"),
                       ("open_rejection", "open images rejected")):
        if key in sweep[0]:
            ax.plot(t, [100 * r[key] if r.get(key) is not None else float("nan") for r in sweep],
                    marker="o", ms=3, label=label)
    ax.axvline(threshold, color="grey", ls=":", lw=1, label=f"threshold used ({threshold:g})")
    ax.set_xlabel("threshold on max softmax")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    legend_outside(ax)
    ax.set_title(f"{where}open-set threshold sweep")
    return fig


def per_class_figure(per_class: list[dict], where: str = ""):
    """Accuracy (%) per class: named bars sorted by training count for at most
    :data:`MAX_NAMED_CLASSES` classes, else a scatter over the (log) training count.
    ``where``: the title's prefix (``"stage 2: "``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    acc = [100 * r["accuracy"] if r.get("accuracy") is not None else float("nan") for r in per_class]
    if len(per_class) <= MAX_NAMED_CLASSES:
        order = sorted(range(len(per_class)), key=lambda i: -per_class[i]["train_count"])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order) + 2), 4))
        ax.bar(range(len(order)), [acc[i] for i in order], color="tab:blue")
        ax.set_xticks(range(len(order)),
                      [f"{per_class[i].get('name', per_class[i]['class'])} "
                       f"({per_class[i]['train_count']})" for i in order],
                      rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("class (training images), most to fewest")
        ax.set_ylabel("closed-set accuracy (%)")
        ax.set_ylim(0, 103)
        ax.set_title(f"{where}per-class accuracy")
    else:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        xs = [max(r["train_count"], 1) for r in per_class]
        ax.scatter(xs, acc, s=14, alpha=0.7)
        ax.set_xscale("log")
        ax.axvline(20, color="grey", ls=":", lw=1)
        ax.axvline(100, color="grey", ls=":", lw=1)
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("closed-set accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{where}per-class accuracy vs training count (few | medium | many)")
    return fig
