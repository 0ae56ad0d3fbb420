"""A look inside a RecordIO file: one dict per record (key, offset, header, payload length and
sha256), what ``facelt rec inspect`` prints."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from facelt.data.recordio import RecordReader, check_rec_complete, insightface_paths, unpack

__all__ = ["inspect_records", "record_summary"]


def inspect_records(prefix: str | Path) -> Iterator[dict]:
    """One dict per record of ``PREFIX.rec`` in file order (key None when it has no .idx).

    A file shorter than its ``.idx`` or its record 0 say is refused before any row
    (:func:`~facelt.data.recordio.check_rec_complete`)."""
    rec_path, idx_path, prop_path = insightface_paths(prefix)
    reader = RecordReader(rec_path, idx_path if idx_path.is_file() else None)
    check_rec_complete(reader, prop_path)
    return _rows(reader)


def _rows(reader: RecordReader) -> Iterator[dict]:
    for offset, record in reader.scan():
        key = reader.key_at(offset)
        header, payload = unpack(record, reader.where(key, offset))
        label = list(header.label) if isinstance(header.label, tuple) else header.label
        yield {"key": key, "offset": offset, "flag": header.flag, "label": label, "id": header.id,
               "id2": header.id2, "payload_len": len(payload),
               "payload_sha256": hashlib.sha256(payload).hexdigest()}


def record_summary(prefix: str | Path) -> dict:
    """``{rec, records, bytes, indexed, property}`` of ``PREFIX.rec``: the record count (the
    ``.idx``'s, else a walk of the file), its size and the ``property`` line (None when absent)."""
    rec_path, idx_path, prop_path = insightface_paths(prefix)
    reader = RecordReader(rec_path, idx_path if idx_path.is_file() else None)
    try:
        count = len(reader)
        size = reader.file_size()
    finally:
        reader.close()
    prop = None
    if prop_path.is_file():
        prop = prop_path.read_bytes()[:100].decode("ascii", "replace").strip()
    return {"rec": str(rec_path), "records": int(count), "bytes": int(size),
            "indexed": idx_path.is_file(), "property": prop}
