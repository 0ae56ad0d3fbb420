"""Feature extraction split over the processes of ``torchrun``, into ONE memory-mapped ``.npy``.

The rows are cut into batches of ``batch_size`` exactly as one process cuts them, and each rank
takes a contiguous run of whole batches (:func:`batch_share`: the first ranks one batch more), so
every row is computed from the very batch one process would compute it from. Rank 0 creates the
``.partial`` memmap (or reopens it to resume) and the header ``<out>.progress.json`` (settings,
fingerprint, world size); after a barrier every rank opens the same file ``r+``, writes its rows
and keeps its own ``<out>.progress.rank<R>.json`` (rows done of its share) after every batch. When
all ranks are done rank 0 flushes, fsyncs and renames the file and writes ``<out>.source.json``,
as the one-process :func:`facelt.features.files.extract_features` does, so the result is the same file.

Resuming needs the same number of processes (the shares are recorded); a partial file made by
another source or another world size is refused with what to delete.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Union


from facelt.errors import DataError
from facelt.features.files import (PROGRESS_SUFFIX, check_rows_written, embed_rows,
                                   finalize_feature_memmap, partial_path, progress_record,
                                   read_progress, source_path, write_feature_memmap)
from facelt.parallel import collectives as col
from facelt.parallel import process as D
from facelt.utils.io import write_json


def batch_share(num_rows: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``: a contiguous run of whole batches of
    ``batch_size`` (the last batch may be short); the first ``n_batches % world`` ranks get one
    batch more, a rank may get none."""
    batches = -(-num_rows // batch_size)
    base, extra = divmod(batches, world)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * batch_size, num_rows), min(last * batch_size, num_rows)


def rank_progress_path(out: Union[str, os.PathLike], rank: int) -> Path:
    p = Path(out)
    return p.with_name(f"{p.name}.progress.rank{rank}.json")


def check_shares_done(out: Union[str, os.PathLike], num_rows: int, batch_size: int,
                      world: int) -> None:
    """Every rank's progress file says its whole share is written (else :class:`DataError`: the
    partial file is kept, rerun the same command to resume)."""
    for r in range(world):
        start, stop = batch_share(num_rows, batch_size, r, world)
        if start == stop:
            continue
        p = rank_progress_path(out, r)
        done = read_progress(p, start, stop)["rows_done"] if p.exists() else None
        if done != stop:
            raise DataError(f"rank {r} of {world} has not finished its rows {start}..{stop} of "
                            f"{partial_path(out)} ({p}: rows_done {done}); rerun the same command "
                            f"with the same number of processes to resume")


def extract_features_distributed(embed_fn: Callable[[Any], Any],
                                 batches: Callable[[int, int], Iterable[Any]],
                                 out_path: Union[str, os.PathLike], num_rows: int, dim: int,
                                 batch_size: int, dist: D.DistInfo, flip: bool = True,
                                 normalize: bool = True, fingerprint: str = "") -> Path:
    """Every rank embeds its :func:`batch_share` of the rows into ``out_path`` (collective).

    ``batches(start, stop)`` yields the batches of rows ``[start, stop)`` in order, of
    ``batch_size`` rows each (the last may be short). Rows are ``embed(x) (+ embed(flip(x)))``,
    L2-normalised with ``normalize`` -- as :func:`facelt.features.files.extract_features`.
    """
    out = Path(out_path)
    header = out.with_name(out.name + PROGRESS_SUFFIX)
    world, rank = dist.world_size, dist.rank
    settings = {"num_rows": int(num_rows), "dim": int(dim), "flip": bool(flip),
                "normalize": bool(normalize), "fingerprint": str(fingerprint),
                "batch_size": int(batch_size), "world": int(world)}
    if dist.is_primary:
        resume = header.exists() and partial_path(out).exists()
        if resume:  # resuming needs the same source, settings and number of processes
            read_progress(header, None, None, settings,
                          f"delete it and {partial_path(out)} to start over")
        else:
            for r in range(world):
                rank_progress_path(out, r).unlink(missing_ok=True)
            mm = write_feature_memmap(out, num_rows, dim)
            mm.flush()
            del mm
            write_json(header, settings)
    col.barrier()
    start, stop = batch_share(num_rows, batch_size, rank, world)
    mine = rank_progress_path(out, rank)
    done = start
    saved = None
    restart = f"delete {header} and {partial_path(out)} to start over"
    if mine.exists():
        saved = read_progress(mine, start, stop, {"start": start, "stop": stop}, restart)
        done = int(saved["rows_done"])
    if done < stop or saved is not None:
        mm = write_feature_memmap(out, num_rows, dim, reuse=True)
        try:
            if saved is not None:
                check_rows_written(saved, mm, mine, start, restart)
            row = done
            for batch in batches(done, stop):
                n = len(batch)
                if row + n > stop:
                    raise DataError(f"batches hold more rows than rank {rank}'s share {start}..{stop}")
                mm[row:row + n] = embed_rows(embed_fn, batch, dim, flip, normalize)
                mm.flush()
                row += n
                write_json(mine, progress_record(row, mm, row - n, start=start, stop=stop))
            if row != stop:
                raise DataError(f"rank {rank}: batches ended after row {row}, its share ends at "
                                f"{stop} (progress kept in {mine}: rerun to resume)")
        finally:
            del mm
    col.barrier()
    if dist.is_primary:
        check_shares_done(out, num_rows, batch_size, world)
        source_path(out).unlink(missing_ok=True)
        mm = write_feature_memmap(out, num_rows, dim, reuse=True)
        try:
            finalize_feature_memmap(mm, out)
        finally:
            del mm
        meta = {k: settings[k] for k in ("num_rows", "dim", "flip", "normalize", "fingerprint")}
        write_json(source_path(out), meta)
        for r in range(world):
            rank_progress_path(out, r).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            header.unlink()
    col.barrier()
    return out


__all__ = ["batch_share", "rank_progress_path", "check_shares_done", "extract_features_distributed"]
