"""``facelt check``: validate a recipe's data before a long run -- every split's list or rec is read,
every listed image must exist (one error listing the first missing ones and the count), every
``.idx`` entry of a rec must point at a sound record, labels must fit the classes, train labels
must be classes the val/test splits know -- and print the splits' statistics as a table.
For ImageNet-LT and Places-LT it also says whether the lists are the published split ("official
split", recognised by their git blob hashes) or "not the official split (rebuilt): not comparable
with published numbers". ``--decode`` also decodes every image (slow: a full pass over the data)."""
from __future__ import annotations

import argparse
import json

from facelt.cli.common import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a recipe's data (files, labels) before training",
                       description=__doc__)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--decode", action="store_true",
                   help="decode every image (list files and rec records), not only check they exist")
    p.set_defaults(func=run)


def format_check_table(report: dict) -> str:
    """The report of ``check`` as an aligned text table, a row a split."""
    head = ("split", "images", "classes", "per class (min..max)")
    rows = []
    for name in ("train", "val", "test", "open"):
        entry = report.get(name)
        if entry is None:
            continue
        per = entry.get("per_class")
        rows.append((name, f"{entry['images']:,}", str(entry.get("classes", "-")),
                     f"{per[0]:,}..{per[1]:,}" if per else "-"))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    shots = report["train"]["shots"]
    lines.append("")
    lines.append(f"classes: {report['num_classes']}; train shots: "
                 + ", ".join(f"{k} {v}" for k, v in shots.items())
                 + (f" (shot rule {report['shot_rule']})" if report.get("shot_rule") else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from facelt.data.check import check_recipe_data
    from pipelines.official_splits import provenance_line, split_provenance
    cfg = config_from_args(args)
    report = check_recipe_data(cfg, decode=args.decode)
    prov = split_provenance(cfg)
    if prov is not None:
        report["split"] = prov
    if args.json:
        print(json.dumps(report))
    else:
        print(format_check_table(report))
        if prov is not None:
            print(provenance_line(prov))
        done = "every image decodes" if args.decode else \
            "images not decoded: --decode decodes every one"
        print(f"ok: every listed file exists, every label fits, every .idx entry reads; {done}")
    return 0
