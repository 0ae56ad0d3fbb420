"""Closed- and open-set table over seeds from the per-seed reports of ``facelt compare --seeds``
(``OUT/seed<N>/report.json``): per method, mean ± sample std over the seeds of the closed-set
overall / many / medium / few accuracy, the F-measure at the method's threshold (``eval.threshold`` for
max softmax), the best-F threshold and the F there (an oracle point on test + open), the AUROC of
the method's score, and the AUROC of energy and max-logit on the same logits (``by_score``).

    python benchmarks/openset_table.py runs/comparison22 --seeds 0,1,2

Prints Markdown; every number comes from the report files. Values in %, thresholds as they are.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HEAD = ["method", "closed overall", "closed many", "closed medium", "closed few", "F at threshold",
        "best-F threshold", "best F", "AUROC (its score)", "AUROC energy", "AUROC max-logit"]


def _cell(values: list, scale: float = 100.0, digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    a = scale * np.asarray(vals, dtype=np.float64)
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    miss = "" if len(vals) == len(values) else f" ({len(vals)} seeds)"
    return f"{a.mean():.{digits}f} ± {sd:.{digits}f}{miss}"


def _get(rep: dict, *path):
    for p in path:
        if not isinstance(rep, dict) or p not in rep:
            return None
        rep = rep[p]
    return rep


def table(reports: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for m in reports[0]["methods"]:
        per = [r["methods"][m] for r in reports]
        cols = [[_get(p, "closed_set", k) for p in per] for k in ("overall", "many", "medium", "few")]
        cols.append([_get(p, "open_set", "f_measure") for p in per])
        row = [m] + [_cell(c) for c in cols]
        row.append(_cell([_get(p, "open_set", "best_f", "threshold") for p in per], 1.0, 3))
        row.append(_cell([_get(p, "open_set", "best_f", "f_measure") for p in per]))
        row.append(_cell([_get(p, "open_set", "auroc") for p in per]))
        for s in ("energy", "max_logit"):
            row.append(_cell([_get(p, "open_set", "by_score", s, "auroc") for p in per]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the --out folder of facelt compare --seeds")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    reports = [json.loads((args.out / f"seed{s}" / "report.json").read_text()) for s in seeds]
    print(table(reports))


if __name__ == "__main__":
    main()
