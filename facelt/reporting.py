"""Human-facing classification reports: ``report.md`` with the shot table, a per-class accuracy vs
training-count plot and the open-set threshold sweep, regenerated from ``report.json`` alone."""
from __future__ import annotations

from pathlib import Path

from facelt.utils.io import atomic_path, write_text


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_classification_report(report: dict, folder: str | Path) -> Path:
    """Write ``report.md``, ``per_class.png`` and ``threshold_sweep.png`` into ``folder``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c, o = report["closed_set"], report["open_set"]
    lines = ["# Classification report", "",
             f"Checkpoint: `{report.get('checkpoint', '?')}` (stage {report.get('stage', '?')}); "
             f"{report.get('test_images', '?')} test and {report.get('open_images', '?')} open images; "
             f"open-set threshold {report['threshold']}.", "",
             f"Shot rule: {report.get('shot_rule', '')}", "",
             "| setting | overall | many | medium | few | F-measure |", "|---|---|---|---|---|---|",
             f"| closed set | {_pct(c['overall'])} | {_pct(c['many'])} | {_pct(c['medium'])} | "
             f"{_pct(c['few'])} | |",
             f"| open set | {_pct(o['overall'])} | {_pct(o['many'])} | {_pct(o['medium'])} | "
             f"{_pct(o['few'])} | {_pct(o['f_measure'])} |", ""]
    per_class = report.get("per_class") or []
    if per_class:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        xs = [max(r["train_count"], 1) for r in per_class]
        ys = [r["accuracy"] if r["accuracy"] is not None else float("nan") for r in per_class]
        ax.scatter(xs, ys, s=14, alpha=0.7)
        ax.set_xscale("log")
        ax.axvline(20, color="grey", ls=":", lw=1)
        ax.axvline(100, color="grey", ls=":", lw=1)
        ax.set_xlabel("training images of the class (log)")
        ax.set_ylabel("closed-set accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title("per-class accuracy vs training count (few | medium | many)")
        _savefig(fig, folder / "per_class.png")
        plt.close(fig)
        lines += ["![per-class accuracy](per_class.png)", ""]
    sweep = report.get("threshold_sweep") or []
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        t = [r["threshold"] for r in sweep]
        for key, label in (("f_measure", "F-measure"), ("closed_accuracy_known", "known accuracy"),
                           ("open_rejection", "open images rejected")):
            if key in sweep[0]:
                ax.plot(t, [r[key] if r[key] is not None else float("nan") for r in sweep],
                        marker="o", ms=3, label=label)
        ax.axvline(report["threshold"], color="grey", ls=":", lw=1)
        ax.set_xlabel("threshold on max softmax")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(loc="best", fontsize=8)
        ax.set_title("open-set threshold sweep")
        _savefig(fig, folder / "threshold_sweep.png")
        plt.close(fig)
        lines += ["![threshold sweep](threshold_sweep.png)", "",
                  "| threshold | F-measure | known accuracy | open rejected |", "|---|---|---|---|"]
        for r in sweep:
            lines.append(f"| {r['threshold']:.2f} | {_pct(r.get('f_measure'))} | "
                         f"{_pct(r.get('closed_accuracy_known'))} | {_pct(r.get('open_rejection'))} |")
    out = folder / "report.md"
    write_text(out, "\n".join(lines) + "\n")
    return out
