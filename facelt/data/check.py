"""``facelt check``'s checks of a recipe's data before a long run: every split's list or rec is
read, every listed image must exist, every ``.idx`` entry of a rec must point at a sound record,
labels must fit the classes, train labels must be classes the val/test splits know
(:func:`check_recipe_data`; problems are :class:`~facelt.errors.DataError` naming the split and
item). ``decode`` also decodes every image (a full pass over the data)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from facelt.errors import DataError

if TYPE_CHECKING:
    from facelt.config import Config

__all__ = ["check_recipe_data"]


def check_recipe_data(cfg: "Config", decode: bool = False) -> dict:
    """Check the splits of ``cfg.data``; returns ``{num_classes, <split>: {images, classes,
    per_class}, train.shots, shot_rule, decoded}``."""
    from facelt.data.build import SPLITS, build_split, class_counts, infer_num_classes
    from facelt.data.shots import shot_counts, shot_rule_text
    from facelt.data.verify import verify_split_data
    splits = {s: build_split(cfg.data, s, train=False, check_files=True) for s in SPLITS}
    if splits["train"] is None:
        raise DataError("data.train is not set")
    k = infer_num_classes(cfg.data, splits["train"].labels)
    counts = class_counts(splits["train"].labels, k)
    report: dict = {"num_classes": k}
    for name, split in splits.items():
        if split is not None:
            report[name] = _split_entry(name, split, k)
    check_train_classes_are_evaluated(splits, cfg.data.num_classes)
    from facelt.data.image_size import check_recipe_image_size
    check_recipe_image_size(cfg)  # the one image-size rule, also without --decode
    problems = []
    for name, split in splits.items():
        if split is None:
            continue
        bad, shown = verify_split_data(split.dataset, decode=decode)
        if bad:
            problems.append(f"{name} split: {bad} problem(s):\n" + "\n".join(f"  {m}" for m in shown)
                            + (f"\n  ... and {bad - len(shown)} more" if bad > len(shown) else ""))
    if problems:
        raise DataError("\n".join(problems))
    ev = cfg.eval
    report["train"]["shots"] = shot_counts(counts[counts > 0], ev.many, ev.few, ev.shot_rule)
    report["shot_rule"] = shot_rule_text(ev.shot_rule, ev.many, ev.few)
    report["decoded"] = bool(decode)
    return report


def _split_entry(name: str, split, k: int) -> dict:
    """Images, classes present and the per-class range of one split; labels outside 0..k-1
    (open: other than -1) are refused."""
    from facelt.data.lists import labels_outside
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
    return entry


def check_train_classes_are_evaluated(splits: dict, declared: int) -> None:
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
