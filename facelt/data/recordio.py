"""MXNet RecordIO without mxnet: reader, byte-identical writer and the insightface layout.

On-disk format (dmlc-core ``recordio``): every part is ``uint32 magic 0xCED7230A``,
``uint32 lrec = (cflag << 29) | length``, ``length`` data bytes, zero padding to a multiple of 4.
A record whose data holds the magic word at a 4-byte-aligned position is split there: the magic
word is dropped and the pieces are written as parts with cflag 1 (start), 2 (middle), 3 (end);
a record without such a word is one part with cflag 0.  The reader puts the magic words back.
Only the last part is padded (earlier parts always have aligned lengths).

The ``.idx`` file is text, ``key<TAB>offset`` a line, offsets of each record's first part, as
written by ``MXIndexedRecordIO.write_idx``.  The payload header is ``struct '<IfQQ'`` (flag,
label, id, id2); ``flag > 0`` means ``flag`` float32 labels follow the header.

insightface layout (``train.rec``/``train.idx``/``property``): record 0 has flag 2 and label
(first identity record, end); image records 1..n; identity records hold [img_start, img_end);
``property`` holds ``num_classes,H,W``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from facelt.errors import DataError
from facelt.utils.limits import MAX_LABEL
from facelt.utils.io import atomic_path, remove_stale_temporaries

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
_PART = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24
_READ_HINT = 64 * 1024
_READ_HINT_MAX = 1 << 20

PathLike = Union[str, os.PathLike]
Label = Union[float, tuple[float, ...]]


# ----------------------------------------------------------------------------- payload header
@dataclass(frozen=True)
class IRHeader:
    """MXNet's image-record header: ``flag`` (label count when > 0), label, id, id2."""

    flag: int
    label: Label
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Prefix ``payload`` with ``header`` exactly as ``mxnet.recordio.pack`` does.

    A scalar label gives flag 0; a label sequence gives flag = its length, a 0.0 label field and the
    labels as float32 after the header (the ``flag`` passed in is ignored, as in MXNet).
    """
    label = header.label
    if isinstance(label, numbers.Number):
        return _IR.pack(0, float(label), header.id, header.id2) + bytes(payload)
    values = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(values.size, 0.0, header.id, header.id2) + values.tobytes() + bytes(payload)


def unpack(record: bytes, where: str = "") -> tuple[IRHeader, bytes]:
    """Split a record into its :class:`IRHeader` and payload (labels are floats, a tuple if flag > 0)."""
    size = len(record)
    if size < IR_SIZE:
        raise DataError(f"{where or 'record'}: {size} bytes, shorter than the {IR_SIZE}-byte "
                        "IRHeader (flag, label, id, id2)")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, float(label), id_, id2), bytes(record[IR_SIZE:])
    end = IR_SIZE + 4 * flag
    if end > size:
        raise DataError(f"{where or 'record'}: header flag {flag} claims {flag} float32 labels "
                        f"({4 * flag} bytes) but only {size - IR_SIZE} bytes follow the header")
    labels = tuple(float(v) for v in struct.unpack_from(f"<{flag}f", record, IR_SIZE))
    return IRHeader(flag, labels, id_, id2), bytes(record[end:])


# ----------------------------------------------------------------------------- encoding
def _part(cflag: int, data: bytes | memoryview) -> bytes:
    return _PART.pack(MAGIC, (cflag << 29) | len(data)) + bytes(data)


def encode_record(record: bytes) -> bytes:
    """The exact bytes dmlc-core's ``RecordIOWriter::WriteRecord`` writes for ``record``."""
    size = len(record)
    if size > LENGTH_MASK:
        raise DataError(f"record of {size} bytes: RecordIO records must be under 2^29 bytes")
    view = memoryview(record)
    parts: list[bytes] = []
    start = 0
    hit = record.find(MAGIC_BYTES)
    while hit >= 0:
        if hit % 4 == 0:  # only aligned magic words split the record
            parts.append(_part(1 if start == 0 else 2, view[start:hit]))
            start = hit + 4
        hit = record.find(MAGIC_BYTES, hit + 1)
    parts.append(_part(3 if start else 0, view[start:]))
    parts.append(b"\0" * (-size % 4))
    return b"".join(parts)


# ----------------------------------------------------------------------------- part walking
class _Source:
    """Bytes of a .rec file at absolute positions (bounds are checked by the caller)."""

    def fetch(self, pos: int, n: int) -> bytes | memoryview:
        raise NotImplementedError

    def skip(self, pos: int, n: int) -> None:
        """Move past ``n`` bytes at ``pos`` without reading them."""


class _PreadSource(_Source):
    """Random access through ``os.pread`` with a read-ahead window (one syscall per record)."""

    def __init__(self, fd: int, hint: int) -> None:
        self.fd, self.hint = fd, hint
        self.start, self.buf = 0, memoryview(b"")

    def fetch(self, pos: int, n: int) -> memoryview:
        off = pos - self.start
        if off < 0 or off + n > len(self.buf):
            self.buf = memoryview(os.pread(self.fd, max(n, self.hint), pos))
            self.start, off = pos, 0
        return self.buf[off:off + n]


class _StreamSource(_Source):
    """Sequential access through a buffered file object."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.pos = fh, fh.tell()

    def fetch(self, pos: int, n: int) -> bytes:
        if pos != self.pos:
            self.fh.seek(pos)
        data = self.fh.read(n)
        self.pos = pos + len(data)
        return data

    def skip(self, pos: int, n: int) -> None:
        self.pos = pos + n
        self.fh.seek(self.pos)


def _walk(src: _Source, offset: int, size: int, where: Callable[[], str],
          keep: bool = True, limit: Optional[int] = None) -> tuple[Optional[bytes], int]:
    """Read (or skip) the record whose first part starts at ``offset``.

    Returns the joined record (``None`` when ``keep`` is false) and the offset after its last part.
    With ``limit`` it stops once ``limit`` bytes of the record are collected.
    """
    pos, part, got = offset, 0, 0
    chunks: list[bytes | memoryview] = []
    while True:
        if pos + 8 > size:
            if part == 0 and pos >= size:
                raise DataError(f"{where()}: offset is past the end of the file ({size} bytes)")
            raise DataError(f"{where()}: truncated: part {part} header at byte {pos} needs 8 bytes "
                            f"but the file ends at byte {size}")
        magic, lrec = _PART.unpack(src.fetch(pos, 8))
        if magic != MAGIC:
            raise DataError(f"{where()}: bad magic word 0x{magic:08X} at byte {pos} "
                            f"(expected 0x{MAGIC:08X}; not a RecordIO file or a wrong .idx offset)")
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if (part == 0 and cflag not in (0, 1)) or (part > 0 and cflag not in (2, 3)):
            expected = "0 (whole) or 1 (start)" if part == 0 else "2 (middle) or 3 (end)"
            raise DataError(f"{where()}: bad cflag sequence: part {part} at byte {pos} has cflag "
                            f"{cflag}, expected {expected}")
        padded = (length + 3) & ~3
        body = pos + 8
        if body + padded > size:
            raise DataError(f"{where()}: truncated: part {part} at byte {pos} needs {padded} bytes "
                            f"of data but the file ends at byte {size}")
        pos = body + padded
        if keep:
            if part:
                chunks.append(MAGIC_BYTES)
            chunks.append(src.fetch(body, length))
            got += length + (4 if part else 0)
            if limit is not None and got >= limit:
                break
        else:
            src.skip(body, padded)
        if cflag in (0, 3):
            break
        part += 1
    return (b"".join(chunks) if keep else None), pos


# ----------------------------------------------------------------------------- idx
def _read_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``key<TAB>offset`` .idx file into int64 (keys, offsets), in file order."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read RecordIO index: {exc.strerror}") from exc
    lines = raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)
    tokens = raw.split()
    # fast path when every line is exactly 'key<TAB>offset': tabs and newlines alternate
    bytes_ = np.frombuffer(raw, np.uint8)
    seps = bytes_[(bytes_ == 9) | (bytes_ == 10)]
    alternating = bool((seps[0::2] == 9).all() and (seps[1::2] == 10).all())
    if alternating and len(tokens) == 2 * lines and seps.size // 2 + seps.size % 2 == lines:
        try:
            pairs = np.array(tokens, dtype=np.int64).reshape(-1, 2)
        except (ValueError, OverflowError):
            pairs = None
        if pairs is not None and pairs.size and (pairs[:, 1] >= 0).all():
            return _check_unique(path, pairs[:, 0].copy(), pairs[:, 1].copy())
    keys, offsets = [], []
    for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        try:
            if len(fields) != 2 or int(fields[1]) < 0:
                raise ValueError
            keys.append(int(fields[0]))
            offsets.append(int(fields[1]))
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected 'key<TAB>offset' with integer key and "
                            f"offset >= 0, got {line!r}") from None
    return _check_unique(path, np.array(keys, np.int64), np.array(offsets, np.int64))


def _check_unique(path: Path, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if keys.size > 1:
        ordered = np.sort(keys)
        dup = np.flatnonzero(ordered[1:] == ordered[:-1])
        if dup.size:
            key = int(ordered[dup[0]])
            lines = (np.flatnonzero(keys == key) + 1).tolist()[:2]
            raise DataError(f"{path}: key {key} appears twice (lines {lines[0]} and {lines[1]})")
    return keys, offsets


# ----------------------------------------------------------------------------- reader
class RecordReader:
    """Random and sequential access to a ``.rec`` file (and its ``.idx`` when there is one).

    The file is opened lazily and re-opened in a forked child (the pid is remembered), so one
    instance can be handed to DataLoader workers.  ``idx_path=None`` uses the ``.idx`` next to the
    ``.rec`` when it exists; without an index only :meth:`scan` and :meth:`read_at` work.
    """

    def __init__(self, rec_path: PathLike, idx_path: Optional[PathLike] = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path}: RecordIO file not found")
        sibling = self.rec_path.with_suffix(".idx")
        self.idx_path: Optional[Path] = Path(idx_path) if idx_path is not None else (
            sibling if sibling.is_file() else None)
        if self.idx_path is not None:
            self._keys, self._offsets = _read_idx(self.idx_path)
        else:
            self._keys = self._offsets = np.zeros(0, np.int64)
        self._keys.flags.writeable = False
        n = self._keys.size
        self._dense = bool(n) and bool((self._keys == np.arange(n)).all())
        self._by_key = None if self._dense else np.argsort(self._keys, kind="stable")
        self._by_offset: Optional[np.ndarray] = None
        self._monotonic = n < 2 or bool((np.diff(self._offsets) > 0).all())
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        self._size = 0
        self._count: Optional[int] = None

    # --- file handling (lazy, fork-aware)
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self.rec_path, os.O_RDONLY)
            except OSError as exc:
                raise DataError(f"{self.rec_path}: cannot open: {exc.strerror}") from exc
            self._pid = os.getpid()
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- index
    @property
    def keys(self) -> np.ndarray:
        """Keys of the .idx in file order (read-only int64 array; empty without an index)."""
        return self._keys

    def __len__(self) -> int:
        if self.idx_path is not None:
            return int(self._keys.size)
        if self._count is None:
            self._count = sum(1 for _ in self._walk_all(keep=False))
        return self._count

    def __contains__(self, key: int) -> bool:
        return self._position(key) is not None

    def _position(self, key: int) -> Optional[int]:
        if self._dense:
            return int(key) if 0 <= key < self._keys.size else None
        if self._by_key is None or not self._by_key.size:
            return None
        i = int(np.searchsorted(self._keys, key, sorter=self._by_key))
        if i < self._by_key.size and self._keys[self._by_key[i]] == key:
            return int(self._by_key[i])
        return None

    def _locate(self, key: int) -> tuple[int, int]:
        pos = self._position(key)
        if pos is None:
            where = self.idx_path if self.idx_path is not None else f"{self.rec_path} (no .idx)"
            raise DataError(f"{where}: no record with key {key}")
        return pos, int(self._offsets[pos])

    def offset_of(self, key: int) -> int:
        """Byte offset of ``key``'s record according to the .idx."""
        return self._locate(key)[1]

    def key_at(self, offset: int) -> Optional[int]:
        """The .idx key whose record starts at byte ``offset`` (None when not indexed)."""
        if not self._keys.size:
            return None
        if self._by_offset is None:
            self._by_offset = np.argsort(self._offsets, kind="stable")
        i = int(np.searchsorted(self._offsets, offset, sorter=self._by_offset))
        if i < self._by_offset.size and self._offsets[self._by_offset[i]] == offset:
            return int(self._keys[self._by_offset[i]])
        return None

    def where(self, key: Optional[int], offset: int) -> str:
        """How errors name a record: file, key and byte offset."""
        return f"{self.rec_path} (key {key if key is not None else '?'}, offset {offset})"

    # --- reading
    def _hint(self, key_pos: Optional[int], offset: int) -> int:
        if key_pos is not None and self._monotonic:
            nxt = int(self._offsets[key_pos + 1]) if key_pos + 1 < self._offsets.size else self._size
            if nxt > offset:
                return min(nxt - offset, _READ_HINT_MAX)
        return _READ_HINT

    def _read(self, offset: int, key: Optional[int], key_pos: Optional[int],
              limit: Optional[int] = None) -> bytes:
        fd = self._file()
        src = _PreadSource(fd, self._hint(key_pos, offset) if limit is None else max(limit + 8, 64))
        record, _ = _walk(src, offset, self._size, lambda: self.where(key, offset), limit=limit)
        return record  # type: ignore[return-value]

    def read(self, key: int) -> bytes:
        """The record stored under ``key`` (multi-part records joined, magic words restored)."""
        pos, offset = self._locate(key)
        return self._read(offset, key, pos)

    def read_at(self, offset: int) -> bytes:
        """The record whose first part starts at byte ``offset``."""
        return self._read(offset, self.key_at(offset), None)

    def file_size(self) -> int:
        """Bytes in the ``.rec`` file."""
        self._file()
        return self._size

    def record_end(self, offset: int) -> int:
        """The byte after the last part of the record starting at ``offset`` (its framing walked,
        the payload skipped); :class:`DataError` when the file ends inside it."""
        src = _PreadSource(self._file(), 64)
        key = self.key_at(offset)
        return _walk(src, offset, self._size, lambda: self.where(key, offset), keep=False)[1]

    def read_unpacked(self, key: int) -> tuple[IRHeader, bytes]:
        """``unpack(read(key))`` with errors naming this file, the key and the offset."""
        pos, offset = self._locate(key)
        return unpack(self._read(offset, key, pos), self.where(key, offset))

    def read_header(self, key: int) -> IRHeader:
        """Only the :class:`IRHeader` of ``key`` (reads the header and labels, not the payload)."""
        offset = self.offset_of(key)
        where = self.where(key, offset)
        head = self._read(offset, key, None, limit=IR_SIZE)
        if len(head) >= IR_SIZE:
            flag = _IR.unpack_from(head, 0)[0]
            if flag and len(head) < IR_SIZE + 4 * flag:
                head = self._read(offset, key, None, limit=IR_SIZE + 4 * flag)
        return unpack(head, where)[0]

    def _walk_all(self, keep: bool = True) -> Iterator[tuple[int, Optional[bytes]]]:
        """(start offset, record) of every record in file order; ``keep=False`` skips the
        payloads (the record is None) and only checks the framing."""
        with open(self.rec_path, "rb", buffering=1 << 20) as fh:
            size = os.fstat(fh.fileno()).st_size
            src, pos, i = _StreamSource(fh), 0, 0
            while pos < size:
                start = pos
                record, pos = _walk(src, start, size,
                                    lambda: f"{self.rec_path} (record #{i}, key "
                                            f"{self.key_at(start) if self._keys.size else '?'}, "
                                            f"offset {start})", keep=keep)
                yield start, record
                i += 1

    @property
    def offsets(self) -> np.ndarray:
        """Byte offsets of the .idx entries, in the order of :attr:`keys`."""
        return self._offsets

    def record_offsets(self) -> np.ndarray:
        """Start offsets of every record in file order, walking the part headers only (payloads are
        skipped): checks the framing of the whole file; a damaged part is a :class:`DataError`."""
        return np.fromiter((start for start, _ in self._walk_all(keep=False)), dtype=np.int64)

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, record) for every record in file order, without the .idx."""
        for offset, record in self._walk_all():
            yield offset, record  # type: ignore[misc]


# ----------------------------------------------------------------------------- writer
class RecordWriter:
    """Append records exactly as ``MXIndexedRecordIO.write_idx`` does (``.rec`` + ``.idx``).

    Output goes to temporary names and is renamed into place by :meth:`close`; after an exception
    (or :meth:`abort`) the temporaries are removed and earlier files are left intact.
    ``idx_path=None`` writes the ``.idx`` next to the ``.rec``.
    """

    def __init__(self, rec_path: PathLike, idx_path: Optional[PathLike] = None,
                 resumable: bool = False, resume: Optional[dict] = None) -> None:
        """``resumable``: write to ``<name>.partial`` files that survive a crash, with
        :meth:`state` to record progress; ``resume`` (a :meth:`state`) reopens them, cut back to
        that state, and continues."""
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self._stack = contextlib.ExitStack()
        self._partial = resumable or resume is not None
        self._pos = 0
        try:
            if self._partial:
                self._open_partial(resume)
            else:
                for final in (self.rec_path, self.idx_path):   # a killed earlier writer's leftovers
                    remove_stale_temporaries(final)
                rec_tmp = self._stack.enter_context(atomic_path(self.rec_path))
                idx_tmp = self._stack.enter_context(atomic_path(self.idx_path))
                self._rec = open(rec_tmp, "w+b")
                self._idx = open(idx_tmp, "w")
        except BaseException:
            self._stack.close()
            raise
        self._closed = False

    @staticmethod
    def partial_paths(rec_path: PathLike, idx_path: PathLike) -> tuple[Path, Path]:
        return Path(f"{rec_path}.partial"), Path(f"{idx_path}.partial")

    def _open_partial(self, resume: Optional[dict]) -> None:
        rec_p, idx_p = self.partial_paths(self.rec_path, self.idx_path)
        rec_p.parent.mkdir(parents=True, exist_ok=True)
        idx_p.parent.mkdir(parents=True, exist_ok=True)
        if resume is None:
            self._rec, self._idx = open(rec_p, "w+b"), open(idx_p, "w+")
            return
        for path, size in ((rec_p, resume["pos"]), (idx_p, resume["idx_bytes"])):
            if not path.is_file() or path.stat().st_size < size:
                raise DataError(f"{path}: cannot resume, expected at least {size} bytes "
                                f"(found {path.stat().st_size if path.is_file() else 'no file'})")
        self._rec, self._idx = open(rec_p, "r+b"), open(idx_p, "r+")
        self._rec.truncate(resume["pos"])
        self._idx.truncate(resume["idx_bytes"])
        self._rec.seek(resume["pos"])
        self._idx.seek(resume["idx_bytes"])
        self._pos = int(resume["pos"])

    def state(self) -> dict:
        """Flush both files to disk and return where they end (for ``resume=``)."""
        for fh in (self._rec, self._idx):
            fh.flush()
            os.fsync(fh.fileno())
        return {"pos": self._pos, "idx_bytes": self._idx.tell()}

    def tell(self) -> int:
        """Byte offset the next record will start at."""
        return self._pos

    def write(self, key: int, record: bytes) -> int:
        """Append ``record`` under ``key``; returns its byte offset."""
        if self._closed:
            raise ValueError(f"{self.rec_path}: writer is closed")
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"RecordIO keys are integers, got {key!r}")
        data = encode_record(record)
        offset = self._pos
        self._rec.write(data)
        self._idx.write(f"{int(key)}\t{offset}\n")
        self._pos += len(data)
        return offset

    def rewrite_at(self, offset: int, record: bytes) -> None:
        """Replace the record written at ``offset`` by one whose encoding has the same length."""
        data = encode_record(record)
        self._rec.flush()
        src = _StreamSource(self._rec)
        _, end = _walk(src, offset, self._pos, lambda: f"{self.rec_path} (offset {offset})", keep=False)
        if end - offset != len(data):
            raise ValueError(f"{self.rec_path}: record at offset {offset} takes {end - offset} bytes, "
                             f"its replacement {len(data)}")
        self._rec.seek(offset)
        self._rec.write(data)
        self._rec.seek(self._pos)

    def close(self) -> None:
        """Finish both files and rename them into place."""
        if self._closed:
            return
        self._closed = True
        if self._partial:
            self.state()
            self._rec.close()
            self._idx.close()
            rec_p, idx_p = self.partial_paths(self.rec_path, self.idx_path)
            # an older build's .idx must never sit beside the new .rec (or the reverse)
            self.idx_path.unlink(missing_ok=True)
            os.replace(rec_p, self.rec_path)
            os.replace(idx_p, self.idx_path)
            return
        try:
            self._rec.close()
            self._idx.close()
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack.close()

    def abort(self, exc: Optional[BaseException] = None) -> None:
        """Drop the temporaries; the files under the final names are untouched."""
        if self._closed:
            return
        self._closed = True
        self._rec.close()
        self._idx.close()
        if self._partial:  # the .partial files stay: they are what a later run resumes from
            return
        err = exc if exc is not None else RuntimeError("RecordWriter aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


# ----------------------------------------------------------------------------- insightface layout
def insightface_paths(prefix: PathLike) -> tuple[Path, Path, Path]:
    """``PREFIX.rec``, ``PREFIX.idx`` and the ``property`` file in the same folder."""
    p = Path(prefix)
    if p.suffix in (".rec", ".idx"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".rec"), p.with_name(p.name + ".idx"), p.parent / "property"


def property_users(prefix: PathLike) -> list[Path]:
    """The other ``.rec`` files in the folder of ``PREFIX``: they share its ``property`` file."""
    rec_path, _, prop = insightface_paths(prefix)
    if not prop.parent.is_dir():
        return []
    return sorted(p for p in prop.parent.glob("*.rec") if p.name != rec_path.name)


def property_needs_writing(prefix: PathLike, num_classes: int, image_size: Sequence[int]) -> bool:
    """Whether packing ``PREFIX`` must (re)write the folder's ``property`` as ``K,H,W``.

    False when the file already says exactly that (it is left untouched).  Raises
    :class:`DataError` when it says something else and another ``.rec`` in the folder depends on
    it: rewriting it would break that file; such a pack needs a folder of its own.
    """
    _, _, prop = insightface_paths(prefix)
    want = (int(num_classes), int(image_size[0]), int(image_size[1]))
    if not prop.is_file():
        return True
    try:
        have = _read_property(prop)
    except DataError:
        have = None
    if have == want:
        return False
    others = property_users(prefix)
    if others:
        shown = ", ".join(p.name for p in others[:5])
        raise DataError(f"{prop}: holds {prop.read_bytes()[:40]!r}, which {shown} in the same folder "
                        f"depend on; packing {Path(prefix).name} needs '{want[0]},{want[1]},{want[2]}' "
                        "and would break them: pack into a folder of its own")
    return True


class InsightfaceRecWriter:
    """Write the insightface layout: record 0, images grouped by identity, identity records.

    Images must come grouped by identity with labels 0, 1, ..., K-1 in ascending order.  Image
    record ``k`` gets header ``(0, label, k, 0)``; :meth:`close` appends identity records
    ``(2, (img_start, img_end), key, 0)``, fills in record 0 ``(2, (num_images + 1, end), 0, 0)``
    and writes ``property`` (``K,H,W``); nothing appears under the final names before that.
    """

    def __init__(self, prefix: PathLike, num_images: int, image_size: Sequence[int] = (112, 112),
                 resumable: bool = False, resume: Optional[dict] = None) -> None:
        """``resumable`` / ``resume``: as :class:`RecordWriter`'s, with :meth:`state` also holding
        the identity bookkeeping, so a killed writer continues where its last state was taken."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.rec_path, self.idx_path, self.property_path = insightface_paths(prefix)
        self.num_images = int(num_images)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if resume is not None:
            if int(resume["num_images"]) != self.num_images:
                raise DataError(f"{self.rec_path}.partial: written for {resume['num_images']} "
                                f"images, now {self.num_images}")
            self._writer = RecordWriter(self.rec_path, self.idx_path, resume=resume["writer"])
            self._head0 = int(resume["head0"])
            self._key = int(resume["key"])
            self._label = int(resume["label"])
            self._starts = [int(k) for k in resume["starts"]]
            return
        self._writer = RecordWriter(self.rec_path, self.idx_path, resumable=resumable)
        self._head0 = self._writer.write(0, self._record0(self.num_images + 1))
        self._key = 1
        self._label = -1
        self._starts: list[int] = []

    def state(self) -> dict:
        """Everything needed to resume (``resume=``); flushes the files first."""
        return {"writer": self._writer.state(), "num_images": self.num_images,
                "head0": self._head0, "key": self._key, "label": self._label,
                "starts": list(self._starts)}

    @property
    def images_written(self) -> int:
        return self._key - 1

    def _record0(self, end: int) -> bytes:
        return pack(IRHeader(2, (float(self.num_images + 1), float(end)), 0, 0), b"")

    @property
    def num_classes(self) -> int:
        return len(self._starts)

    def add_image(self, label: int, payload: bytes) -> int:
        """Append one encoded image (its file bytes) of identity ``label``; returns its key."""
        label = int(label)
        if self._key > self.num_images:
            raise DataError(f"{self.rec_path}: more images than the {self.num_images} declared")
        if label == self._label + 1:
            self._starts.append(self._key)
            self._label = label
        elif label != self._label:
            raise DataError(f"{self.rec_path}: image {self._key} has label {label} after label "
                            f"{self._label}: images must come grouped by identity, labels "
                            f"0..K-1 ascending (expected {self._label} or {self._label + 1})")
        key = self._key
        self._writer.write(key, pack(IRHeader(0, float(label), key, 0), payload))
        self._key += 1
        return key

    def close(self) -> None:
        """Write identity records, record 0 and ``property``, then rename everything into place."""
        if self._key != self.num_images + 1:
            err = DataError(f"{self.rec_path}: {self._key - 1} images written, "
                            f"{self.num_images} declared")
            self._writer.abort(err)
            raise err
        try:
            bounds = self._starts + [self._key]
            key = self._key
            for start, end in zip(bounds[:-1], bounds[1:]):
                self._writer.write(key, pack(IRHeader(2, (float(start), float(end)), key, 0), b""))
                key += 1
            self._writer.rewrite_at(self._head0, self._record0(key))
            if property_needs_writing(self.rec_path, self.num_classes, self.image_size):
                remove_stale_temporaries(self.property_path)
                with atomic_path(self.property_path) as tmp:
                    h, w = self.image_size
                    tmp.write_text(f"{self.num_classes},{h},{w}")
                    self._writer.close()
            else:
                self._writer.close()
        except BaseException as exc:
            self._writer.abort(exc)
            raise

    def abort(self) -> None:
        self._writer.abort()

    def __enter__(self) -> "InsightfaceRecWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self._writer.abort(exc)


@dataclass(frozen=True)
class InsightfaceIndex:
    """What a training loader needs from an insightface-layout RecordIO dataset.

    ``keys``/``labels``: image record keys and their identity labels (int64, file order).
    ``ranges``: (K, 2) [img_start, img_end) keys per identity, or None when the file has no
    identity records and its images are not grouped by label.
    """

    rec_path: Path
    idx_path: Path
    num_classes: int
    image_size: Optional[tuple[int, int]]
    keys: np.ndarray
    labels: np.ndarray
    ranges: Optional[np.ndarray]


def _read_property(path: Path) -> Optional[tuple[int, int, int]]:
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected 'num_classes,height,width' as text, got binary data "
                        f"{raw[:24]!r}") from None
    try:
        k, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{path}: expected 'num_classes,height,width', got {text!r}") from None
    return k, h, w


def _identity_range(header: Optional[IRHeader]) -> Optional[tuple[int, int]]:
    """Record 0's ``(first identity record, end)`` in the insightface layout, else None."""
    if header is None or header.flag < 2 or not isinstance(header.label, tuple):
        return None
    start, end = (float(v) for v in header.label[:2])
    if not (start.is_integer() and end.is_integer() and 1 <= start <= end):
        return None
    return int(start), int(end)


def check_rec_complete(reader: RecordReader, property_path: Optional[PathLike] = None) -> None:
    """:class:`DataError` when the ``.rec`` behind ``reader`` holds fewer records than its
    ``.idx`` lists (offsets at or past its end, or a last record the file ends inside), than its
    record 0 says (the insightface identity range ``[first identity, end)``: records ``0 ..
    end - 1``), or when the ``property`` file's class count disagrees with that range.  A file cut
    at a record boundary reads cleanly up to the cut: this is what says it was cut."""
    size = reader.file_size()
    keys, offsets = reader.keys, reader.offsets
    if keys.size:
        past = np.flatnonzero(offsets >= size)
        if past.size:
            i = int(past[np.argmin(offsets[past])])
            raise DataError(f"{reader.rec_path}: truncated: {past.size} of the {keys.size} records "
                            f"{reader.idx_path} lists start at or past its end ({size:,} bytes; "
                            f"key {int(keys[i])} at byte {int(offsets[i]):,}): the file was cut "
                            "short (an interrupted copy or download?)")
        reader.record_end(int(offsets.max()))  # the last record ends inside the file
    if size == 0:
        return
    try:
        head0 = reader.read_header(0) if keys.size else unpack(reader.read_at(0), reader.where(0, 0))[0]
    except DataError:
        return  # no record 0, or not a header: not the insightface layout
    ids = _identity_range(head0)
    if ids is None:
        return
    count = int(keys.size) if keys.size else len(reader)
    where = reader.idx_path if keys.size else f"{reader.rec_path} (walked, no .idx)"
    if count < ids[1]:
        raise DataError(f"{reader.rec_path}: truncated: record 0 says the file holds {ids[1]} "
                        f"records (images 1..{ids[0] - 1}, identity records {ids[0]}..{ids[1] - 1}), "
                        f"but {where} holds {count}: the file was cut short")
    prop = _read_property(Path(property_path)) if property_path is not None else None
    if prop is not None and prop[0] != ids[1] - ids[0]:
        raise DataError(f"{property_path}: says {prop[0]} classes but record 0 of "
                        f"{reader.rec_path} holds {ids[1] - ids[0]} identity records")


def _first_label(header: IRHeader) -> float:
    return header.label if isinstance(header.label, float) else (header.label or (0.0,))[0]


def read_insightface(prefix: PathLike) -> InsightfaceIndex:
    """Read the image keys, labels and identity ranges of ``PREFIX.rec``/``.idx``/``property``.

    With identity records (record 0 has flag > 0) the labels come from them; otherwise every
    indexed record is an image and its label is the first label of its header.
    """
    rec_path, idx_path, prop_path = insightface_paths(prefix)
    if not idx_path.is_file():
        raise DataError(f"{idx_path}: index not found (the insightface layout needs {rec_path.name} "
                        f"and {idx_path.name})")
    reader = RecordReader(rec_path, idx_path)
    try:
        check_rec_complete(reader, prop_path)
        head0 = reader.read_header(0) if 0 in reader else None
        if head0 is not None and head0.flag > 0:
            keys, labels, ranges = _from_identity_records(reader, head0)
        else:
            keys, labels, ranges = _from_headers(reader)
    finally:
        reader.close()
    num_classes = int(ranges.shape[0]) if ranges is not None else int(labels.max(initial=-1)) + 1
    prop = _read_property(prop_path)
    if prop is not None and prop[0] != num_classes:
        raise DataError(f"{prop_path}: says {prop[0]} classes but {rec_path} holds {num_classes}")
    return InsightfaceIndex(rec_path, idx_path, num_classes, prop[1:] if prop else None,
                            keys, labels, ranges)


def _from_identity_records(reader: RecordReader, head0: IRHeader):
    where = reader.where(0, reader.offset_of(0))
    if not isinstance(head0.label, tuple) or len(head0.label) < 2:
        raise DataError(f"{where}: record 0 header should hold (first identity record, end)")
    id_start, id_end = int(head0.label[0]), int(head0.label[1])
    if not 1 <= id_start <= id_end:
        raise DataError(f"{where}: record 0 label ({id_start}, {id_end}) is not a valid range")
    ranges = np.zeros((id_end - id_start, 2), np.int64)
    for i, key in enumerate(range(id_start, id_end)):
        if key not in reader:
            raise DataError(f"{reader.idx_path}: identity record {key} (from record 0's label) is missing")
        header = reader.read_header(key)
        if not isinstance(header.label, tuple) or len(header.label) < 2:
            raise DataError(f"{reader.where(key, reader.offset_of(key))}: identity record should "
                            f"hold (img_start, img_end), has label {header.label}")
        ranges[i] = int(header.label[0]), int(header.label[1])
    keys = np.arange(1, id_start, dtype=np.int64)
    expected_start = np.concatenate([[1], ranges[:-1, 1]]) if len(ranges) else np.zeros(0, np.int64)
    bad = np.flatnonzero((ranges[:, 0] != expected_start) | (ranges[:, 1] < ranges[:, 0]))
    if bad.size or (len(ranges) and ranges[-1, 1] != id_start):
        k = int(bad[0]) if bad.size else len(ranges) - 1
        raise DataError(f"{reader.where(id_start + k, reader.offset_of(id_start + k))}: identity "
                        f"ranges must tile image keys 1..{id_start - 1} in order; identity {k} "
                        f"has [{ranges[k, 0]}, {ranges[k, 1]})")
    missing = keys[~np.isin(keys, reader.keys)]
    if missing.size:
        raise DataError(f"{reader.idx_path}: image record {int(missing[0])} is not in the index")
    labels = np.repeat(np.arange(len(ranges), dtype=np.int64), ranges[:, 1] - ranges[:, 0])
    return keys, labels, ranges


def _from_headers(reader: RecordReader):
    keys = np.array(reader.keys, dtype=np.int64)
    labels = np.empty(keys.size, np.int64)
    for i, key in enumerate(keys.tolist()):
        value = _first_label(reader.read_header(key))
        if not math.isfinite(value) or value < -1 or value != int(value) or value > MAX_LABEL:
            raise DataError(f"{reader.where(key, reader.offset_of(key))}: label {value} is not a "
                            f"class index (integer 0 .. {MAX_LABEL:,}, or -1 for an open-set "
                            "image)")
        labels[i] = int(value)
    ranges = None
    if (labels.size and labels.min() >= 0 and (np.diff(labels) >= 0).all()
            and (np.diff(keys) == 1).all()):
        k = int(labels[-1]) + 1
        starts = np.searchsorted(labels, np.arange(k), "left")
        ends = np.searchsorted(labels, np.arange(k), "right")
        ranges = np.stack([keys[0] + starts, keys[0] + ends], axis=1).astype(np.int64)
    return keys, labels, ranges
