"""``facelt check``: validate a recipe's data before a long run -- every split's list or rec is read,
every listed image must exist (one error listing the first missing ones and the count), labels
must fit the classes -- and print the splits' statistics."""
from __future__ import annotations

import argparse
import json

import numpy as np

from facelt.cli.common import add_config_args, config_from_args
from facelt.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a recipe's data (files, labels) before training",
                       description=__doc__)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facelt.data.build import SPLITS, build_split, class_counts, infer_num_classes
    from facelt.data.lists import labels_outside
    from facelt.metrics import shot_counts
    cfg = config_from_args(args)
    splits = {s: build_split(cfg.data, s, train=False, check_files=True) for s in SPLITS}
    if splits["train"] is None:
        raise DataError("data.train is not set")
    k = infer_num_classes(cfg.data, splits["train"].labels)
    counts = class_counts(splits["train"].labels, k)
    report: dict = {"num_classes": k}
    for name, split in splits.items():
        if split is None:
            continue
        labels = split.labels
        bad = labels_outside(labels, k, open_set=name == "open")
        if bad.size and name == "open":
            i = int(bad[0])
            raise DataError(f"open split: {split.items[i]} has label {int(labels[i])}; open-set "
                            f"images are labelled -1")
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{name} split: {split.items[i]} has label {int(labels[i])}, outside "
                            f"0..{k - 1}")
        entry = {"images": int(len(labels))}
        if name != "open":
            present = np.bincount(labels, minlength=k)
            entry["classes"] = int((present > 0).sum())
            entry["per_class"] = [int(present[present > 0].min()), int(present.max())]
        report[name] = entry
    report["train"]["shots"] = shot_counts(counts[counts > 0], cfg.eval.many, cfg.eval.few)
    if args.json:
        print(json.dumps(report))
    else:
        for name, entry in report.items():
            print(f"{name:<12} {entry}")
        print("ok: every listed file exists and every label fits")
    return 0
