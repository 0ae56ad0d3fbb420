"""A training run from a config: :func:`train` (what ``facelt train``, ``facelt compare`` and the
demo call).

The trainer (:mod:`facelt.train.trainer`) knows no evaluation; this job gives it what a recipe
asks for: the run lock of ``OUT`` (:func:`lock_output`), the closed-set validation every stage
chooses ``best.pt`` on (:class:`facelt.openset.evaluate.ClosedSetValidation`), the verification
sets of ``eval.verification`` (:class:`facelt.faces.verify_callback.VerificationCallback`, read
once for all stages), then every requested stage in order.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from facelt.config import Config
from facelt.errors import FaceltError
from facelt.faces.verify_callback import VerificationCallback
from facelt.models.components import check_component_names
from facelt.openset.evaluate import ClosedSetValidation
from facelt.parallel import collectives as col
from facelt.parallel import process as D
from facelt.train.trainer import StageResult, StageTrainer
from facelt.data.image_size import check_recipe_image_size
from facelt.utils.run_lock import RunLock, lock_run_folder

__all__ = ["train", "lock_output"]


def train(cfg: Config, stages: list[int], out: Path, resume: bool = False,
          init_checkpoint: Optional[Path] = None) -> list[StageResult]:
    """Run the requested stages in order, in this process (one rank of torchrun or alone);
    ``init_checkpoint`` is where stage 2 starts (default: ``stage2.init_weights`` of stage 1)."""
    check_component_names(cfg)  # stage 2's head is built after stage 1 trained: check it now
    dist = D.setup(cfg.device)
    results = []
    lock = None
    try:
        lock = lock_output(out, dist)  # a folder another run holds is refused first
        check_recipe_image_size(cfg)  # before the verification sets are decoded or a step is taken
        verification = VerificationCallback.from_config(cfg, dist)  # read once for all stages
        validation = ClosedSetValidation.from_config(cfg, dist.device)
        for i, s in enumerate(stages):
            later = sum(cfg.stage(t).epochs for t in stages[i + 1:])
            trainer = StageTrainer(cfg, s, out, resume=resume, dist=dist,
                                   init_checkpoint=init_checkpoint if s == 2 else None,
                                   later_epochs=later, validation=validation,
                                   evaluations=[] if verification is None else [verification])
            results.append(trainer.run())
    finally:
        if lock is not None:
            lock.release()
        D.teardown(after_error=sys.exc_info()[0] is not None)
    return results


def lock_output(out: Path, dist: D.DistInfo) -> RunLock:
    """Rank 0 takes ``OUT/.facelt.lock`` (:func:`~facelt.utils.run_lock.lock_run_folder`); every
    rank learns whether it did (a collective under torchrun), so a refused run stops on all ranks."""
    import torch
    lock, error = None, None
    if dist.is_primary:
        try:
            lock = lock_run_folder(out)
        except FaceltError as exc:
            error = exc
    flag = torch.tensor([0.0 if error is None else 1.0], device=dist.device)
    col.all_reduce_sum(flag)
    if error is not None:
        raise error
    if flag.item() > 0:
        raise FaceltError(f"{out}: rank 0 could not take the run lock (see its error)")
    return lock if lock is not None else lock_run_folder(out, primary=False)
