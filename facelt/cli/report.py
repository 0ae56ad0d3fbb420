"""``facelt report DIR``: regenerate every report.md and plot under DIR from the saved results:
classification (``report.json`` with ``closed_set``), MegaFace (``report.json`` with ``cmc``),
compare (``report.json`` with ``methods``) and the demo's top-level report
(``demo_summary.json``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="regenerate report.md + plots from saved results",
                       description=__doc__)
    p.add_argument("dir", help="a folder holding report.json files (classify, megaface-eval, "
                               "compare) or a demo's demo_summary.json, searched recursively")
    p.set_defaults(func=run)


def read_reports(folder: Path) -> tuple[list[tuple[str, Path, dict]], list[Path]]:
    """Every report.json under ``folder`` that ``facelt report`` rewrites, as ``(kind, path,
    report)``, and every demo summary; each read and checked (the file and the key named) before
    anything is written."""
    from facelt.compare.report import COLUMNS
    from facelt.jobs.demo_report import SUMMARY_NAME
    from facelt.openset import report_checks as rc
    from facelt.utils.structure import read_json_file
    checks = {"classification": rc.check_classification_report,
              "megaface": rc.check_megaface_report, "compare": rc.check_compare_report,
              "seeds": lambda r, p: rc.check_seeds_report(r, p, [f"{g}.{k}" for g, k in COLUMNS])}
    reports = []
    for path in sorted(folder.rglob("report.json")):
        report = read_json_file(path, "report.json")
        kind = rc.report_kind(report)
        if kind in checks:
            reports.append((kind, path, checks[kind](report, path)))
    summaries = sorted(folder.rglob(SUMMARY_NAME))
    for path in summaries:
        rc.check_demo_summary(read_json_file(path, "demo summary"), path)
    return reports, summaries


def regenerate_reports(folder: Path) -> list[Path]:
    """Rewrite every report.md (and its plots) under ``folder``; returns the report.md paths.
    A report.json or demo summary that is not what facelt wrote is refused before any file is
    rewritten."""
    from eval_megaface.report import plot_buckets, plot_cmc, render_markdown
    from facelt.compare.report import CHART_NAME, bar_chart, markdown_table
    from facelt.compare.seeds import seeds_markdown
    from facelt.jobs.demo_report import write_demo_report
    from facelt.openset.reporting import round_floats, write_classification_report
    from facelt.utils.io import write_text
    reports, summaries = read_reports(folder)
    written = []
    for kind, path, report in reports:
        md = path.parent / "report.md"
        if kind == "classification":
            write_classification_report(report, path.parent)
        elif kind == "megaface":  # its report.json is an input here: left as it is
            r = round_floats(report)
            write_text(md, render_markdown(r))
            plot_cmc(r, path.parent / "cmc.png")
            if r.get("pseudo_shots"):
                plot_buckets(r, path.parent / "pseudo_shots.png")
        elif kind == "seeds":
            write_text(md, seeds_markdown(report, str(report["recipe"]), str(report["protocol"])))
        else:
            write_text(md, markdown_table(report))
            bar_chart(report, path.parent / CHART_NAME)
        written.append(md)
    for path in summaries:
        written.append(write_demo_report(path.parent))
    return written


def run(args: argparse.Namespace) -> int:
    written = regenerate_reports(Path(args.dir))
    if not written:
        raise FaceltError(f"no report.json or demo summary under {args.dir}")
    for path in written:
        print(path)
    return 0
