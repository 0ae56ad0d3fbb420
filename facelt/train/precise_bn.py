"""BatchNorm population statistics re-estimated before stage 2 computes its centroids ("precise
BN": Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, sec. 3: the running EMA lags the
weights; recompute the population statistics from a number of training batches with the weights
fixed).

Why stage 2 needs it after a short stage 1: the centroids are the per-class means of the features
in eval mode (the OLTR reference's ``centroids_cal``), i.e. through the running statistics, while
stage 2 trains in train mode (batch statistics). After a few steps at momentum 0.1 the running
variances still hold most of their initial 1; through ResNet-50's 53 BatchNorm layers, each
under-estimating a residual stream whose variance grows, eval-mode features reach norms ~1e10
(measured: 8e10 vs 16 in train mode after 4 steps at 112 px), the centroids too, and the first
stage-2 step's centroid loss is ~1e21. With a converged stage 1 the recomputed statistics equal
the running ones up to noise."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from facelt.parallel import collectives as col

__all__ = ["recalibrate_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable, num_batches: int,
                          device: torch.device, world_size: int = 1) -> int:
    """Reset the running statistics of every BatchNorm of ``module`` and set them to the plain
    average of ``num_batches`` batches' statistics (``momentum=None``), weights untouched;
    averaged over ranks. Returns the batches used. Restores the modules' train/eval flags and
    momenta."""
    bns = [m for m in module.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns or num_batches <= 0:
        return 0
    modes = [(m, m.training) for m in module.modules()]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average of the batches seen
    module.train()
    used = 0
    try:
        for x, *_ in batches:
            if used >= num_batches:
                break
            module(x.to(device, non_blocking=True))
            used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, training in modes:
            m.training = training
    if world_size > 1:
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                col.all_reduce_sum(buf)
                buf /= world_size
    return used
