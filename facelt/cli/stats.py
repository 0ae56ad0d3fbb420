"""``facelt stats``: class and shot statistics of a training list."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="statistics of an OLTR list file")
    p.add_argument("--list", required=True, dest="list_file", help="list file (path label lines)")
    p.add_argument("--many", type=int, default=100, help="many-shot: more than this many images")
    p.add_argument("--few", type=int, default=20, help="few-shot: fewer than this many images")
    p.add_argument("--shot-rule", choices=["paper", "oltr_code"], default="paper",
                   help="paper: many > --many, few < --few (the OLTR paper, classifier-balancing); "
                        "oltr_code: many >= --many, few <= --few (the OLTR reference code)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.data.lists import list_stats, read_list
    from facelt.data.shots import shot_rule_text
    stats = list_stats(read_list(args.list_file), many=args.many, few=args.few,
                       rule=args.shot_rule)
    if args.json:
        print(json.dumps(stats))
        return 0
    width = max(len(k) for k in stats)
    for k, v in stats.items():
        print(f"{k:<{width}}  {v}")
    print(f"(shot rule {shot_rule_text(args.shot_rule, args.many, args.few)})")
    return 0
