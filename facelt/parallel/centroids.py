"""Class centroids for stage 2: the per-class mean feature over the training set.

Each rank embeds its own unpadded share of the training set; per-class sums and counts are summed
over ranks, so every rank ends with the same centroids as a single process would compute (the
reference implementation computed them on each GPU's shard alone and broke under several processes).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from facelt.data.build import eval_indices, make_loader
from facelt.parallel.process import DistInfo, all_reduce_sum
from facelt.utils.progress import image_batches


@torch.no_grad()
def class_means(net: torch.nn.Module, dataset: Dataset, num_classes: int, batch_size: int,
                num_workers: int, dist: DistInfo) -> tuple[torch.Tensor, np.ndarray]:
    """Return ``(centroids (K, d) float32, counts (K,))``; a class with no image gets a zero row."""
    was_training = net.training
    net.eval()
    idx = eval_indices(len(dataset), dist.rank, dist.world_size)
    loader = make_loader(Subset(dataset, idx), batch_size, num_workers)
    sums = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=dist.device)
    for x, y, _ in image_batches(loader, "centroids", disable=not dist.is_primary):
        x = x.to(dist.device, non_blocking=True)
        y = torch.as_tensor(y, device=dist.device).long()
        keep = y >= 0
        f = net.embed(x).double()[keep]
        y = y[keep]
        if sums is None:
            sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=dist.device)
        sums.index_add_(0, y, f)
        counts += torch.bincount(y, minlength=num_classes).double()
    if sums is None:  # this rank had no items; learn the width from a dry run of the others
        dim = int(net.embed(dataset[0][0].unsqueeze(0).to(dist.device)).shape[1])
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=dist.device)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    net.train(was_training)
    return means.float(), counts.cpu().numpy().astype(np.int64)
