"""``facelt check``: validate a recipe's data before a long run -- every split's list or rec is read,
every listed image must exist (one error listing the first missing ones and the count), every
``.idx`` entry of a rec must point at a sound record, labels must fit the classes, train labels
must be classes the val/test splits know -- and print the splits' statistics as a table.
``--decode`` also decodes every image (slow: a full pass over the data)."""
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
                 + ", ".join(f"{k} {v}" for k, v in shots.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from facelt.data.build import SPLITS, build_split, class_counts, infer_num_classes
    from facelt.data.lists import labels_outside
    from facelt.data.verify import verify_split_data
    from facelt.data.shots import shot_counts
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
    _check_train_classes_are_evaluated(splits, cfg.data.num_classes)
    problems = []
    for name, split in splits.items():
        if split is None:
            continue
        bad, shown = verify_split_data(split.dataset, decode=args.decode)
        if bad:
            problems.append(f"{name} split: {bad} problem(s):\n" + "\n".join(f"  {m}" for m in shown)
                            + (f"\n  ... and {bad - len(shown)} more" if bad > len(shown) else ""))
    if problems:
        raise DataError("\n".join(problems))
    report["train"]["shots"] = shot_counts(counts[counts > 0], cfg.eval.many, cfg.eval.few)
    report["decoded"] = bool(args.decode)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_check_table(report))
        done = "every image decodes" if args.decode else \
            "images not decoded: --decode decodes every one"
        print(f"ok: every listed file exists, every label fits, every .idx entry reads; {done}")
    return 0


def _check_train_classes_are_evaluated(splits: dict, declared: int) -> None:
    """Train labels past the classes the test (or val) split knows are reported: with an
    inferred class count they mean a mislabelled line or a list from another split."""
    if declared:
        return
    train = splits["train"]
    for name in ("test", "val"):
        other = splits.get(name)
        if other is None:
            continue
        known = other.labels[other.labels >= 0]
        if not known.size:
            continue
        top = int(known.max())
        beyond = np.flatnonzero(train.labels > top)
        if beyond.size:
            i = int(beyond[0])
            raise DataError(f"train split: {train.items[i]} has label {int(train.labels[i])}, but the "
                            f"{name} split knows classes 0..{top} only ({beyond.size} train images "
                            f"past them); fix the label or set data.num_classes")
        return
