"""Text files read strictly: bytes that are not UTF-8 are named by line and column."""
from __future__ import annotations

from facelt.errors import DataError, FaceltError

__all__ = ["decode_utf8"]


def decode_utf8(raw: bytes, where: str, error: type[FaceltError] = DataError,
                encoding: str = "utf-8") -> str:
    """``raw`` decoded (UTF-8 by default); ``error`` naming ``where``, the line and the column
    of the first byte that does not decode."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{where}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, "
                    f"column {column} (save the file as UTF-8)") from None
