"""What a stage's evaluations plug into: the trainer knows no evaluation by name.

arcface_torch passes its trainer a verification callback and keeps the evaluation code outside the
loop; facelt does the same with two typed seams, so ``facelt.train`` imports no evaluation package
(features / faces / openset sit above it; ``facelt.jobs`` assembles a run from a config):

* a :data:`Validation` -- ``(net, data) -> metrics``: the report of the evaluation network on the
  stage's validation split (rank 0). The trainer calls it after every epoch when the stage has a
  validation split and writes it to the epoch's ``val`` entry; ``best.pt`` is the epoch with the
  highest ``overall``. ``facelt.openset.evaluate.ClosedSetValidation`` is the one the job gives.
* :class:`EpochEvaluation` objects -- a step callback that also evaluates at every epoch end into
  the epoch's metrics under its ``key`` (``facelt.faces.verify_callback.VerificationCallback``:
  ``verification``). Each gets a :class:`StageStart` when its stage begins.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch.nn as nn

from facelt.train.loop import StepContext
from facelt.train.stage import StageData, StageParts
from facelt.train.state import TrainState

__all__ = ["Validation", "StageStart", "EpochEvaluation"]

#: ``(evaluation network, the stage's data) -> metrics`` on rank 0; ``best.pt`` follows ``overall``
Validation = Callable[[nn.Module, StageData], dict]


@dataclass
class StageStart:
    """What an evaluation sees when its stage begins (every rank): the stage's parts, its output
    folder, the progress restored from a checkpoint (a fresh :class:`TrainState` otherwise) and the
    number of optimizer steps in one epoch."""

    parts: StageParts
    out_dir: Path
    state: TrainState
    steps_per_epoch: int


class EpochEvaluation(Protocol):
    """An evaluation run during training (collective: every method is called on every rank)."""

    #: its entry in each epoch's metrics (``metrics.jsonl``, the progress line)
    key: str

    def start_stage(self, start: StageStart) -> None:
        """Attach to a stage before its first step."""

    def __call__(self, ctx: StepContext) -> None:
        """Step callback (after every optimizer step)."""

    def at_epoch_end(self, epoch: int) -> dict:
        """Evaluate after epoch ``epoch`` (0-based): the epoch's ``metrics[key]``."""

    def summary(self, result: dict) -> str:
        """Its part of the epoch's progress line, from a non-empty ``at_epoch_end`` result."""
