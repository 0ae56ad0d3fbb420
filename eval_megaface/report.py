"""Writing a MegaFace report: ``report.json``, ``report.md``, ``cmc.png``, ``pseudo_shots.png``.

Every file is written to a temporary name and renamed into place (``facelt.utils.io.atomic_path``).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional, Union

from facelt.openset.reporting import legend_outside, round_floats, save_figure_png
from facelt.utils.io import write_json, write_text

from eval_megaface.pseudo_shots import BUCKETS


def _results(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report.get("results") or [report]


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable summary of a report dictionary."""
    meta = report.get("meta", {})
    res = _results(report)
    lines = ["# MegaFace challenge-1 identification", ""]
    lines += [f"- protocol: {meta.get('protocol', 'n/a')}",
              f"- probes: {meta.get('probes', 'n/a')} images of {meta.get('identities', 'n/a')} identities"
              f" ({meta.get('probes_removed', 0)} removed as noise)",
              f"- distractor rows: {meta.get('distractor_rows', 'n/a')}"
              f" ({meta.get('distractors_removed', 0)} removed as noise); gallery order: "
              f"{meta.get('gallery_order', 'n/a')}",
              f"- search: {res[0].get('index', 'flat')}; a trial (p, g) is a hit at rank k when fewer "
              f"than k distractors score >= sim(p, g) (ties count as misses)", ""]
    lines += ["| gallery | trials | rank-1 | rank-5 | rank-10 |", "|---:|---:|---:|---:|---:|"]
    for r in res:
        cmc = r.get("cmc") or [None] * 10
        lines.append(f"| {r['gallery']:,} | {r['trials']:,} | {_pct(cmc[0])} | {_pct(cmc[4])} | "
                     f"{_pct(cmc[9])} |")
    if any(r.get("approx") for r in res):
        lines += ["", "| gallery | exact rank-1 | rank-1 delta | top-1 agreement |", "|---:|---:|---:|---:|"]
        for r in res:
            a = r.get("approx") or {}
            delta = a.get("rank1_delta")
            lines.append(f"| {r['gallery']:,} | {_pct(a.get('exact_rank1'))} | "
                         f"{'n/a' if delta is None else f'{100 * delta:+.2f} pt'} | "
                         f"{_pct(a.get('top1_agreement'))} |")
    if res[0].get("pseudo_shots"):
        thr = meta.get("pseudo_shot_threshold")
        lines += ["", f"## Pseudo-shots (training images with cosine > {thr})", "",
                  "| gallery | " + " | ".join(f"{b} (probes)" for b in BUCKETS) + " |",
                  "|---:|" + "---:|" * len(BUCKETS)]
        for r in res:
            ps = r["pseudo_shots"]
            lines.append(f"| {r['gallery']:,} | " + " | ".join(
                f"{_pct(ps[b]['rank1'])} ({ps[b]['probes']})" for b in BUCKETS) + " |")
        lines += ["", "Buckets: many > 5, few 2..5, one 1, zero 0; rank-1 over the trials whose probe "
                  "image is in the bucket."]
    for column in res[0].get("groups", {}):
        values = list(res[0]["groups"][column])
        lines += ["", f"## By {column}", "", "| gallery | " + " | ".join(values) + " |",
                  "|---:|" + "---:|" * len(values)]
        for r in res:
            lines.append(f"| {r['gallery']:,} | " + " | ".join(
                _pct(r["groups"][column].get(v)) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _stage_suffix(report: dict[str, Any]) -> str:
    """`` (stage 2)`` when the report knows which training stage made its features."""
    stage = report.get("meta", {}).get("stage")
    return f" (stage {stage})" if stage is not None else ""


def plot_cmc(report: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """:func:`cmc_figure` as a PNG."""
    save_figure_png(cmc_figure(report), path, dpi=120)


def cmc_figure(report: dict[str, Any]):
    """CMC curves (rank 1..10, %), one per gallery size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in _results(report):
        if r.get("cmc"):
            ax.plot(range(1, len(r["cmc"]) + 1), [100 * x for x in r["cmc"]], marker="o",
                    label=f"{r['gallery']:,} distractors")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_title(f"MegaFace challenge 1: CMC{_stage_suffix(report)}")
    ax.grid(True, alpha=0.3)
    legend_outside(ax, title="gallery")
    return fig


def plot_buckets(report: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """:func:`buckets_figure` as a PNG."""
    save_figure_png(buckets_figure(report), path, dpi=120)


def buckets_figure(report: dict[str, Any]):
    """Rank-1 (%) per pseudo-shot bucket, grouped bars per gallery size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = [r for r in _results(report) if r.get("pseudo_shots")]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(res))
    for j, r in enumerate(res):
        vals = [100 * (r["pseudo_shots"][b]["rank1"] or 0.0) for b in BUCKETS]
        ax.bar([i + j * width for i in range(len(BUCKETS))], vals, width,
               label=f"{r['gallery']:,} distractors")
    ax.set_xticks([i + width * (len(res) - 1) / 2 for i in range(len(BUCKETS))])
    ax.set_xticklabels([f"{b}\n({res[0]['pseudo_shots'][b]['probes']} probes)" if res else b
                        for b in BUCKETS])
    ax.set_xlabel("pseudo-shot bucket (training images with cosine > "
                  f"{report.get('meta', {}).get('pseudo_shot_threshold', 0.7)})")
    ax.set_ylabel("rank-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Rank-1 by pseudo-shot bucket{_stage_suffix(report)}")
    if res:
        legend_outside(ax, title="gallery")
    return fig


def preload_plotting() -> threading.Thread:
    """Import matplotlib (Agg backend) and pyplot in a background thread and return it: the
    second or so the import takes then overlaps the distractor search (BLAS and faiss release
    the GIL) instead of following it. :func:`write_report`'s own imports wait for it (Python's
    per-module import locks make the two imports safe)."""
    def load() -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    thread = threading.Thread(target=load, name="preload-matplotlib", daemon=True)
    thread.start()
    return thread


def write_report(report: dict[str, Any], out_dir: Union[str, os.PathLike]) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``cmc.png`` and (with pseudo-shots) ``pseudo_shots.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md", out / "cmc.png"]
    report = round_floats(report)
    write_json(written[0], report)
    write_text(written[1], render_markdown(report))
    plot_cmc(report, written[2])
    if report.get("pseudo_shots"):
        written.append(out / "pseudo_shots.png")
        plot_buckets(report, written[-1])
    return written
