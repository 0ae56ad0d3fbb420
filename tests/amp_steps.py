"""The training loop's own step sequence (facelt.train.loop.train_one_epoch: ``scaler.scale(loss)
.backward()``, the strategy's after-backward step, ``scaler.step``, ``scaler.update``) run twice
from the same start: in float32 (the scaler disabled, as on the CPU) and with an ENABLED CPU
GradScaler (``init_scale = 2**16``). With power-of-two loss scales, scaling and unscaling are
exact, so every parameter must move by the float32 step (AMP must change nothing but the
rounding of the scaled gradients). Used in one process by tests/test_amp.py and over 2 gloo
processes by tests/amp_worker.py."""
from __future__ import annotations

import dataclasses

import torch

from facelt.config import Config
from facelt.parallel.process import DistInfo
from facelt.train.loop import train_one_epoch
from facelt.train.stage import build_stage, init_head_from_data

INIT_SCALE = 2.0 ** 16


def updates(cfg: Config, dist: DistInfo, scaler: torch.amp.GradScaler | None
            ) -> dict[str, torch.Tensor]:
    """Each parameter's change over one epoch of ``cfg``'s stage 2 (``max_steps_per_epoch``
    steps), with ``scaler`` in the stage parts (``None``: the stage's own, disabled on the CPU)."""
    parts = build_stage(cfg, 2, dist)
    init_head_from_data(parts)
    if scaler is not None:
        parts = dataclasses.replace(parts, scaler=scaler)
    before = {n: p.detach().clone() for n, p in parts.net.named_parameters()}
    train_one_epoch(parts, 0)
    return {n: p.detach() - before[n] for n, p in parts.net.named_parameters()}


def compare_updates(cfg: Config, dist: DistInfo, what: str) -> list[str]:
    """The names of the parameters whose update under the scaler differs from float32's
    (``rtol 1e-5``); checks the scaler really scaled (its scale is still 2**16 or above)."""
    fp32 = updates(cfg, dist, None)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    assert scaler.is_enabled()
    amp = updates(cfg, dist, scaler)
    assert scaler.get_scale() >= INIT_SCALE, f"{what}: a step overflowed ({scaler.get_scale()})"
    bad = []
    for name, u in fp32.items():
        if not torch.allclose(amp[name], u, rtol=1e-5, atol=1e-12):
            ratio = (amp[name].norm() / u.norm().clamp_min(1e-30)).item()
            err = ((amp[name] - u).abs().max() / u.abs().max().clamp_min(1e-30)).item()
            bad.append(f"{what} {name} (|update| amp / fp32 = {ratio:.3g}, max error "
                       f"{err:.2g} of the largest fp32 step)")
    moved = [n for n, u in fp32.items() if u.abs().max() > 0]
    assert "head.centroids" in moved, f"{what}: the centroids did not move in float32"
    return bad
