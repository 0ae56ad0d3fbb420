"""One method's predictions and open-set scores from one checkpoint's embeddings (post-hoc
transforms: tau-normalisation, logit adjustment, OpenMax; scores: MSP, energy, max-logit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from facelt.compare.collect import Collected, chunk_logits
from facelt.compare.methods import MethodSpec
from facelt.errors import ConfigError
from facelt.openset.openmax import OpenMax
from facelt.openset.posthoc import energy, logit_adjust, max_logit, msp, select_tau, tau_normalize

OPENMAX_LOGIT_AV_MAX_CLASSES = 4096
"""OpenMax uses the logit vector as activation vector (the paper) up to this many classes; above,
its ``K x K`` MAVs would not fit (74.5K^2 floats = 22 GB) and the embedding ``v`` is used."""
#: tau-norm's default sweep: classifier-balancing's tau_norm.py, np.linspace(0, 2, 21)
TAU_SWEEP = [float(t) for t in np.linspace(0.0, 2.0, 21)]


@dataclass
class Outputs:
    pred: np.ndarray    # arg-max known class (N,)
    score: np.ndarray   # open-set score, higher = known (N,)


#: the open-set scores with a logit form (every method whose score is one of them is also
#: reported under the others: :func:`facelt.compare.scores.score_variants`)
LOGIT_SCORES = ("msp", "energy", "max_logit")


def _score_fn(spec: MethodSpec, score: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
    score = score or spec.score
    if score == "msp":
        return msp
    if score == "energy":
        temp = float(spec.score_args.get("T", 1.0))
        return lambda lg: energy(lg, temp)
    if score == "max_logit":
        return max_logit
    raise ConfigError(f"{spec.source}: score {score!r} has no logit form")


class MethodEvaluator:
    """Turns one checkpoint's embeddings into one method's predictions and scores."""

    def __init__(self, spec: MethodSpec, net: torch.nn.Module, counts: np.ndarray,
                 device: torch.device) -> None:
        self.spec, self.net, self.counts, self.device = spec, net, counts, device
        self.info: dict[str, Any] = {}
        self.transform: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda f, lg: lg
        self.openmax: Optional[OpenMax] = None
        self.use_logit_av = len(counts) <= OPENMAX_LOGIT_AV_MAX_CLASSES

    # ------------------------------------------------------------------ preparation
    def prepare(self, val: Optional[Collected], train: Optional[Collected]) -> None:
        spec = self.spec
        if spec.posthoc == "tau_norm":
            self._prepare_tau(val)
        elif spec.posthoc == "logit_adjust":
            tau = float(spec.posthoc_args.get("tau", 1.0))
            self.transform = lambda f, lg: logit_adjust(lg, self.counts, tau)
            self.info["tau"] = tau
        elif spec.posthoc == "openmax":
            self._prepare_openmax(train)

    def _linear_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        fc = getattr(self.net.head, "fc", None)
        if not isinstance(fc, torch.nn.Linear):
            raise ConfigError(f"{self.spec.source}: tau_norm needs a linear classifier head, the "
                              f"checkpoint has {type(self.net.head).__name__}")
        return fc.weight.detach(), fc.bias.detach()

    def _prepare_tau(self, val: Optional[Collected]) -> None:
        if val is None:
            raise ConfigError(f"{self.spec.source}: tau_norm selects tau on val: set data.val")
        weight, bias = self._linear_weights()
        # classifier-balancing's tau_norm.py scores with the normalised weights only (no bias)
        keep_bias = bool(self.spec.posthoc_args.get("bias", False))
        b = bias.double().cpu().numpy() if keep_bias else 0.0
        taus = [float(t) for t in self.spec.posthoc_args.get("taus", TAU_SWEEP)]

        def tau_logits(tau: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
            w = tau_normalize(weight, tau).double().cpu().numpy()
            return lambda f, lg: np.asarray(f, np.float64) @ w.T + b

        def val_accuracy(tau: float) -> float:
            fn = tau_logits(tau)
            correct = 0
            for sl, f, lg in chunk_logits(self.net, val.features, self.device):
                correct += int((fn(f, lg).argmax(1) == val.labels[sl]).sum())
            return correct / max(1, int((val.labels >= 0).sum()))

        best, sweep = select_tau(val_accuracy, taus)
        self.transform = tau_logits(best)
        self.info.update(tau=best, tau_sweep=sweep, bias=keep_bias)

    def _av(self, f: np.ndarray, lg: np.ndarray) -> np.ndarray:
        return lg if self.use_logit_av else f

    def _prepare_openmax(self, train: Optional[Collected]) -> None:
        if train is None:
            raise ConfigError(f"{self.spec.source}: openmax fits on data.train")
        a = self.spec.posthoc_args
        om = OpenMax(tailsize=int(a.get("tailsize", 20)), alpha_rank=int(a.get("alpha_rank", 10)),
                     distance=a.get("distance", "eucos"),
                     translate=float(a.get("translate", 10000.0)))

        def chunks():
            for sl, f, lg in chunk_logits(self.net, train.features, self.device):
                yield self._av(f, lg), lg.argmax(1), train.labels[sl]

        om.fit(chunks, len(self.counts))
        self.openmax = om
        self.info.update(tailsize=om.tailsize, alpha_rank=om.alpha_rank, distance=om.distance,
                         activation="logits" if self.use_logit_av else "embedding",
                         unfitted_classes=om.unfitted)

    # ------------------------------------------------------------------ outputs
    def outputs(self, data: Collected, score_name: Optional[str] = None) -> Outputs:
        """Predictions and the method's open-set score (``score_name``: another logit score of
        :data:`LOGIT_SCORES` on the same transformed logits)."""
        n = len(data.labels)
        pred = np.zeros(n, np.int64)
        score = np.zeros(n, np.float64)
        score_fn = None if self.openmax else _score_fn(self.spec, score_name)
        for sl, f, lg in chunk_logits(self.net, data.features, self.device):
            if self.openmax is not None:
                _, best, sc = self.openmax.predict(lg, self._av(f, lg))
                pred[sl], score[sl] = best, sc
            else:
                z = self.transform(f, lg)
                pred[sl], score[sl] = z.argmax(1), score_fn(z)
        return Outputs(pred, score)

    def msp_outputs(self, data: Collected) -> np.ndarray:
        """MSP of the same (transformed) logits: the reference operating point."""
        out = np.zeros(len(data.labels))
        for sl, f, lg in chunk_logits(self.net, data.features, self.device):
            out[sl] = msp(self.transform(f, lg))
        return out
