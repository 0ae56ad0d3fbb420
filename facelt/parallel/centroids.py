"""Class centroids for stage 2: the per-class mean direct feature ``v`` over the training set.

Each rank embeds its own unpadded share of the training set with the network's body
(:class:`facelt.models.net.Body`, in eval mode: test transforms are the caller's dataset).

* :func:`class_means` (a replicated head): per-class sums and counts summed over ranks, so every
  rank ends with the centroids one process computes (the reference implementation computed them
  on each GPU's shard alone and broke under several processes);
* :func:`shard_class_means` (a class-sharded head): every batch's rows are gathered and each shard
  adds those of its own classes (float64); nothing ``K x d`` is built on any rank.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from facelt.data.build import eval_indices, make_loader
from facelt.parallel import collectives as col
from facelt.parallel.process import DistInfo
from facelt.parallel.sharded_heads import ShardedMetaEmbeddingHead, accumulate_shard_sums
from facelt.utils.progress import image_batches, progress


def _share_loader(dataset: Dataset, batch_size: int, num_workers: int, dist: DistInfo):
    idx = eval_indices(len(dataset), dist.rank, dist.world_size)
    return make_loader(Subset(dataset, idx), batch_size, num_workers)


@torch.no_grad()
def class_means(body: nn.Module, dataset: Dataset, num_classes: int, batch_size: int,
                num_workers: int, dist: DistInfo) -> tuple[torch.Tensor, np.ndarray]:
    """Return ``(centroids (K, d) float32, counts (K,))``; a class with no image gets a zero row.
    ``body`` maps images to ``v``."""
    was_training = body.training
    body.eval()
    loader = _share_loader(dataset, batch_size, num_workers, dist)
    sums = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=dist.device)
    for x, y, _ in image_batches(loader, "centroids", disable=not dist.is_primary):
        x = x.to(dist.device, non_blocking=True)
        y = torch.as_tensor(y, device=dist.device).long()
        keep = y >= 0
        f = body(x).double()[keep]
        y = y[keep]
        if sums is None:
            sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=dist.device)
        sums.index_add_(0, y, f)
        counts += torch.bincount(y, minlength=num_classes).double()
    if sums is None:  # this rank had no items; learn the width from a dry run of the others
        dim = int(body(dataset[0][0].unsqueeze(0).to(dist.device)).shape[1])
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=dist.device)
    col.all_reduce_sum(sums)
    col.all_reduce_sum(counts)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    body.train(was_training)
    return means.float(), counts.cpu().numpy().astype(np.int64)


@torch.no_grad()
def shard_class_means(body: nn.Module, head: ShardedMetaEmbeddingHead, dataset: Dataset,
                      batch_size: int, num_workers: int, dist: DistInfo) -> torch.Tensor:
    """Set the centroids of the sharded ``head`` to its classes' mean ``v`` over ``dataset``
    (collective); returns this shard's class counts (float64, ``(K_local,)``)."""
    was_training = body.training
    body.eval()
    loader = _share_loader(dataset, batch_size, num_workers, dist)
    steps = torch.tensor([float(len(loader))], device=dist.device)
    steps = int(col.all_reduce_max(steps).item())  # every rank joins every gather
    dim = head.centroids.shape[1]
    sums = torch.zeros(head.local_classes, dim, dtype=torch.float64, device=dist.device)
    counts = torch.zeros(head.local_classes, dtype=torch.float64, device=dist.device)
    batches = iter(loader)
    for _ in progress(range(steps), desc="centroids (sharded)", unit="batch",
                      disable=not dist.is_primary):
        batch = next(batches, None)
        if batch is None:
            f = torch.zeros(0, dim, dtype=torch.float64, device=dist.device)
            y = torch.zeros(0, dtype=torch.int64, device=dist.device)
        else:
            x, y, _ = batch
            f = body(x.to(dist.device, non_blocking=True)).double()
            y = torch.as_tensor(y, device=dist.device).long()
        accumulate_shard_sums(sums, counts, f, y, head.class_start, head.group)
    head.init_centroids_from_sums(sums, counts)
    body.train(was_training)
    return counts
