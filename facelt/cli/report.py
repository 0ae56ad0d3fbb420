"""``facelt report DIR``: regenerate every report.md and plot under DIR from the saved results:
classification (``report.json`` with ``closed_set``), MegaFace (``report.json`` with ``cmc``),
compare (``report.json`` with ``methods``) and the demo's top-level report
(``demo_summary.json``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.errors import DataError, FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="regenerate report.md + plots from saved results",
                       description=__doc__)
    p.add_argument("dir", help="a folder holding report.json files (classify, megaface-eval, "
                               "compare) or a demo's demo_summary.json, searched recursively")
    p.set_defaults(func=run)


def regenerate_reports(folder: Path) -> list[Path]:
    """Rewrite every report.md (and its plots) under ``folder``; returns the report.md paths."""
    from eval_megaface.report import write_report
    from facelt.jobs.demo_report import SUMMARY_NAME, write_demo_report
    from facelt.compare.report import CHART_NAME, bar_chart, markdown_table
    from facelt.openset.reporting import write_classification_report
    from facelt.utils.io import write_text
    written = []
    for path in sorted(folder.rglob("report.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable report.json ({exc})") from None
        if not isinstance(report, dict):
            continue
        if "closed_set" in report:
            written.append(write_classification_report(report, path.parent))
        elif "rank1" in report and "cmc" in report:
            write_report(report, path.parent)
            written.append(path.parent / "report.md")
        elif "methods" in report and "recipe" in report:
            write_text(path.parent / "report.md", markdown_table(report))
            bar_chart(report, path.parent / CHART_NAME)
            written.append(path.parent / "report.md")
    for path in sorted(folder.rglob(SUMMARY_NAME)):
        written.append(write_demo_report(path.parent))
    return written


def run(args: argparse.Namespace) -> int:
    written = regenerate_reports(Path(args.dir))
    if not written:
        raise FaceltError(f"no report.json or demo summary under {args.dir}")
    for path in written:
        print(path)
    return 0
