"""What a training run tells its user: the resolved config's key lines at the start, an ETA for
the whole run after each epoch, and (``log.tensorboard: true``) TensorBoard scalars beside
``metrics.jsonl`` in ``OUT/stageN/tensorboard/``.

:class:`TensorBoardLogger` is a step callback (training loss and learning rates every
``log_every`` steps) and an epoch callback (the epoch's loss, accuracy, learning rates, the
validation buckets and, when an epoch's metrics hold a ``verification`` entry, its numbers).
It writes on rank 0 only. It needs the ``tensorboard`` package (``pip install 'facelt[tensorboard]'``);
without it the run stops before any work with a :class:`~facelt.errors.ConfigError` naming the
pip command.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from facelt.errors import ConfigError
from facelt.train.loop import global_step, steps_in_epoch

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_PIP = "pip install 'facelt[tensorboard]'  (or: pip install tensorboard)"


def learning_rates(optimizer) -> dict[str, float]:
    """``{group name: lr}`` of the optimizer now (read it before ``scheduler.step()`` for the
    rates an epoch trained at)."""
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def schedule_description(st) -> str:
    """The LR schedule a stage runs, with its numbers (the multipliers of the first and last
    epochs come from :func:`facelt.train.stage.lr_factor`, the schedule itself)."""
    from facelt.train.stage import lr_factor
    first, last = lr_factor(st, 0), lr_factor(st, st.epochs - 1)
    if st.lr_schedule == "step":
        return f"schedule step x{st.lr_gamma:g} every {st.lr_step} epochs"
    if st.lr_schedule == "cosine":
        return (f"schedule cosine over {st.epochs} epochs, set at each epoch's start "
                f"(classifier-balancing): x{first:.4g} in epoch 1 .. x{last:.4g} in epoch "
                f"{st.epochs}")
    return (f"schedule poly power {st.poly_power:g} after {st.warmup_epochs} warmup epochs: "
            f"x{first:.4g} in epoch 1 .. x{last:.4g} in epoch {st.epochs}")


def config_key_lines(parts) -> list[str]:
    """The resolved config's lines a user checks before a long run (stage ``parts.stage``)."""
    cfg, st, data, dist = parts.cfg, parts.st, parts.data, parts.dist
    train_n = len(data.train.labels) if getattr(data, "train", None) is not None else 0
    lrs = ", ".join(f"{g['name']} {g['lr']:g}" for g in parts.optimizer.param_groups)
    per_rank = st.batch_size // max(dist.world_size, 1)
    lines = [
        f"run {cfg.name} stage {parts.stage}: {st.epochs} epochs on {parts.device}"
        f"{f' x {dist.world_size} processes' if dist.distributed else ''}"
        f", AMP {'on' if parts.use_amp else 'off'}, seed {cfg.seed}",
        f"  data: {cfg.data.format} {cfg.data.root or '.'} train={cfg.data.train} "
        f"({train_n:,} images, {data.num_classes:,} classes), image {cfg.data.image_size}px, "
        f"workers {cfg.data.num_workers}",
        f"  model: {cfg.model.backbone} -> head {st.head}, loss {st.loss}"
        f"{'' if st.aux_loss == 'none' else f' + {st.aux_loss}'}, sampler {st.sampler}"
        f"{', attention' if st.attention else ''}{', frozen backbone' if st.freeze_backbone else ''}",
        f"  optimiser: batch {st.batch_size} ({per_rank} a process), lr {lrs}, momentum "
        f"{st.momentum:g}, weight decay {st.weight_decay:g}, {schedule_description(st)}",
    ]
    return lines


def format_duration(seconds: float) -> str:
    """``3h05m``, ``12m30s``, ``42s``."""
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def run_eta(epoch_seconds: Sequence[float], epochs_left: int, later_epochs: int) -> float:
    """Seconds left in the run: the mean epoch time measured so far times this stage's epochs
    left plus the epochs of the stages still to come (estimated at the same pace)."""
    if not epoch_seconds:
        return math.nan
    mean = sum(epoch_seconds) / len(epoch_seconds)
    return mean * (epochs_left + later_epochs)


def eta_line(stage: int, epoch: int, epochs: int, epoch_seconds: Sequence[float],
             later_epochs: int) -> str:
    """``stage 1 epoch 3/30: ETA stage 27m00s, whole run 1h27m (...)``."""
    left = epochs - epoch
    stage_eta = run_eta(epoch_seconds, left, 0)
    text = f"stage {stage} epoch {epoch}/{epochs}: ETA stage {format_duration(stage_eta)}"
    if later_epochs:
        whole = run_eta(epoch_seconds, left, later_epochs)
        text += (f", whole run {format_duration(whole)} (later stages' {later_epochs} epochs "
                 f"estimated at this pace)")
    return text


def check_tensorboard_available() -> None:
    """Raise :class:`~facelt.errors.ConfigError` when ``log.tensorboard: true`` cannot work."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"log.tensorboard: true needs the tensorboard package, which is not "
                          f"installed: {TENSORBOARD_PIP}; or set log.tensorboard: false") from None


def scalar_tags(prefix: str, tree) -> dict[str, float]:
    """The finite numbers of a (nested) metrics dict as ``prefix/key/...`` tags (booleans and
    non-finite values left out)."""
    out: dict[str, float] = {}

    def walk(tag: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{tag}/{k}" if tag else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            out[tag] = float(node)

    walk(prefix, tree)
    return out


#: the epoch's TensorBoard scalars: (tag under ``epoch/``, key in the epoch's metrics)
EPOCH_SCALARS = (("loss", "loss"), ("ce", "ce"), ("centroid", "centroid_loss"),
                 ("train_acc", "train_acc"), ("images_per_s", "images_per_s"))


class TensorBoardLogger:
    """Step and epoch callback writing TensorBoard scalars to ``log_dir`` (rank 0 only).

    Per step (x = global step): ``train/loss`` and ``lr/<group>`` every ``every`` steps, and at
    any step what an earlier callback published in ``StepContext.results`` (a verification every
    N steps: ``verification/<set>/accuracy``, ...). Per epoch: ``epoch/loss``, ``epoch/ce``,
    ``epoch/centroid``, ``epoch/train_acc``, ``epoch/images_per_s``, ``epoch_lr/<group>`` and
    ``val/<bucket>`` at x = epoch number; the entries named in ``step_keys`` (the stage's
    evaluations, e.g. ``verification``) at x = the global step of the epoch's end, so their
    epoch-end points continue the curve their step points draw."""

    def __init__(self, log_dir: Path, every: int, primary: bool = True,
                 step_keys: Sequence[str] = ()) -> None:
        check_tensorboard_available()
        self.log_dir = Path(log_dir)
        self.every = max(int(every), 1)
        self.primary = primary
        self.step_keys = tuple(step_keys)
        self._writer = None

    def _w(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def on_step(self, ctx) -> None:
        if not self.primary:
            return
        step = ctx.global_step
        if ctx.results:
            w = self._w()
            for key, tree in ctx.results.items():
                for tag, v in scalar_tags(key, tree).items():
                    w.add_scalar(tag, v, step)
            w.flush()
        if ctx.step % self.every:
            return
        w = self._w()
        if math.isfinite(ctx.loss):
            w.add_scalar("train/loss", ctx.loss, step)
        for g in ctx.parts.optimizer.param_groups:
            w.add_scalar(f"lr/{g['name']}", g["lr"], step)

    __call__ = on_step  # a step callback is a callable

    def on_epoch(self, ctx) -> None:
        if not self.primary:
            return
        m = ctx.metrics
        epoch = int(m.get("epoch", 0))
        w = self._w()
        epoch_numbers = {name: m.get(key) for name, key in EPOCH_SCALARS}
        for tag, v in scalar_tags("epoch", epoch_numbers).items():
            w.add_scalar(tag, v, epoch)
        for name, lr in (m.get("lr") or {}).items():
            w.add_scalar(f"epoch_lr/{name}", lr, epoch)
        for tag, v in scalar_tags("val", m.get("val") or {}).items():
            w.add_scalar(tag, v, epoch)
        end = global_step(epoch, 0, steps_in_epoch(ctx.parts))  # metrics' epoch is 1-based
        for key in self.step_keys:
            for tag, v in scalar_tags(key, m.get(key) or {}).items():
                w.add_scalar(tag, v, end)
        w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_logger(cfg, stage_dir: Path, primary: bool,
                       step_keys: Sequence[str] = ()) -> Optional[TensorBoardLogger]:
    """The run's :class:`TensorBoardLogger` when ``log.tensorboard`` is on (else None);
    ``step_keys``: the epoch-metrics entries logged at the global step (the evaluations' keys)."""
    if not cfg.log.tensorboard:
        return None
    return TensorBoardLogger(Path(stage_dir) / TENSORBOARD_DIR, cfg.log_every, primary, step_keys)
