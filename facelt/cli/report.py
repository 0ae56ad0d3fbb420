"""``facelt report DIR``: regenerate report.md and the plots from saved report.json files."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="regenerate report.md + plots from saved results")
    p.add_argument("dir", help="a folder holding report.json (classify or megaface-eval output), "
                               "searched recursively")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eval_megaface.report import write_report
    from facelt.reporting import write_classification_report
    found = sorted(Path(args.dir).rglob("report.json"))
    if not found:
        raise FaceltError(f"no report.json under {args.dir}")
    for path in found:
        report = json.loads(path.read_text())
        if "closed_set" in report:
            print(write_classification_report(report, path.parent))
        elif "rank1" in report and "cmc" in report:
            write_report(report, path.parent)
            print(path.parent / "report.md")
    return 0
