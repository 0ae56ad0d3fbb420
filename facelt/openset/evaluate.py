"""Closed-set and open-set evaluation as the OLTR benchmark does it.

* closed set: top-1 on the (balanced) test split, overall and per shot bucket (``eval.shot_rule``
  ``paper``: many > ``many`` training images, few < ``few``, medium in between, both bounds medium;
  ``oltr_code``: many >= ``many``, few <= ``few``), each bucket the mean of its classes' accuracies;
* open set: test + open images, predicting ``unknown`` (-1) when the max softmax is below the
  threshold; the same buckets over known images with rejection, the OpenMax-style F-measure with the
  reference's fixed rule, the fraction of open images rejected, and a threshold sweep.

Predictions stream batch by batch; only (max prob, argmax) per image is kept, never B x K beyond a batch.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from facelt.config import Config
from facelt.data.build import make_loader
from facelt.openset.metrics import (auroc, open_set_accuracy, open_set_f_measure, reject, shot_accuracy,
                            threshold_sweep)
from facelt.utils.io import atomic_path
from facelt.utils.progress import image_batches


@dataclass
class Predictions:
    max_prob: np.ndarray
    pred: np.ndarray
    labels: np.ndarray


@torch.no_grad()
def predict(net: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256,
            num_workers: int = 0, desc: str = "eval") -> Predictions:
    """Max softmax probability and arg-max class of every item of ``dataset`` (in order)."""
    was_training = net.training
    net.eval()
    loader = make_loader(dataset, batch_size, num_workers)
    probs, preds, labels = [], [], []
    for x, y, _ in image_batches(loader, desc):
        out = net(x.to(device, non_blocking=True))
        p = torch.softmax(out["logits"].float(), dim=1)
        m, a = p.max(dim=1)
        probs.append(m.cpu().numpy())
        preds.append(a.cpu().numpy())
        labels.append(np.asarray(y))
    net.train(was_training)
    if not probs:
        return Predictions(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Predictions(np.concatenate(probs), np.concatenate(preds).astype(np.int64),
                       np.concatenate(labels).astype(np.int64))


def closed_set_report(p: Predictions, train_counts: np.ndarray, many: int, few: int,
                      rule: str = "paper") -> dict:
    return shot_accuracy(p.pred, p.labels, train_counts, many=many, few=few, rule=rule)


class ClosedSetValidation:
    """The trainer's validation (``facelt.train.hooks.Validation``): the closed-set report of a
    network on a stage's validation split (``data.val``), shot buckets from the training counts
    (``data.counts``); the trainer chooses ``best.pt`` on its ``overall``."""

    def __init__(self, device: torch.device, batch_size: int, num_workers: int, many: int,
                 few: int, rule: str = "paper") -> None:
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.many = many
        self.few = few
        self.rule = rule

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> "ClosedSetValidation":
        """``eval.{batch_size,many,few,shot_rule}`` and ``data.num_workers`` of a recipe."""
        return cls(device, cfg.eval.batch_size, cfg.data.num_workers, cfg.eval.many, cfg.eval.few,
                   cfg.eval.shot_rule)

    def __call__(self, net: torch.nn.Module, data) -> dict:
        p = predict(net, data.val.dataset, self.device, self.batch_size, self.num_workers,
                    desc="val")
        return closed_set_report(p, data.counts, self.many, self.few, self.rule)


def open_set_scores_report(pred: np.ndarray, score: np.ndarray, labels: np.ndarray,
                           train_counts: np.ndarray, threshold: float, many: int, few: int,
                           sweep: Optional[list[float]] = None, with_auroc: bool = False,
                           rule: str = "paper") -> dict:
    """The open-set report of known + open images (``labels`` -1 for open): predictions are
    rejected as unknown where ``score < threshold``; shot-bucket accuracy of the known images,
    F-measure, the fraction of open images rejected (None without any), and optionally the
    threshold ``sweep`` (``score`` a probability) and the known-vs-open AUROC of ``score``."""
    rejected = reject(score, pred, threshold)
    known = labels >= 0
    rep = shot_accuracy(rejected[known], labels[known], train_counts, many=many, few=few,
                        rule=rule)
    rep["f_measure"] = open_set_f_measure(rejected, labels)
    rep["open_rejected"] = open_set_accuracy(rejected, labels) if (~known).any() else None
    if sweep is not None:
        rep["sweep"] = threshold_sweep(score, pred, labels, sweep)
    if with_auroc:
        rep["auroc"] = auroc(score, known)
    return rep


def open_set_report(test: Predictions, open_: Optional[Predictions], train_counts: np.ndarray,
                    threshold: float, many: int, few: int, sweep: list[float],
                    rule: str = "paper") -> dict:
    """:func:`open_set_scores_report` of test + open predictions scored by max softmax."""
    both = concat_predictions(test, open_)
    return open_set_scores_report(both.pred, both.max_prob, both.labels, train_counts, threshold,
                                  many, few, sweep=sweep, rule=rule)


def concat_predictions(a: Predictions, b: Optional[Predictions]) -> Predictions:
    """``a`` followed by ``b`` (``a`` itself when ``b`` is None)."""
    if b is None:
        return a
    return Predictions(np.concatenate([a.max_prob, b.max_prob]), np.concatenate([a.pred, b.pred]),
                       np.concatenate([a.labels, b.labels]))


def write_predictions_csv(path: Path, items: list[str], p: Predictions, threshold: float) -> None:
    """``path,label,pred,score`` per image; pred -1 where rejected as unknown."""
    pred = reject(p.max_prob, p.pred, threshold)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "pred", "score"])
        for item, lab, pr, sc in zip(items, p.labels, pred, p.max_prob):
            w.writerow([item, int(lab), int(pr), f"{float(sc):.6f}"])
