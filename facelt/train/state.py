"""A stage's checkpoint: :class:`TrainState` (progress) + :class:`StageParts` -> one dict, and back.

:func:`checkpoint_state` gathers every rank's RNG state itself (a collective: every rank calls it,
rank 0 then writes the result), so nothing has to be called before it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from facelt.errors import CheckpointError
from facelt.models.checkpoint import load_checkpoint
from facelt.parallel import collectives as col
from facelt.parallel.process import DistInfo
from facelt.train.loop import EpochPosition, steps_in_epoch
from facelt.train.stage import StageParts


@dataclass
class TrainState:
    """How far a stage got: ``epoch`` is the last finished epoch (-1: none); ``position`` the
    progress inside the next one (a mid-epoch checkpoint); ``best`` the best validation top-1 and
    its epoch; ``metrics`` the last epoch's metrics."""

    epoch: int = -1
    complete: bool = False
    best: dict = field(default_factory=lambda: {"val_overall": None, "epoch": None})
    metrics: dict = field(default_factory=dict)
    position: Optional[EpochPosition] = None


def gather_rng_states(dist: DistInfo) -> torch.Tensor:
    """Every rank's torch RNG state, stacked ``(world, n)`` (a collective under torchrun)."""
    own = torch.get_rng_state()
    if not dist.distributed:
        return own.unsqueeze(0)
    return torch.stack(col.all_gather_objects(own))


def own_rng_state(saved: torch.Tensor, dist: DistInfo, where: Path) -> torch.Tensor:
    """This rank's RNG state from a checkpoint's stacked states (or its single state)."""
    saved = saved.cpu()
    if saved.dim() == 1:  # one state for all ranks
        return saved.clone()
    if saved.shape[0] != dist.world_size:
        raise CheckpointError(f"{where}: saved by {saved.shape[0]} processes, resumed with "
                              f"{dist.world_size}; resume with the same number")
    return saved[dist.rank].clone()  # set_rng_state needs its own storage, not a view


TRAINING_KEYS = ("optimizer", "scheduler", "scaler")


def checkpoint_state(parts: StageParts, state: TrainState) -> dict:
    """The checkpoint dict of ``parts`` at ``state`` (collective: call it on every rank)."""
    rng = gather_rng_states(parts.dist)
    pos = state.position
    partial = None if pos is None else {"epoch": pos.epoch, "step": pos.step,
                                        "seconds": pos.seconds,
                                        "callback_seconds": pos.callback_seconds,
                                        "sums": list(pos.sums)}
    data = parts.data
    out = {
        "config": parts.cfg.to_dict(), "stage": parts.stage, "epoch": state.epoch,
        "partial": partial, "complete": state.complete, "num_classes": data.num_classes,
        "class_counts": [int(c) for c in data.counts], "class_names": list(data.class_names),
        "model": parts.strategy.model_state(parts.net),  # collective
        "optimizer": parts.strategy.optimizer_state(parts.net, parts.optimizer),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
        "rng": rng, "best": state.best, "metrics": state.metrics,
    }
    return out


def without_training_state(ckpt: dict) -> dict:
    """A checkpoint dict without optimizer, scheduler and scaler (``best.pt``: for evaluation)."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_KEYS}


def restore_checkpoint(parts: StageParts, path: Path) -> TrainState:
    """Load model, optimizer, scheduler, scaler and this rank's RNG state from ``path``; return
    the saved progress (``position.rng`` is set: restore it once the data iterator exists)."""
    saved = load_checkpoint(path, map_location=parts.device)
    if saved.get("stage") != parts.stage:
        raise CheckpointError(f"{path}: holds stage {saved.get('stage')}, expected {parts.stage}")
    parts.strategy.load_model_state(parts.net, saved["model"], str(path))
    parts.strategy.load_optimizer_state(parts.net, parts.optimizer, saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:  # empty when saved without AMP
        parts.scaler.load_state_dict(saved["scaler"])
    rng = own_rng_state(saved["rng"], parts.dist, path)
    torch.set_rng_state(rng)
    state = TrainState(epoch=int(saved["epoch"]), complete=bool(saved.get("complete")),
                       best=saved.get("best", TrainState().best), metrics=saved.get("metrics", {}))
    p = saved.get("partial")
    if p is not None:
        state.position = EpochPosition(int(p["epoch"]), int(p["step"]), list(p["sums"]),
                                       float(p["seconds"]), rng,
                                       float(p.get("callback_seconds", 0.0)))
    done = (state.epoch + 1) * steps_in_epoch(parts)
    parts.strategy.resume_at_step(parts.net, done + (state.position.step if state.position else 0))
    return state
