"""Ablation table from a ``facelt compare --seeds`` report: the reference recipe's row and each
variant's, with the paired per-seed difference to the reference (mean ± sample std).

    python benchmarks/ablation_table.py runs/comparison/report.json \
        --reference oltr --variants ablation/oltr_autograd_centroids,... [--reference2 crt ...]

Prints Markdown; every number comes from report.json (``methods.<m>.<column>.values``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = ["closed.many", "closed.medium", "closed.few", "closed.overall", "open.f_measure",
           "open.auroc"]


def _cell(values) -> str:
    a = 100.0 * np.asarray(values, dtype=np.float64)
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.2f} ± {sd:.2f}"


def table(report: dict, pairs: list[tuple[str, str]]) -> str:
    methods = report["methods"]
    head = ["variant", "vs"] + COLUMNS + [f"Δ {c}" for c in ("closed.overall", "closed.few",
                                                             "open.f_measure")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ref, var in pairs:
        row = [var, ref] + [_cell(methods[var][c]["values"]) for c in COLUMNS]
        for c in ("closed.overall", "closed.few", "open.f_measure"):
            d = np.asarray(methods[var][c]["values"]) - np.asarray(methods[ref][c]["values"])
            row.append(_cell(d))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--pair", action="append", default=[], metavar="REF:VARIANT",
                    help="a variant and the reference row it differs from (repeatable)")
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    pairs = [tuple(p.split(":", 1)) for p in args.pair]
    print(f"seeds {', '.join(map(str, report['seeds']))}; values in %, mean ± sample std over "
          f"seeds; Δ = variant − reference, paired by seed\n")
    print(table(report, pairs))


if __name__ == "__main__":
    main()
