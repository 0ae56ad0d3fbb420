"""Evaluate a checkpoint on test + open (the OLTR report) or label single images."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from facelt.config import DataConfig
from facelt.data.build import build_split
from facelt.data.shots import shot_rule_text
from facelt.errors import FaceltError
from facelt.openset.evaluate import (closed_set_report, concat_predictions, open_set_report, predict,
                             write_predictions_csv)
from facelt.models.checkpoint import net_from_checkpoint
from facelt.models.eval_weights import weights_label
from facelt.parallel.process import pick_device
from facelt.utils.io import write_json


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and np.isnan(v):
            v = None
        out[k] = v
    return out


def evaluate_checkpoint(checkpoint: str | Path, out_dir: str | Path,
                        data: Optional[DataConfig] = None, threshold: Optional[float] = None,
                        device: str = "auto", shot_rule: Optional[str] = None) -> dict:
    """Closed- and open-set evaluation of the weights file ``checkpoint`` (pick it with
    :func:`facelt.models.eval_weights.evaluation_weights`); writes ``report.json`` (which weights:
    ``weights``, ``weights_file``) and ``predictions.csv``. ``shot_rule`` (None: the
    checkpoint's ``eval.shot_rule``) names the bucket rule."""
    dev = pick_device(device)
    net, cfg, state = net_from_checkpoint(checkpoint, dev)
    data = data or cfg.data
    thr = cfg.eval.threshold if threshold is None else float(threshold)
    counts = np.asarray(state["class_counts"], dtype=np.int64)
    test = build_split(data, "test", train=False, check_files=True)
    if test is None:
        raise FaceltError("data.test is not set: nothing to evaluate")
    open_split = build_split(data, "open", train=False, check_files=True)
    bs, nw = cfg.eval.batch_size, data.num_workers
    p_test = predict(net, test.dataset, dev, bs, nw, desc="test")
    if (p_test.labels >= len(counts)).any():
        raise FaceltError(f"test split has labels >= {len(counts)} (the checkpoint's classes)")
    p_open = predict(net, open_split.dataset, dev, bs, nw, desc="open") if open_split else None
    ev = cfg.eval
    if shot_rule is not None:
        from dataclasses import replace
        ev = replace(ev, shot_rule=shot_rule)
    closed = closed_set_report(p_test, counts, ev.many, ev.few, ev.shot_rule)
    opened = open_set_report(p_test, p_open, counts, thr, ev.many, ev.few, ev.sweep, ev.shot_rule)
    report = {
        "closed_set": _clean(closed),
        "open_set": _clean({k: v for k, v in opened.items() if k != "sweep"}),
        "threshold": thr,
        "threshold_sweep": [_clean(r) for r in opened["sweep"]],
        "per_class": _per_class(p_test, counts, state.get("class_names") or []),
        "shot_rule": shot_rule_text(ev.shot_rule, ev.many, ev.few) + "; bucket accuracy = mean "
                     "of per-class accuracies; overall = accuracy over known test images",
        "checkpoint": str(checkpoint),
        "weights": weights_label(state, checkpoint),
        "weights_file": str(checkpoint),
        "stage": int(state["stage"]),
        "test_images": int(len(p_test.labels)),
        "open_images": int(len(p_open.labels)) if p_open else 0,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = test.items + (open_split.items if open_split else [])
    write_predictions_csv(out / "predictions.csv", items, concat_predictions(p_test, p_open), thr)
    from facelt.openset.reporting import round_floats, write_classification_report
    report = round_floats(report)
    write_json(out / "report.json", report)
    write_classification_report(report, out)
    return report


def _per_class(p, counts: np.ndarray, names: list[str]) -> list[dict]:
    from facelt.openset.metrics import per_class_accuracy
    acc = per_class_accuracy(p.pred, p.labels, len(counts))
    rows = [{"class": k, "train_count": int(counts[k]),
             "accuracy": None if np.isnan(acc[k]) else float(acc[k])} for k in range(len(counts))]
    if len(names) == len(counts):
        for row, name in zip(rows, names):
            row["name"] = str(name)
    return rows


@torch.no_grad()
def classify_images(checkpoint: str | Path, paths: list[str], threshold: Optional[float] = None,
                    device: str = "auto") -> list[tuple[str, str, float]]:
    """(path, class name or label or ``unknown``, max softmax) for each image file."""
    from facelt.data.build import eval_transform
    from facelt.data.images import FolderImages
    dev = pick_device(device)
    net, cfg, state = net_from_checkpoint(checkpoint, dev)
    thr = cfg.eval.threshold if threshold is None else float(threshold)
    ds = FolderImages(paths, eval_transform(cfg.data), channels=cfg.data.channels)
    p = predict(net, ds, dev, cfg.eval.batch_size, 0, desc="classify")
    names = state.get("class_names") or []
    out = []
    for path, pred, score in zip(paths, p.pred, p.max_prob):
        if score < thr:
            label = "unknown"
        else:
            label = names[pred] if names else str(int(pred))
        out.append((path, label, float(score)))
    return out
