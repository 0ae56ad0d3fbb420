"""Face verification during training (arcface_torch's ``CallBackVerification``, the facelt way).

``eval.verification: [lfw, cfp_fp, agedb_30]`` names insightface ``.bin`` sets: a bare name is
``<name>.bin`` beside the training rec / list (``faces_emore/`` keeps them there), anything else is
a path (:func:`resolve_verification_sets`; a missing file is a :class:`~facelt.errors.DataError`
before any training). :class:`VerificationCallback` reads and decodes every set **once** on rank
0 (uint8 RGB at the model's input size, :class:`facelt.faces.verification.VerificationSet`) and then,
every ``eval.verify_every`` optimizer steps (a step callback; its results are published in the
step context for the TensorBoard logger, which draws them at the global step, as arcface_torch
does; the time it takes is left out of the epoch's images/s) and at each epoch end
(:meth:`VerificationCallback.at_epoch_end`, called by the trainer before the epoch's metrics are
written), embeds them with the bare network in eval mode (flip-sum, batches of
``eval.batch_size``) and runs insightface's 10-fold protocol.

It is one of the trainer's epoch evaluations (``facelt.train.hooks.EpochEvaluation``, duck-typed:
nothing here imports the training package): ``start_stage`` gets the stage's start (parts, output
folder, restored progress, steps per epoch), the step callback a step context (parts, epoch, step,
steps). ``facelt.jobs.train`` builds it from the config and hands it to every stage.

Only rank 0 evaluates; the other ranks wait in one all-reduce of a failure flag, so they leave
together with rank 0 and, if its evaluation fails, every rank raises instead of hanging.
Results (accuracy +- std, threshold, VAL at FAR 1e-3, XNorm, and the highest accuracy so far per
set) go to a printed line, the epoch's ``metrics.jsonl`` entry (``verification``) and
``OUT/stageN/verification.json`` / ``verification.md`` (every evaluation; the highest so far
survives ``--resume``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from facelt.config import Config
from facelt.errors import DataError, FaceltError
from facelt.parallel import collectives as col
from facelt.parallel import process as D
from facelt.utils.io import write_json, write_text

__all__ = ["resolve_verification_sets", "VerificationCallback", "VerificationFailed",
           "verification_summary"]

#: what a set's entry in the metrics keeps of the protocol's output
KEPT = ("pairs", "accuracy", "std", "threshold", "val", "val_std", "far", "xnorm")


class VerificationFailed(FaceltError):
    """Rank 0's verification failed (raised on the other ranks; rank 0 raises the cause)."""


def _training_folder(cfg: Config) -> Path:
    from facelt.data.build import split_location
    loc = split_location(cfg.data, "train")
    if loc is None:
        raise DataError("eval.verification names sets by name, but data.train is not set: give "
                        "their paths instead")
    return Path(loc).parent


def resolve_verification_sets(cfg: Config) -> list[Path]:
    """The ``.bin`` files ``eval.verification`` names, checked to exist (:class:`DataError` naming
    the entry and where it was looked for otherwise)."""
    paths: list[Path] = []
    for i, entry in enumerate(cfg.eval.verification):
        name = str(entry).strip()
        if not name:
            raise DataError(f"eval.verification[{i}] is empty: give a set name (lfw) or a .bin path")
        if "/" in name or "\\" in name or name.endswith(".bin"):
            p = Path(name).expanduser()
        else:
            p = _training_folder(cfg) / f"{name}.bin"
        if not p.is_file():
            raise DataError(f"eval.verification[{i}] = {entry!r}: verification set {p} not found "
                            "(a bare name is looked up as <name>.bin beside the training rec / "
                            "list; give a path otherwise)")
        paths.append(p)
    names = [p.stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"eval.verification: two sets named {dup[0]!r} ({', '.join(map(str, paths))})")
    return paths


def _global_step(epoch: int, step: int, steps: int) -> int:
    return epoch * steps + step


def _rank0_then_all(dist: D.DistInfo, fn: Callable[[], dict], what: str) -> dict:
    """Run ``fn`` on rank 0 while the other ranks wait; a failure on rank 0 raises everywhere."""
    result: dict = {}
    error: Optional[BaseException] = None
    if dist.is_primary:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 -- re-raised below, after the others are told
            error = exc
    flag = torch.tensor([0.0 if error is None else 1.0], device=dist.device)
    col.all_reduce_sum(flag)  # the others wait here for rank 0
    if error is not None:
        raise error
    if flag.item() > 0:
        raise VerificationFailed(f"{what} failed on rank 0 (its error is in its log)")
    return result


def verification_summary(results: dict) -> str:
    """``lfw 0.9950+-0.0030 (best 0.9950) | cfp_fp ...`` for a progress line."""
    return " | ".join(f"{name} {r['accuracy']:.4f}+-{r['std']:.4f} (best {r['highest']:.4f})"
                      for name, r in results.items())


class VerificationCallback:
    """Step callback + epoch-end evaluation of the configured verification sets (see module doc).

    Build it with :meth:`from_config` (collective: every rank calls it; rank 0 decodes the sets),
    then :meth:`start_stage` at the beginning of each stage.
    """

    #: its entry in each epoch's metrics
    key = "verification"

    def __init__(self, sets: list, dist: D.DistInfo, every: int, batch_size: int) -> None:
        self.sets = sets          # VerificationSet objects on rank 0, [] elsewhere
        self.dist = dist
        self.every = int(every)
        self.batch_size = int(batch_size)
        self.parts = None
        self.out_dir: Optional[Path] = None
        self.steps = 1
        self.highest: dict[str, dict] = {}
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, cfg: Config, dist: D.DistInfo) -> Optional["VerificationCallback"]:
        """None when ``eval.verification`` is empty. Missing files raise on every rank before
        anything is decoded; rank 0 then reads and decodes them once (collective)."""
        if not cfg.eval.verification:
            return None
        paths = resolve_verification_sets(cfg)  # every rank: the same clear error everywhere

        def load() -> dict:
            from facelt.faces.verification import VerificationSet
            return {"sets": [VerificationSet.load(p, cfg.data.image_size) for p in paths]}

        loaded = _rank0_then_all(dist, load, "reading the verification sets")
        return cls(loaded.get("sets", []), dist, cfg.eval.verify_every, cfg.eval.batch_size)

    # ------------------------------------------------------------------------------ per stage

    def start_stage(self, start) -> None:
        """Attach to a stage (``start``: its ``parts``, ``out_dir``, restored ``state`` and
        ``steps_per_epoch``); on a resumed stage keep the highest accuracies reached up to the
        checkpoint (from ``out_dir/verification.json``)."""
        self.parts = start.parts
        self.out_dir = Path(start.out_dir)
        self.steps = max(1, start.steps_per_epoch)
        state = start.state
        self.highest, self.history = {}, []
        resumed = state.epoch >= 0 or state.position is not None
        saved = self.out_dir / "verification.json"
        if not (resumed and self.dist.is_primary and saved.is_file()):
            return
        if state.position is not None:
            done = _global_step(state.position.epoch, state.position.step, self.steps)
        else:
            done = _global_step(state.epoch + 1, 0, self.steps)
        try:
            history = json.loads(saved.read_text()).get("history", [])
        except (OSError, ValueError):
            return  # a report, not a checkpoint: start the record afresh
        for entry in history:
            if entry.get("global_step", done + 1) <= done:
                self._record(entry)

    def _record(self, entry: dict) -> None:
        self.history.append(entry)
        for name, r in entry["results"].items():
            best = self.highest.get(name)
            if best is None or r["accuracy"] > best["accuracy"]:
                self.highest[name] = {"accuracy": r["accuracy"], "epoch": entry["epoch"],
                                      "step": entry["step"], "global_step": entry["global_step"]}
            r["highest"] = self.highest[name]["accuracy"]

    # ------------------------------------------------------------------------------ evaluation

    def __call__(self, ctx) -> None:
        """Step callback: every ``verify_every`` global steps, except at an epoch's last step
        (the epoch end evaluates then)."""
        if not self.every or ctx.step >= ctx.steps:
            return
        g = ctx.global_step
        if g % self.every:
            return
        results = self.evaluate(ctx.epoch + 1, ctx.step, g, "step")
        ctx.results[self.key] = results  # for the loggers after this callback (TensorBoard)
        if self.dist.is_primary:
            print(f"stage {ctx.parts.stage} epoch {ctx.epoch + 1} step {ctx.step} | "
                  f"{verification_summary(results)}", flush=True)

    def summary(self, result: dict) -> str:
        """The epoch's progress-line part (:func:`verification_summary`)."""
        return verification_summary(result)

    def at_epoch_end(self, epoch: int) -> dict:
        """Evaluate after epoch ``epoch`` (0-based; collective); rank 0 gets ``{set: metrics}``,
        the other ranks ``{}``."""
        return self.evaluate(epoch + 1, self.steps, _global_step(epoch + 1, 0, self.steps), "epoch")

    def evaluate(self, epoch: int, step: int, global_step: int, at: str) -> dict:
        """Collective: rank 0 embeds every set with the current network, the others wait."""
        if self.parts is None:
            raise RuntimeError("VerificationCallback.start_stage was not called")
        return _rank0_then_all(self.dist, lambda: self._evaluate_here(epoch, step, global_step, at),
                               "verification")

    def _evaluate_here(self, epoch: int, step: int, global_step: int, at: str) -> dict:
        from facelt.features.embed import embedder_for_checkpoint
        parts = self.parts
        embedder = embedder_for_checkpoint(parts.net, parts.cfg, parts.device)
        results = {}
        for vs in self.sets:
            m = vs.evaluate_model(embedder, parts.device, self.batch_size)
            results[vs.name] = {k: m[k] for k in KEPT if k in m}
        entry = {"stage": parts.stage, "epoch": epoch, "step": step, "global_step": global_step,
                 "at": at, "results": results}
        self._record(entry)
        self._write_report()
        return results

    def _write_report(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "verification.json",
                   {"sets": {vs.name: str(vs.path) for vs in self.sets},
                    "highest": self.highest, "history": self.history})
        lines = ["# Verification during training", "",
                 "insightface protocol: flip-sum, L2, 10 folds; accuracy mean +- std over the folds, "
                 "threshold on the squared L2 distance, VAL = TAR at FAR 1e-3.", "",
                 "| set | pairs | highest accuracy | at epoch / step |", "|---|---|---|---|"]
        last = self.history[-1]["results"] if self.history else {}
        for name, best in self.highest.items():
            pairs = last.get(name, {}).get("pairs", "")
            lines.append(f"| {name} | {pairs} | {100 * best['accuracy']:.2f} | "
                         f"{best['epoch']} / {best['step']} |")
        lines += ["", "| epoch | step | set | accuracy | std | threshold | VAL@1e-3 | XNorm |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in self.history:
            for name, r in e["results"].items():
                lines.append(f"| {e['epoch']} | {e['step']} | {name} | {100 * r['accuracy']:.2f} | "
                             f"{100 * r['std']:.2f} | {r['threshold']:.3f} | "
                             f"{100 * r.get('val', float('nan')):.2f} | {r.get('xnorm', float('nan')):.3f} |")
        write_text(self.out_dir / "verification.md", "\n".join(lines) + "\n")
