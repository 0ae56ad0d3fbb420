"""Instance-balanced and class-aware samplers, aware of distributed training.

Both samplers build one *global* index sequence from ``(seed, epoch)`` -- identical on every rank --
pad it to a multiple of ``num_replicas`` by repeating its head, and give rank ``r`` the strided share
``g[r::num_replicas]``.  All ranks thus get the same number of indices, and the ranks' batches at a
step together form one contiguous block of the global sequence (so a DDP step of ``R`` ranks x
batch ``B`` sees exactly what one process with batch ``R * B`` would see).

Randomness comes from ``numpy.random.default_rng((seed, epoch))``: deterministic for a seed and
epoch, different across epochs, independent of the global RNG state.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from facelt.errors import DataError


def _replicas_and_rank(num_replicas: Optional[int], rank: Optional[int]) -> tuple[int, int]:
    """Fill in ``num_replicas``/``rank`` from torch.distributed when initialised, else 1 / 0."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
    return int(num_replicas), int(rank)


def rank_share(sequence: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """Pad ``sequence`` to a multiple of ``num_replicas`` by repeating its head; take ``[rank::R]``."""
    n = len(sequence)
    total = math.ceil(n / num_replicas) * num_replicas
    if total > n:
        reps = math.ceil(total / n)
        sequence = np.tile(sequence, reps)[:total]
    return sequence[rank::num_replicas]


class _GlobalSequenceSampler(Sampler[int]):
    """Shared distributed plumbing: subclasses implement :meth:`global_sequence`."""

    def __init__(self, num_samples: int, num_replicas: Optional[int], rank: Optional[int],
                 seed: int) -> None:
        self.num_replicas, self.rank = _replicas_and_rank(num_replicas, rank)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch))

    def global_sequence(self) -> np.ndarray:
        """The unpadded index sequence of the current epoch, the same on every rank."""
        raise NotImplementedError

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch."""
        return rank_share(self.global_sequence(), self.num_replicas, self.rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)


class InstanceSampler(_GlobalSequenceSampler):
    """Instance-balanced sampling: every item once per epoch, shuffled (or in order)."""

    def __init__(self, num_items: int, shuffle: bool = True, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0) -> None:
        if num_items < 1:
            raise DataError("cannot sample from an empty dataset")
        super().__init__(num_items, num_replicas, rank, seed)
        self.shuffle = shuffle

    def global_sequence(self) -> np.ndarray:
        if self.shuffle:
            return self._rng().permutation(self.num_samples)
        return np.arange(self.num_samples, dtype=np.int64)


class ClassAwareSampler(_GlobalSequenceSampler):
    """The OLTR reference class-aware sampler, vectorised.

    The reference walks a shuffled cycle of classes (reshuffled each time it runs out); for each
    class picked it takes ``samples_per_class`` consecutive items from that class's own shuffled
    cycle (reshuffled when exhausted).  This builds the same process with numpy in O(num_samples +
    num_items) time and memory, without a Python loop per sample (887.5K items / 74.5K classes at
    MS1M-LT scale).

    ``num_samples`` defaults to ``len(labels)`` (one dataset-sized epoch).  The reference instead
    used ``max_class_count * num_classes`` (every class as often as the largest one); pass that value
    to reproduce it.  Items with a label < 0 (open set) are never sampled; classes without items are
    skipped.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, samples_per_class: int = 4,
                 num_samples: Optional[int] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        known = np.flatnonzero(labels >= 0)
        if known.size == 0:
            raise DataError("class-aware sampling needs labelled items, but every label is < 0")
        # Items grouped by class: class k (of the present classes) owns order[start[k]:start[k+1]].
        order = known[np.argsort(labels[known], kind="stable")]
        classes, counts = np.unique(labels[order], return_counts=True)
        self.classes = classes
        self.class_counts = counts.astype(np.int64)
        self.order = order
        self.starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]]).astype(np.int64)
        self.samples_per_class = int(samples_per_class)
        n = len(labels) if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be >= 1, got {n}")
        super().__init__(n, num_replicas, rank, seed)

    def global_sequence(self) -> np.ndarray:
        rng = self._rng()
        n_cls = len(self.classes)
        spc = self.samples_per_class
        picks = math.ceil(self.num_samples / spc)
        # 1. Class cycle: concatenated independent permutations of the present classes.
        rounds = math.ceil(picks / n_cls)
        cls_seq = np.argsort(rng.random((rounds, n_cls)), axis=1).reshape(-1)[:picks]
        # 2. Each class's draws: consecutive items of its own reshuffled cycle.
        need = np.bincount(cls_seq, minlength=n_cls).astype(np.int64) * spc
        draws = self._cycle_draws(rng, need)
        # 3. The t-th pick of class k gets that class's draws [t*spc, (t+1)*spc).
        out = np.empty((picks, spc), dtype=np.int64)
        out[np.argsort(cls_seq, kind="stable")] = draws.reshape(picks, spc)
        return out.reshape(-1)[: self.num_samples]

    def _cycle_draws(self, rng: np.random.Generator, need: np.ndarray) -> np.ndarray:
        """For each class k, the first ``need[k]`` items of its shuffled cycle, grouped by class."""
        counts = self.class_counts
        rounds = -(-need // counts)                       # ceil; 0 for classes never picked
        span = rounds * counts                            # expanded length per class
        total = int(span.sum())
        cls_of = np.repeat(np.arange(len(counts)), span)
        offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(span) - span, span)
        n_of = counts[cls_of]
        cycle_round = offset // n_of
        item = self.order[self.starts[cls_of] + offset % n_of]
        # Shuffle within every (class, round) block; blocks keep their place, so after sorting the
        # position inside a class is still ``offset``.
        perm = np.lexsort((rng.random(total), cycle_round, cls_of))
        return item[perm][offset < need[cls_of]]


class SkipSampler(Sampler[int]):
    """``sampler``'s sequence without its first ``skip`` items (a mid-epoch resume)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler = sampler
        self.skip = int(skip)

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)
