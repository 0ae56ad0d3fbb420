"""The open-set operating points beside each method's own score, in one protocol:

* ``best_f``: the rejection threshold (of the method's score) with the highest F-measure on test +
  open, and that F -- an oracle point (chosen on the evaluated images), reported as what the
  method could reach at best, never as its F-measure. Candidates: ``eval.sweep`` for probability
  scores (MSP, OpenMax), else the 0, 1, ..., 100 percentiles of the scores;
* ``by_score``: for a method whose score has a logit form, every logit score
  (:data:`~facelt.compare.evaluator.LOGIT_SCORES`: max softmax at ``eval.threshold``, energy and
  max-logit at the val-matched operating point of MSP, as the methods ``energy`` / ``max_logit``
  are) on the same logits: its F-measure, open-set rejection and AUROC. RIDE's logits are its
  experts' mean, so its scores are those of the mean.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from facelt.compare.collect import Collected
from facelt.compare.evaluator import LOGIT_SCORES, MethodEvaluator, Outputs
from facelt.openset.metrics import auroc, best_f_threshold, matched_threshold, open_set_f_measure, reject

PROBABILITY_SCORES = ("msp", "openmax")


def _joined(test: Outputs, test_labels: np.ndarray, open_: Optional[Outputs]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.concatenate([test.pred] + ([open_.pred] if open_ else []))
    score = np.concatenate([test.score] + ([open_.score] if open_ else []))
    labels = np.concatenate([test_labels] + ([np.full(len(open_.pred), -1)] if open_ else []))
    return pred, score, labels


def best_f(test: Outputs, test_labels: np.ndarray, open_: Optional[Outputs], score_name: str,
           sweep: list[float]) -> dict:
    """``{"threshold", "f_measure"}`` of the best-F rejection threshold on test + open."""
    pred, score, labels = _joined(test, test_labels, open_)
    candidates = (sweep if score_name in PROBABILITY_SCORES
                  else np.unique(np.percentile(score, np.linspace(0, 100, 101))))
    t, f = best_f_threshold(score, pred, labels, candidates)
    return {"threshold": t, "f_measure": f}


def score_variants(evaluator: MethodEvaluator, test: Collected, open_: Optional[Collected],
                   val: Optional[Collected], threshold: float) -> dict:
    """``{score: {threshold, f_measure, open_rejected, auroc}}`` for every logit score (energy and
    max-logit only with a val split, which fixes their threshold); ``{}`` for OpenMax."""
    if evaluator.openmax is not None:
        return {}
    out: dict[str, dict] = {}
    accept = None
    if val is not None:
        known = val.labels >= 0
        accept = float(np.mean(evaluator.msp_outputs(val)[known] >= threshold))
    for name in LOGIT_SCORES:
        if name != "msp" and accept is None:
            continue
        t_out = evaluator.outputs(test, name)
        o_out = evaluator.outputs(open_, name) if open_ is not None else None
        if name == "msp":
            t = threshold
        else:
            known = val.labels >= 0
            t = matched_threshold(evaluator.outputs(val, name).score[known], accept)
        pred, score, labels = _joined(t_out, test.labels, o_out)
        rejected = reject(score, pred, t)
        opened = labels < 0
        out[name] = {"threshold": float(t), "f_measure": open_set_f_measure(rejected, labels),
                     "open_rejected": (float(np.mean(rejected[opened] < 0)) if opened.any()
                                       else None),
                     "auroc": auroc(score, labels >= 0)}
    return out
