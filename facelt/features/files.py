"""Stacked feature files: a float32 ``(rows, dim)`` ``.npy`` plus a row manifest.

The evaluation never loads a big feature file whole.  :class:`FeatureFile` validates the ``.npy``
header and then reads rows with positional reads (``os.preadv``) into a caller's reusable buffer, so
streaming a 2 GB gallery costs one chunk of memory and leaves no file pages mapped into the process
(a memory map is still there for random access: :meth:`FeatureFile.memmap`).

Writing goes through :func:`write_feature_memmap` (a writable ``.npy`` memmap under a ``.partial``
name) and :func:`finalize_feature_memmap` (flush, fsync, rename), and :func:`extract_features` is the
resumable extraction driver: flip-sum then L2-normalise (insightface's convention), a sidecar
progress file after every batch, so a killed run picks up where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from facelt.errors import DataError
from facelt.utils.io import write_json
from facelt.utils.finite import check_finite_rows

FEATURE_DTYPE = np.dtype("<f4")
PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress.json"
SOURCE_SUFFIX = ".source.json"


def source_path(path: Union[str, os.PathLike]) -> Path:
    """Beside a finished feature file: the settings and fingerprint it was made with."""
    p = Path(path)
    return p.with_name(p.name + SOURCE_SUFFIX)


def manifest_path(features: Union[str, os.PathLike]) -> Path:
    """``F.npy`` -> ``F.rows.txt``: the row names of a feature file, one a line."""
    return Path(f"{Path(features).with_suffix('')}.rows.txt")


def feature_file_outputs(path: Union[str, os.PathLike]) -> list[Path]:
    """Every file an extraction into ``path`` writes: the ``.npy``, its row manifest, its source
    record, and its ``.partial`` and progress files while unfinished."""
    p = Path(path)
    return [p, manifest_path(p), source_path(p), p.with_name(p.name + PARTIAL_SUFFIX),
            p.with_name(p.name + PROGRESS_SUFFIX)]


def finished_with(path: Union[str, os.PathLike], fingerprint: str) -> bool:
    """True when ``path`` is a finished feature file made from the source ``fingerprint`` names."""
    src = source_path(path)
    if not Path(path).is_file() or not src.is_file():
        return False
    try:
        record = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not a finished file
        return False
    return isinstance(record, dict) and record.get("fingerprint") == fingerprint


def l2_normalize(x: np.ndarray, out: Optional[np.ndarray] = None,
                 norms: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm (zero rows stay zero); in place when ``out is x``.
    ``norms``: the rows' norms already computed (:func:`checked_row_norms`), used as given."""
    if norms is None:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    norms[norms == 0] = 1.0
    return np.divide(x, norms[:, None], out=out)


def checked_row_norms(block: np.ndarray, path: Union[str, os.PathLike],
                      rows: Optional[np.ndarray] = None) -> np.ndarray:
    """The rows' L2 norms (float32, as :func:`l2_normalize` computes them), refusing non-finite
    rows in the same pass: a NaN or an infinity makes its row's squared norm NaN or inf, so only
    those rows are looked at again (:func:`~facelt.utils.finite.check_finite_rows` names them);
    a finite row whose squares overflow float32 gets its norm in float64."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
    odd = np.flatnonzero(~np.isfinite(norms))
    if len(odd):
        check_finite_rows(block[odd], path, rows=odd if rows is None else np.asarray(rows)[odd])
        norms[odd] = np.linalg.norm(block[odd].astype(np.float64), axis=1)
    return norms


@dataclass(frozen=True)
class FeatureFile:
    """A validated stacked feature file: C-ordered little-endian float32, shape ``(rows, dim)``."""

    path: Path
    rows: int
    dim: int
    offset: int  # byte offset of row 0 (after the .npy header)

    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> "FeatureFile":
        """Read and check the ``.npy`` header; :class:`DataError` naming the file if it is wrong."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"feature file {p}: not found")
        try:
            with open(p, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                offset = fh.tell()
        except Exception as exc:  # noqa: BLE001 -- a damaged header (numpy parses it as Python)
            raise DataError(f"feature file {p}: not a valid .npy file ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
        if dtype != FEATURE_DTYPE:
            raise DataError(f"feature file {p}: dtype {dtype}, expected little-endian float32")
        if len(shape) != 2:
            raise DataError(f"feature file {p}: shape {shape}, expected 2-D (rows, dim)")
        if fortran and shape[0] > 1 and shape[1] > 1:
            raise DataError(f"feature file {p}: Fortran-ordered; expected C order (one row a feature)")
        rows, dim = int(shape[0]), int(shape[1])
        expected = offset + rows * dim * 4
        size = p.stat().st_size
        if size < expected:
            raise DataError(f"feature file {p}: {size} bytes, header promises {rows}x{dim} float32 "
                            f"({expected} bytes): truncated")
        return cls(p, rows, dim, offset)

    def memmap(self) -> np.ndarray:
        """A read-only memory map of the whole array (random access; pages count towards RSS)."""
        return np.load(self.path, mmap_mode="r")

    def read(self, start: int, stop: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows ``[start, stop)`` as a float32 array (into ``out[:stop-start]`` when given)."""
        n = stop - start
        buf = _buffer(out, n, self.dim)
        with open(self.path, "rb", buffering=0) as fh:
            self._pread(fh.fileno(), buf, start)
        return buf

    def read_rows(self, rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Rows at the given indices (ascending order reads fastest: one read per consecutive run)."""
        rows = np.asarray(rows, dtype=np.int64)
        buf = _buffer(out, len(rows), self.dim)
        if len(rows) == 0:
            return buf
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"{self.path}: row index out of range 0..{self.rows - 1}")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(rows)]))
        with open(self.path, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for a, b in zip(starts.tolist(), ends.tolist()):
                self._pread(fd, buf[a:b], int(rows[a]))
        return buf

    def _pread(self, fd: int, buf: np.ndarray, first_row: int) -> None:
        want = buf.nbytes
        view = memoryview(buf.reshape(-1).view(np.uint8))
        pos = self.offset + first_row * self.dim * 4
        got = 0
        while got < want:
            n = os.preadv(fd, [view[got:]], pos + got)
            if n <= 0:
                raise DataError(f"feature file {self.path}: unexpected end of file at byte {pos + got}")
            got += n


def _buffer(out: Optional[np.ndarray], n: int, dim: int) -> np.ndarray:
    if out is None:
        return np.empty((n, dim), dtype=np.float32)
    if out.dtype != np.float32 or out.ndim != 2 or out.shape[1] != dim or out.shape[0] < n \
            or not out.flags.c_contiguous:
        raise ValueError(f"buffer of shape {out.shape} / {out.dtype} cannot hold {n}x{dim} float32")
    return out[:n]


def iter_row_chunks(ff: FeatureFile, rows: np.ndarray, chunk_rows: int, normalize: bool = False
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices, features)`` for ``rows`` in chunks, sorted within each chunk; every
    row checked finite, and L2-normalised with ``normalize``, by one pass computing the rows'
    norms (:func:`checked_row_norms`) plus, to normalise, the division in place.

    The features array is a view of one buffer reused across chunks: copy it to keep it.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    buf = np.empty((min(chunk_rows, max(len(rows), 1)), ff.dim), dtype=np.float32)
    for a in range(0, len(rows), chunk_rows):
        idx = rows[a:a + chunk_rows]
        block = ff.read_rows(idx, out=buf)
        norms = checked_row_norms(block, ff.path, idx)
        if normalize:
            l2_normalize(block, out=block, norms=norms)
        yield idx, block


def read_manifest(path: Union[str, os.PathLike]) -> list[str]:
    """Row manifest / distractor list: one relative path a line, or the devkit's JSON ``{"path": [...]}``.

    Blank lines and ``#`` comment lines are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"list file {p}: not found")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"list file {p}: looks like JSON but does not parse ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), list):
            raise DataError(f'list file {p}: JSON list files must be {{"path": [relative paths ...]}}')
        return [str(x) for x in obj["path"]]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def write_manifest(path: Union[str, os.PathLike], items: Iterable[str]) -> None:
    """Write a row manifest atomically, one path a line."""
    from facelt.utils.io import write_text
    write_text(path, "".join(f"{x}\n" for x in items))


# ---------------------------------------------------------------------------------------- writing

def partial_path(path: Union[str, os.PathLike]) -> Path:
    """Where an unfinished feature file lives until :func:`finalize_feature_memmap`."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def write_feature_memmap(path: Union[str, os.PathLike], rows: int, dim: int,
                         reuse: bool = False) -> np.memmap:
    """A writable float32 ``(rows, dim)`` ``.npy`` memmap at ``partial_path(path)``.

    ``reuse=True`` reopens an existing partial file of the same shape (for resuming) instead of
    creating a fresh one.  Call :func:`finalize_feature_memmap` when every row is written.
    """
    if rows < 0 or dim < 1:
        raise ValueError(f"bad feature shape ({rows}, {dim})")
    from facelt.utils.outputs import open_no_follow, refuse_symlink
    tmp = partial_path(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    refuse_symlink(tmp, "partial feature file")  # never truncate or map a link's target
    if reuse and tmp.exists():
        try:
            mm = np.load(tmp, mmap_mode="r+")
        except (ValueError, OSError) as exc:
            raise DataError(f"partial feature file {tmp}: not a readable .npy ({exc}); delete it "
                            "to start over") from None
        if mm.shape == (rows, dim) and mm.dtype == FEATURE_DTYPE:
            with open(tmp, "rb+") as fh:  # a file made sparse by an older run gets its blocks
                reserve_file_space(fh.fileno(), mm.offset + mm.nbytes, tmp)
            return mm
        raise DataError(f"partial feature file {tmp}: shape {mm.shape} {mm.dtype}, expected "
                        f"({rows}, {dim}) float32; delete it to start over")
    fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "partial feature file")
    try:
        with open(fd, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": FEATURE_DTYPE.str,
                                                      "fortran_order": False,
                                                      "shape": (int(rows), int(dim))})
            reserve_file_space(fh.fileno(), fh.tell() + rows * dim * FEATURE_DTYPE.itemsize, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.lib.format.open_memmap(tmp, mode="r+")


def reserve_file_space(fd: int, size: int, path: Union[str, os.PathLike]) -> None:
    """Give the file behind ``fd`` its ``size`` bytes of disk blocks now (``posix_fallocate``),
    so that writing through a memory map of it can never hit a full disk: a memory-mapped write
    that finds no free block kills the process with SIGBUS.  A full disk or quota is an
    :class:`~facelt.errors.OutputError` naming ``path``, the bytes needed and the bytes free."""
    import errno
    from facelt.errors import OutputError
    from facelt.utils.limits import format_bytes
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover -- macOS, Windows
        return
    try:
        os.posix_fallocate(fd, 0, int(size))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            return  # the file system cannot reserve: writes stay as safe as they were
        try:
            st = os.statvfs(Path(path).parent)
            free = f"; {format_bytes(st.f_bavail * st.f_frsize)} free there"
        except OSError:
            free = ""
        human = f" ({format_bytes(int(size))})" if size >= 1024 else ""
        raise OutputError(f"{path}: {exc.strerror or exc}: the feature file needs "
                          f"{int(size):,} bytes{human}, reserved before writing{free}") from None


def finalize_feature_memmap(mm: np.memmap, path: Union[str, os.PathLike]) -> Path:
    """Flush and fsync the partial file behind ``mm`` and rename it onto ``path`` (atomic)."""
    final = Path(path)
    src = Path(mm.filename)
    mm.flush()
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(src, final)
    return final


# ------------------------------------------------------------------------------ progress records

def batch_checksum(mm: np.ndarray, start: int, stop: int) -> int:
    """CRC-32 of rows ``[start, stop)`` of a feature memmap (what a progress record keeps of the
    last batch it wrote)."""
    return zlib.crc32(np.ascontiguousarray(mm[start:stop]).tobytes())


def progress_record(rows_done: int, mm: np.ndarray, first: int, **fields: Any) -> dict:
    """What a progress file holds after a batch of rows ``[first, rows_done)``: ``fields``,
    ``rows_done``, and that batch's rows and checksum (so a resumed run can tell the record
    from the rows it describes)."""
    return {**fields, "rows_done": int(rows_done), "last_rows": [int(first), int(rows_done)],
            "last_crc32": batch_checksum(mm, first, rows_done)}


def read_progress(path: Union[str, os.PathLike], lo: Optional[int], hi: Optional[int],
                  expected: Optional[dict] = None, restart: str = "") -> dict:
    """A progress file checked before it is trusted: a JSON object (holding ``expected``'s
    values, when given) whose ``rows_done`` is a whole number in ``[lo, hi]`` (not looked at
    when ``lo`` is None: a header without rows); :class:`DataError` naming the file (and
    ``restart``: what to delete to start over) otherwise."""
    p = Path(path)
    tail = f"; {restart}" if restart else ""
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"progress file {p}: not a progress record facelt wrote "
                        f"({type(exc).__name__}){tail}") from None
    if not isinstance(state, dict):
        raise DataError(f"progress file {p}: holds a {type(state).__name__}, not a progress "
                        f"record{tail}")
    if expected is not None and {k: state.get(k) for k in expected} != expected:
        raise DataError(f"progress file {p}: written with {state}, now asked for {expected}{tail}")
    done = state.get("rows_done")
    if lo is not None and (type(done) is not int or not lo <= done <= hi):
        raise DataError(f"progress file {p}: rows_done {done!r}; expected a whole number of rows "
                        f"from {lo} to {hi}{tail}")
    return state


def check_rows_written(state: dict, mm: np.ndarray, path: Union[str, os.PathLike], lo: int,
                       restart: str = "") -> None:
    """The rows a progress record (:func:`read_progress`) says are written are there: its last
    batch's checksum matches the partial file (a record from an older facelt without one: the
    last row is not empty). :class:`DataError` naming the file otherwise."""
    done = int(state["rows_done"])
    if done == lo:
        return
    tail = f"; {restart}" if restart else ""
    last, crc = state.get("last_rows"), state.get("last_crc32")
    if last is None and crc is None:
        if not np.any(mm[done - 1]):
            raise DataError(f"progress file {path}: says rows {lo}..{done - 1} are written, but "
                            f"row {done - 1} of the partial file is empty{tail}")
        return
    if not (isinstance(last, list) and len(last) == 2 and all(type(v) is int for v in last)
            and lo <= last[0] < last[1] == done and type(crc) is int):
        raise DataError(f"progress file {path}: its last batch {last!r} (checksum {crc!r}) does "
                        f"not end at rows_done {done}{tail}")
    if batch_checksum(mm, last[0], last[1]) != crc:
        raise DataError(f"progress file {path}: says rows {lo}..{done - 1} are written, but rows "
                        f"{last[0]}..{last[1] - 1} of the partial file do not hold what was "
                        f"written (one of the two files was changed){tail}")


# ------------------------------------------------------------------------------------- extraction

Batches = Union[Iterable[Any], Callable[[int], Iterable[Any]]]


def _flip(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x[..., ::-1])
    return x.flip(-1)  # torch.Tensor (N, C, H, W): horizontal flip


def _to_numpy(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().float().cpu().numpy()
    return np.asarray(y, dtype=np.float32)


def embed_rows(embed_fn: Callable[[Any], Any], batch: Any, dim: int, flip: bool = True,
               normalize: bool = True) -> np.ndarray:
    """The feature rows of one batch: ``embed(x)`` (+ ``embed(mirror(x))`` with ``flip``), checked
    to be ``(len(batch), dim)``, L2-normalised with ``normalize`` (float32)."""
    n = len(batch)
    emb = _to_numpy(embed_fn(batch))
    if flip:
        emb = emb + _to_numpy(embed_fn(_flip(batch)))
    if emb.shape != (n, dim):
        raise DataError(f"embed_fn returned shape {emb.shape} for a batch of {n}; "
                        f"expected ({n}, {dim})")
    return l2_normalize(emb) if normalize else emb


def extract_features(embed_fn: Callable[[Any], Any], batches_iter: Batches,
                     out_path: Union[str, os.PathLike], num_rows: int, dim: int,
                     flip: bool = True, resume: bool = True, normalize: bool = True,
                     fingerprint: str = "") -> Path:
    """Embed every batch into rows of ``out_path`` (a stacked ``.npy``), resumably.

    ``embed_fn(batch) -> (B, dim)`` (numpy or torch).  ``batches_iter`` yields batches in row order;
    it may instead be a callable ``f(first_row)`` returning an iterator that starts at that row, so
    a resumed run does not load the images it already did (a plain iterable is consumed and its
    finished batches skipped without embedding).  With ``flip`` a row is ``embed(x) + embed(flip(x))``
    (horizontal flip of the last axis); with ``normalize`` it is then L2-normalised.  After each
    batch the rows are flushed and ``<out>.progress.json`` records how many are done.
    ``fingerprint`` names the source (model + rows): resuming a partial file made from another
    source is refused, and the finished file's ``<out>.source.json`` records it (see
    :func:`finished_with`).
    """
    out = Path(out_path)
    sidecar = out.with_name(out.name + PROGRESS_SUFFIX)
    settings = {"num_rows": int(num_rows), "dim": int(dim), "flip": bool(flip),
                "normalize": bool(normalize), "fingerprint": str(fingerprint)}
    done = 0
    restart = f"delete it and {partial_path(out)} to start over"
    state = None
    if resume and sidecar.exists() and partial_path(out).exists():
        state = read_progress(sidecar, 0, num_rows, settings, restart)
        done = int(state["rows_done"])
    mm = write_feature_memmap(out, num_rows, dim, reuse=done > 0)
    try:
        if state is not None:
            check_rows_written(state, mm, sidecar, 0, restart)
        batches = batches_iter(done) if callable(batches_iter) else batches_iter
        row = done if callable(batches_iter) else 0
        for batch in batches:
            n = len(batch)
            if row + n <= done:  # already written in an earlier run
                row += n
                continue
            if row < done:
                raise DataError(f"batches do not line up with the {done} rows already written in "
                                f"{partial_path(out)}: a batch spans rows {row}..{row + n - 1}")
            if row + n > num_rows:
                raise DataError(f"batches hold more than num_rows={num_rows} rows")
            mm[row:row + n] = embed_rows(embed_fn, batch, dim, flip, normalize)
            mm.flush()
            row += n
            write_json(sidecar, progress_record(row, mm, row - n, **settings))
        if row != num_rows:
            raise DataError(f"batches ended after {row} rows; expected num_rows={num_rows} "
                            f"(progress kept in {sidecar}: rerun to resume)")
        source_path(out).unlink(missing_ok=True)  # never the old source beside the new rows
        final = finalize_feature_memmap(mm, out)
        write_json(source_path(out), settings)
    finally:
        del mm
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()
    return final
