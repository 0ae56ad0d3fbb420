"""The two-stage OLTR training loop (both stages, CPU or CUDA, 1 or N processes).

Stage 1: the plain model (backbone + linear classifier, cross-entropy, instance-balanced sampling).
Stage 2: start from stage 1's backbone; centroids = per-class mean feature over the training set;
the meta-embedding head with the cosine classifier; CE + w * discriminative-centroid loss;
class-aware sampling; per-module learning rates; optionally a frozen backbone.

:class:`StageTrainer` composes the public pieces: :func:`~facelt.train.stage.build_stage`
(network, optimizer, loss, loader ...), :func:`~facelt.train.stage.init_head_from_data`,
:func:`~facelt.train.state.restore_checkpoint`, :func:`~facelt.train.loop.train_one_epoch` and
:func:`~facelt.train.state.checkpoint_state`. Step callbacks (``step_callbacks``) and epoch
callbacks (``epoch_callbacks``, called with an :class:`EpochContext` after the epoch's checkpoint
is written) let features plug in without editing the loop. Evaluations are given, never imported
(:mod:`facelt.train.hooks`): a ``validation`` (``best.pt`` is chosen on its ``overall``) and
``evaluations`` that also write into each epoch's metrics; without them a stage trains without
evaluating. :func:`facelt.jobs.train.train` assembles a whole run from a config (run lock,
validation, ``eval.verification``, every stage).

Outputs of a stage in ``OUT/stageN/``: ``checkpoint.pt`` (every epoch and at the end, with everything
needed to resume), ``best.pt`` (the epoch of the best validation ``overall``, given a validation),
``metrics.jsonl`` (a JSON line per epoch) and ``config.yaml`` (the resolved config).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from facelt.config import Config, config_yaml
from facelt.errors import FaceltError
from facelt.parallel import collectives as col
from facelt.parallel import process as D
from facelt.models.checkpoint import load_checkpoint, save_checkpoint
from facelt.train.resume_check import check_resume_config
from facelt.train.hooks import EpochEvaluation, StageStart, Validation
from facelt.train.run_log import config_key_lines, eta_line, learning_rates, tensorboard_logger
from facelt.train.loop import (DivergedLoss, DivergenceGuard, EpochPosition, NonFiniteLoss,
                               StepCallback, StepContext, steps_in_epoch, train_one_epoch)
from facelt.train.stage import StageParts, build_stage, init_head_from_data, stage_dir
from facelt.train.state import (TrainState, checkpoint_state, restore_checkpoint,
                                without_training_state)
from facelt.utils.io import append_jsonl, write_text

__all__ = ["StageTrainer", "StageResult", "EpochContext", "MidEpochCheckpoint", "NonFiniteLoss",
           "DivergedLoss",
           "stage_dir", "validate"]


@dataclass
class StageResult:
    stage: int
    out_dir: Path
    checkpoint: Path
    epochs_run: int
    last_metrics: dict


@dataclass
class EpochContext:
    """What an epoch callback sees, after the epoch's checkpoint was written (every rank)."""

    parts: StageParts
    state: TrainState
    metrics: dict


EpochCallback = Callable[[EpochContext], None]


def validate(parts: StageParts, validation: Optional[Validation]) -> dict:
    """``validation`` of the evaluation network on the validation split (rank 0; ``{}`` elsewhere,
    without a validation split or without ``validation``); NaN values become None."""
    if parts.data.val is None or validation is None:
        return {}
    net = parts.strategy.evaluation_net(parts.net)  # collective
    if net is None or not parts.dist.is_primary:
        return {}
    rep = validation(net, parts.data)
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            for k, v in rep.items()}


class MidEpochCheckpoint:
    """Step callback: write ``checkpoint.pt`` every ``every`` steps inside an epoch (not at its last
    step: the epoch end writes it). Each rank's running sums stay local; rank 0 writes."""

    def __init__(self, path: Path, state: TrainState, every: int) -> None:
        self.path = path
        self.state = state
        self.every = every

    def __call__(self, ctx: StepContext) -> None:
        if not self.every or ctx.step % self.every or ctx.step >= ctx.steps:
            return
        parts = ctx.parts
        totals = ctx.sums.to(parts.device, copy=True)  # reduced in place: never the local sums
        col.all_reduce_sum(totals)  # the epoch's running sums over all ranks
        sums = (totals.cpu() / parts.dist.world_size).tolist()
        state = TrainState(epoch=ctx.epoch - 1, complete=False, best=self.state.best,
                           metrics=self.state.metrics,
                           position=EpochPosition(ctx.epoch, ctx.step, sums, ctx.seconds,
                                                  callback_seconds=ctx.callback_seconds))
        ckpt = checkpoint_state(parts, state)  # collective
        if parts.dist.is_primary:
            save_checkpoint(self.path, ckpt)
        col.barrier()


class StageTrainer:
    """Runs one stage; construct, then :meth:`run`. :meth:`build` returns the stage's parts (a
    subclass may wrap them, e.g. ``parts.loss``); ``state`` is the stage's progress.
    ``validation`` and ``evaluations``: see :mod:`facelt.train.hooks` (none: no evaluation)."""

    def __init__(self, cfg: Config, stage: int, out: Path, resume: bool = False,
                 init_checkpoint: Optional[Path] = None, dist: Optional[D.DistInfo] = None,
                 step_callbacks: Sequence[StepCallback] = (),
                 epoch_callbacks: Sequence[EpochCallback] = (), later_epochs: int = 0,
                 validation: Optional[Validation] = None,
                 evaluations: Sequence[EpochEvaluation] = ()) -> None:
        self.cfg = cfg
        self.stage = stage
        self.st = cfg.stage(stage)
        self.out = Path(out)
        self.dir = stage_dir(self.out, stage)
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.resume = resume
        self.init_checkpoint = init_checkpoint
        self.dist = dist or D.setup(cfg.device)
        self.step_callbacks = list(step_callbacks)
        self.epoch_callbacks = list(epoch_callbacks)
        self.validation = validation
        self.evaluations = list(evaluations)
        self.state = TrainState()
        self.later_epochs = later_epochs  # epochs of the stages this run trains after this one
        self.tensorboard = tensorboard_logger(  # before work; evaluations' points at global steps
            cfg, self.dir, self.dist.is_primary, [e.key for e in self.evaluations])

    def build(self) -> StageParts:
        return build_stage(self.cfg, self.stage, self.dist, init_checkpoint=self.init_checkpoint,
                           out=self.out)

    def check_resume(self) -> dict:
        """With ``--resume`` and a checkpoint: refuse a config that trains differently from the
        saved run (:func:`~facelt.train.resume_check.check_resume_config`), before anything is
        restored or written; the allowed changes are recorded in ``OUT/stageN/resumes.jsonl``."""
        if not (self.resume and self.checkpoint_path.exists()):
            return {}
        saved = load_checkpoint(self.checkpoint_path)
        done = int(saved.get("epoch", -1)) + 1 + (1 if saved.get("partial") else 0)
        changes = check_resume_config(saved["config"], self.cfg, self.stage, done,
                                      self.checkpoint_path)
        if changes and self.dist.is_primary:
            import time
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "resumed_after_epoch": int(saved.get("epoch", -1)) + 1,
                      "changed": {k: [old, new] for k, (old, new) in changes.items()}}
            append_jsonl(self.dir / "resumes.jsonl", record)
            print(f"stage {self.stage}: resuming with "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
                  flush=True)
        return changes

    def _resume_or_start(self, parts: StageParts) -> TrainState:
        if not self.checkpoint_path.exists():
            return TrainState()
        if not self.resume:
            raise FaceltError(f"{self.checkpoint_path} already exists: pass --resume to continue "
                              f"that run, or choose another --out (nothing was overwritten)")
        return restore_checkpoint(parts, self.checkpoint_path)

    def run(self) -> StageResult:
        parts = self.build()  # first: bad lists / images are reported as such
        self.check_resume()
        self.state = state = self._resume_or_start(parts)
        ckpt_path = self.checkpoint_path
        if state.epoch < 0 and state.position is None:  # fresh (a resumed stage has its centroids)
            init_head_from_data(parts)
        start = state.epoch + 1
        if start >= self.st.epochs:
            if self.dist.is_primary:
                print(f"stage {self.stage}: already complete at {ckpt_path}")
            return StageResult(self.stage, self.dir, ckpt_path, 0, state.metrics)
        if self.dist.is_primary:
            self.dir.mkdir(parents=True, exist_ok=True)
            # the fully resolved recipe, every key: beside the stage and for the whole run (written
            # once the run's lock is held and a resume's config is checked)
            write_text(self.dir / "config.yaml", config_yaml(self.cfg))
            write_text(self.out / "config.yaml", config_yaml(self.cfg))
            print("\n".join(config_key_lines(parts)), flush=True)
        callbacks = [MidEpochCheckpoint(ckpt_path, state, self.st.checkpoint_every),
                     *self.step_callbacks]
        start_info = StageStart(parts, self.dir, state, steps_in_epoch(parts))
        for evaluation in self.evaluations:  # step callbacks that also evaluate at epoch ends
            evaluation.start_stage(start_info)
            callbacks.append(evaluation)
        epoch_callbacks = list(self.epoch_callbacks)
        if self.tensorboard is not None:
            callbacks.append(self.tensorboard.on_step)
            epoch_callbacks.append(self.tensorboard.on_epoch)
        try:
            return self._run_epochs(parts, state, start, callbacks, epoch_callbacks)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run_epochs(self, parts: StageParts, state: TrainState, start: int, callbacks: list,
                    epoch_callbacks: list) -> StageResult:
        ckpt_path = self.checkpoint_path
        epoch_seconds: list[float] = []
        run_epochs = 0
        guard = DivergenceGuard(self.st.divergence_factor)  # over the stage's epochs
        for epoch in range(start, self.st.epochs):
            began = time.monotonic()
            position, state.position = state.position, None
            train_m = train_one_epoch(parts, epoch, position, callbacks, checkpoint=ckpt_path,
                                      guard=guard)
            for constraint in parts.constraints:  # e.g. MaxNorm after the epoch's steps
                constraint.after_epoch(parts.net)
            trained_lr = learning_rates(parts.optimizer)  # the rates this epoch trained at
            parts.scheduler.step()
            val_m = validate(parts, self.validation)
            metrics = {"stage": self.stage, "epoch": epoch + 1, **train_m, "lr": trained_lr,
                       "val": val_m}
            for evaluation in self.evaluations:
                metrics[evaluation.key] = evaluation.at_epoch_end(epoch)
            state.epoch, state.complete = epoch, epoch + 1 == self.st.epochs
            improved = False
            if self.dist.is_primary:
                v = val_m.get("overall")
                if v is not None and (state.best["val_overall"] is None or v > state.best["val_overall"]):
                    state.best = {"val_overall": v, "epoch": epoch + 1}
                    improved = True
            state.metrics = metrics
            ckpt = checkpoint_state(parts, state)  # collective
            if self.dist.is_primary:
                if improved:
                    save_checkpoint(self.dir / "best.pt", without_training_state(ckpt))
                save_checkpoint(ckpt_path, ckpt)
                append_jsonl(self.dir / "metrics.jsonl", metrics)
                print(_summary(metrics, self.evaluations), flush=True)
                epoch_seconds.append(time.monotonic() - began)  # training + validation + saving
                print(eta_line(self.stage, epoch + 1, self.st.epochs, epoch_seconds,
                               self.later_epochs), flush=True)
            col.barrier()
            for cb in epoch_callbacks:
                cb(EpochContext(parts, state, metrics))
            run_epochs += 1
        return StageResult(self.stage, self.dir, ckpt_path, run_epochs, state.metrics)


def _summary(m: dict, evaluations: Sequence[EpochEvaluation] = ()) -> str:
    val = m.get("val") or {}
    parts = [f"stage {m['stage']} epoch {m['epoch']}", f"loss {m['loss']:.4f}",
             f"train acc {m['train_acc']:.3f}", f"{m['images_per_s']:.0f} img/s"]
    if val.get("overall") is not None:
        parts.append("val " + " ".join(f"{k} {val[k]:.3f}" for k in ("overall", "many", "medium", "few")
                                        if val.get(k) is not None))
    for evaluation in evaluations:
        if m.get(evaluation.key):
            parts.append(evaluation.summary(m[evaluation.key]))
    return " | ".join(parts)
