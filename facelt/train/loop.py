"""One epoch of training over :class:`~facelt.train.stage.StageParts`, with step callbacks.

:func:`train_one_epoch` runs the steps of one epoch (from a mid-epoch position when resuming),
stops on a non-finite loss or embedding, or a loss that explodes (:class:`DivergenceGuard`), on
any rank, and returns the epoch's metrics. After each step it calls
every callback with a :class:`StepContext` (arcface_torch style: a list of callables); the
trainer's mid-epoch checkpoint is one of them. Callbacks run on every rank (a collective inside
one is fine: all ranks call it at the same step).

The epoch's ``images_per_s`` counts training time only: the seconds spent inside step callbacks
(a verification every N steps, a mid-epoch checkpoint) are measured, reported as
``callback_seconds`` and left out of it, as the epoch-end evaluation and checkpoint are. A callback
that measures something publishes it in :attr:`StepContext.results` under its key, in the shape
of its epoch-metrics entry, for the loggers after it (the TensorBoard logger writes it at the
global step).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from facelt.data.build import make_loader
from facelt.data.samplers import SkipSampler
from facelt.errors import TrainingError
from facelt.parallel import collectives as col
from facelt.train.stage import StageParts, set_train_mode
from facelt.utils.progress import progress

#: the running sums of an epoch: loss, ce, centroid loss, correct, images (each x images)
SUM_NAMES = ("loss", "ce", "centroid", "correct", "images")


class NonFiniteLoss(TrainingError):
    """The loss or the embeddings of a step are not finite."""


class DivergedLoss(TrainingError):
    """A step's loss exploded (:class:`DivergenceGuard`)."""


#: the stage's first steps whose median loss is the guard's reference
DIVERGENCE_WARMUP_STEPS = 5
#: the reference is at least this (a fine-tune that starts near 0 is not stopped by noise)
DIVERGENCE_MIN_REFERENCE = 0.01


class DivergenceGuard:
    """Stops a stage whose loss explodes: a finite loss above ``factor`` x the median of the
    stage's first :data:`DIVERGENCE_WARMUP_STEPS` losses (floored at
    :data:`DIVERGENCE_MIN_REFERENCE`); ``factor`` 0 never stops. A loss of 1.4e16 is finite,
    so the non-finite check alone lets it through."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)
        self.first: list[float] = []

    @property
    def reference(self) -> Optional[float]:
        if len(self.first) < DIVERGENCE_WARMUP_STEPS:
            return None
        import statistics
        return max(statistics.median(self.first), DIVERGENCE_MIN_REFERENCE)

    def exploded(self, value: float) -> bool:
        """Whether ``value`` (a finite loss) exceeds the limit; records it among the first."""
        if self.factor <= 0:
            return False
        ref = self.reference
        if ref is None:
            self.first.append(value)
            return False
        return value > self.factor * ref


@dataclass
class EpochPosition:
    """Where a resumed epoch continues: steps done, their running sums, the seconds spent (of
    them ``callback_seconds`` inside step callbacks) and the RNG state to restore once the data
    iterator exists."""

    epoch: int
    step: int
    sums: list[float]
    seconds: float
    rng: Optional[torch.Tensor] = None
    callback_seconds: float = 0.0


@dataclass
class StepContext:
    """What a step callback sees, after the optimizer step: ``step`` steps of ``steps`` are done,
    in ``seconds`` since the epoch began (``callback_seconds`` of them inside step callbacks).
    ``results``: what a callback measured at this step, ``{key: nested metrics}``, for the
    loggers that run after it."""

    parts: StageParts
    epoch: int
    step: int
    steps: int
    loss: float
    sums: torch.Tensor
    seconds: float
    callback_seconds: float = 0.0
    results: dict = field(default_factory=dict)

    @property
    def global_step(self) -> int:
        """Optimizer steps since the stage began (:func:`global_step`)."""
        return global_step(self.epoch, self.step, self.steps)


def global_step(epoch: int, step: int, steps: int) -> int:
    """Optimizer steps since the stage began after ``step`` of ``steps`` steps of epoch ``epoch``
    (0-based): ``epoch * steps + step``; an epoch's end is ``global_step(epoch + 1, 0, steps)``."""
    return epoch * steps + step


StepCallback = Callable[[StepContext], None]


def steps_in_epoch(parts: StageParts) -> int:
    st = parts.st
    n = len(parts.loader)
    return n if not st.max_steps_per_epoch else min(n, st.max_steps_per_epoch)


def _non_finite(parts: StageParts, epoch: int, step: int, checkpoint: Optional[Path]
                ) -> NonFiniteLoss:
    kept = (f"the last good checkpoint ({checkpoint}) is kept"
            if checkpoint is not None and checkpoint.exists()
            else f"no checkpoint of stage {parts.stage} had been written yet")
    return NonFiniteLoss(
        f"non-finite loss at stage {parts.stage}, epoch {epoch + 1}, step {step + 1}: training "
        f"stopped; {kept}. Lower the learning rates, set stage{parts.stage}.grad_clip, or check "
        f"the data.")


def _stop(parts: StageParts, epoch: int, step: int, checkpoint: Optional[Path], flags: list,
          value: float, guard: "DivergenceGuard") -> TrainingError:
    if flags[0] > 0:
        return _non_finite(parts, epoch, step, checkpoint)
    kept = (f"the last good checkpoint ({checkpoint}) is kept"
            if checkpoint is not None and checkpoint.exists()
            else f"no checkpoint of stage {parts.stage} had been written yet")
    where = f"stage {parts.stage}, epoch {epoch + 1}, step {step + 1}"
    if flags[1] > 0:
        return NonFiniteLoss(f"non-finite embeddings at {where}: training stopped; {kept}. Lower "
                             f"the learning rates or set stage{parts.stage}.grad_clip.")
    ref = guard.reference
    return DivergedLoss(
        f"the loss diverged at {where}: {value:.4g} (on one rank at least) is more than "
        f"stage{parts.stage}.divergence_factor = {guard.factor:g} x the median of the stage's "
        f"first {DIVERGENCE_WARMUP_STEPS} steps ({ref:.4g}); training stopped; {kept}. Lower "
        f"the learning rates, add warmup, or set stage{parts.stage}.grad_clip.")


def _correct(out: dict, y: torch.Tensor, terms: dict) -> float:
    """Correct predictions this rank counts: the loss's own count when it gives one (a sharded
    head's logits are one rank's columns), else the arg-max of the logits."""
    if "correct" in terms:
        return float(terms["correct"])
    return float((out["logits"].argmax(1) == y).sum().item())


def train_one_epoch(parts: StageParts, epoch: int, position: Optional[EpochPosition] = None,
                    callbacks: Sequence[StepCallback] = (), checkpoint: Optional[Path] = None,
                    guard: Optional[DivergenceGuard] = None) -> dict:
    """Train ``parts.model`` for epoch ``epoch`` (0-based) and return its metrics (summed over
    ranks): ``loss``, ``ce``, ``centroid_loss``, ``train_acc``, ``images``, ``seconds`` (wall),
    ``callback_seconds`` (inside step callbacks) and ``images_per_s`` (images over the seconds
    outside them). ``checkpoint``: the stage's checkpoint file, named in the error on a
    non-finite loss (it is kept as it was). ``guard``: the stage's divergence guard (kept over
    its epochs; a fresh one from ``stageN.divergence_factor`` when None)."""
    st, net, device = parts.st, parts.net, parts.device
    sampler, loader = parts.sampler, parts.loader
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(parts.loss, "set_epoch"):  # losses that change with the epoch (DRW)
        parts.loss.set_epoch(epoch)
    set_train_mode(net, st)
    steps = steps_in_epoch(parts)
    sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64)
    first, spent, in_callbacks = 0, 0.0, 0.0
    if position is not None:  # continue inside the epoch: skip the batches already trained on
        first, spent = int(position.step), float(position.seconds)
        in_callbacks = float(position.callback_seconds)
        sums += torch.tensor(position.sums, dtype=torch.float64)
        loader = make_loader(loader.dataset, loader.batch_size, loader.num_workers,
                             sampler=SkipSampler(sampler, first * loader.batch_size),
                             drop_last=loader.drop_last, pin=loader.pin_memory)
    batches = iter(loader)  # (draws the loader's base seed from the RNG) ...
    if position is not None and position.rng is not None:  # ... so restore the RNG after it
        torch.set_rng_state(position.rng.cpu())
    t0 = time.time() - spent
    bar = progress(total=steps, initial=first, desc=f"stage {parts.stage} epoch {epoch + 1}/{st.epochs}",
                   unit="batch", disable=not parts.dist.is_primary)
    autocast = torch.autocast("cuda", dtype=parts.amp_dtype) if parts.use_amp else nullcontext()
    optimizer, scaler = parts.optimizer, parts.scaler
    if guard is None:
        guard = DivergenceGuard(st.divergence_factor)
    for step in range(first, steps):
        try:
            x, y, _ = next(batches)
        except StopIteration:
            break
        x = x.to(device, non_blocking=True)
        y = torch.as_tensor(y, device=device).long()
        mix = None
        if parts.batch_transform is not None:  # mixup, two views (facelt/train/batch.py)
            batch = parts.batch_transform(x, y)
            x, y, mix = batch.inputs, batch.labels, batch.mix
        with autocast:
            out = parts.model(x, y)
        loss, terms = parts.loss(out, y) if mix is None else parts.loss(out, y, mix=mix)
        value = loss.item()
        finite = bool(torch.isfinite(loss))
        feats = out.get("features") if isinstance(out, dict) else None
        bad = torch.tensor([0.0 if finite else 1.0,
                            0.0 if feats is None or bool(torch.isfinite(feats).all()) else 1.0,
                            1.0 if finite and guard.exploded(value) else 0.0], device=device)
        col.all_reduce_sum(bad)
        flags = bad.tolist()
        if any(f > 0 for f in flags):
            raise _stop(parts, epoch, step, checkpoint, flags, value, guard)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        parts.strategy.after_backward(net, scaler)  # e.g. AMP: ranks agree on skipping a step
        if st.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), st.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for constraint in parts.constraints:  # e.g. MaxNorm every step
            constraint.after_step(net)
        n = y.shape[0]
        sums += torch.tensor([value * n, terms["ce"].item() * n,
                              float(terms.get("centroid", torch.tensor(0.0))) * n,
                              _correct(out, y, terms), n], dtype=torch.float64)
        bar.update(1)
        training = max(time.time() - t0 - in_callbacks, 1e-9)  # outside the step callbacks
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{sums[4].item() / training:.0f}")
        if callbacks:
            entered = time.time()
            ctx = StepContext(parts, epoch, step + 1, steps, value, sums, entered - t0,
                              in_callbacks)
            for cb in callbacks:
                cb(ctx)
            in_callbacks += time.time() - entered
    bar.close()
    totals = sums.to(device, copy=True)  # NCCL reduces device tensors only
    col.all_reduce_sum(totals)
    totals = totals.cpu()
    n = max(totals[4].item(), 1.0)
    dt = time.time() - t0
    return {"loss": totals[0].item() / n, "ce": totals[1].item() / n,
            "centroid_loss": totals[2].item() / n, "train_acc": totals[3].item() / n,
            "images": int(totals[4].item()), "seconds": round(dt, 3),
            "callback_seconds": round(in_callbacks, 3),
            "images_per_s": round(totals[4].item() / max(dt - in_callbacks, 1e-9), 1)}
