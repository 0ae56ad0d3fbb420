"""The exact distractor search split over the processes of ``torchrun`` (same result as one).

:func:`eval_megaface.search.stream_topk` walks the gallery order segment by segment (one segment
per nested gallery size) in chunks of ``chunk_rows`` rows. :func:`chunk_plan` lists those very
chunks; each rank takes a contiguous run of them (:func:`chunk_share`) and keeps, per gallery size,
the top-k of its chunks that lie inside that gallery (:func:`stream_topk_share`). Rank 0 then
merges the ranks' lists in rank order with :meth:`TopK.merge` (:func:`merge_rank_topk`).

Why this is exact, ties included: every chunk is read and searched exactly as one process reads
and searches it (same rows, same block, same backend), so the candidate scores are bit-identical;
one process merges chunks in order keeping the earlier candidate on ties, and a rank's list is the
k best of its chunks in that same order, so concatenating the ranks' lists in rank order and
keeping the k best with a stable sort selects the same rows in the same order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from eval_megaface.search import DEFAULT_CHUNK_ROWS, ChunkSearcher, TopK
from facelt.features.files import FeatureFile, iter_row_chunks
from facelt.utils.progress import progress


def chunk_plan(sizes: Sequence[int], chunk_rows: int) -> list[tuple[int, int, int]]:
    """``(start, stop, size)`` of every chunk one process reads, in its order: positions in the
    gallery order, where each segment ``order[previous size:size]`` is taken with its rows sorted
    (as :func:`facelt.features.files.iter_row_chunks` reads them); ``size`` is the smallest gallery the
    chunk belongs to."""
    plan, done = [], 0
    for n in sorted(set(int(s) for s in sizes)):
        for a in range(done, n, chunk_rows):
            plan.append((a, min(a + chunk_rows, n), n))
        done = n
    return plan


def chunk_share(num_chunks: int, rank: int, world: int) -> tuple[int, int]:
    """``[first, last)`` chunk numbers of rank ``rank``: contiguous, the first ranks one more."""
    base, extra = divmod(num_chunks, world)
    first = rank * base + min(rank, extra)
    return first, first + base + (1 if rank < extra else 0)


def stream_topk_share(queries: np.ndarray, ff: FeatureFile, order: np.ndarray, sizes: Sequence[int],
                      rank: int, world: int, k: int = 10, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                      normalize: bool = True, backend: Optional[str] = None,
                      device: Optional[str] = None) -> list[TopK]:
    """This rank's part of :func:`~eval_megaface.search.stream_topk`: for each size in ``sizes``
    (in that order) the top-k over this rank's chunks inside ``order[:size]``."""
    sizes = [int(n) for n in sizes]
    if any(n < 0 or n > len(order) for n in sizes):
        raise ValueError(f"gallery sizes {sizes} exceed the {len(order)} candidate rows")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    plan = chunk_plan(sizes, chunk_rows)
    first, last = chunk_share(len(plan), rank, world)
    searcher = ChunkSearcher(backend, device=device)
    running = TopK.empty(len(q), k)
    snapshots: dict[int, TopK] = {}
    bar = progress(total=sum(b - a for a, b, _ in plan[first:last]), desc="distractors (share)",
                   unit="row", disable=rank != 0)
    segments: dict[int, np.ndarray] = {}
    starts = {n: lo for n, lo in zip(sorted(set(sizes)), [0] + sorted(set(sizes))[:-1])}
    for a, b, n in plan[first:last]:
        if n not in segments:  # one process reads each segment's rows sorted (iter_row_chunks)
            segments = {n: np.sort(np.asarray(order[starts[n]:n], dtype=np.int64))}
        seg = segments[n]
        for rows, block in iter_row_chunks(ff, seg[a - starts[n]:b - starts[n]], chunk_rows,
                                           normalize):
            s, local = searcher(q, block, k)
            running.merge(s, rows[local])
            bar.update(len(rows))
        # the running list now covers every chunk of this share up to position b
        for n in sizes:
            if n >= b:
                snapshots[n] = running.copy()
    bar.close()
    out = []
    for n in sizes:
        if n in snapshots:
            out.append(snapshots[n])
        else:  # none of this share's chunks lies inside order[:n]
            out.append(TopK.empty(len(q), k))
    return out


def merge_rank_topk(per_rank: Sequence[Sequence[TopK]], k: int) -> list[TopK]:
    """Per size, the ranks' lists merged in rank order (stable: earlier ranks win ties)."""
    merged = []
    for lists in zip(*per_rank):
        top = TopK.empty(len(lists[0].scores), k)
        for part in lists:
            top.merge(part.scores, part.ids)
        merged.append(top)
    return merged


def distributed_stream_topk(queries: np.ndarray, ff: FeatureFile, order: np.ndarray,
                            sizes: Sequence[int], k: int = 10,
                            chunk_rows: int = DEFAULT_CHUNK_ROWS, normalize: bool = True,
                            backend: Optional[str] = None, dist=None) -> Optional[list[TopK]]:
    """:func:`~eval_megaface.search.stream_topk` over the ranks of ``dist`` (a
    :class:`facelt.parallel.process.DistInfo`; collective): the merged lists on rank 0, ``None``
    on the other ranks."""
    from facelt.parallel.collectives import all_gather_objects
    mine = stream_topk_share(queries, ff, order, sizes, dist.rank, dist.world_size, k=k,
                             chunk_rows=chunk_rows, normalize=normalize, backend=backend)
    payload = [(t.scores, t.ids) for t in mine]
    gathered = all_gather_objects(payload)
    if not dist.is_primary:
        return None
    per_rank = [[TopK(s, i) for s, i in rank_lists] for rank_lists in gathered]
    return merge_rank_topk(per_rank, k)


__all__ = ["chunk_plan", "chunk_share", "stream_topk_share", "merge_rank_topk",
           "distributed_stream_topk"]
