"""Image decoding with the size checked first: every encoded image facelt reads (a record's
payload, a verification set's bytes, an image file) goes through here.

An image header can declare any size: a 100-byte PNG may say 20000 x 20000 (1.2 GB decoded).
:func:`encoded_image_size` reads the declared size from the header alone (PIL parses headers
lazily, without decoding pixels); :func:`check_decoded_size` refuses more than
:data:`MAX_IMAGE_PIXELS`; only then does :func:`imdecode` / :func:`imread` call OpenCV.  An empty
payload, a header no reader recognises and OpenCV's own failures are :class:`DataError`\\ s
naming the image, never a ``cv2.error``.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

import cv2
import numpy as np

from facelt.errors import DataError

__all__ = ["MAX_IMAGE_PIXELS", "MAX_IMAGE_FILE_BYTES", "declared_image_size",
           "encoded_image_size", "check_decoded_size",
           "imdecode", "imread"]

#: the most pixels an image may declare (8192 x 8192: 192 MiB decoded as RGB). Face crops are
#: 112 x 112, photos of MegaFace / IJB / ImageNet a few megapixels.
MAX_IMAGE_PIXELS = 1 << 26
#: the largest image file read whole (a 64-megapixel image rarely needs more than 192 MiB)
MAX_IMAGE_FILE_BYTES = 1 << 28


def check_decoded_size(width: int, height: int, where: str) -> None:
    """:class:`DataError` naming ``where`` when ``width x height`` is not a size to decode."""
    if width < 1 or height < 1:
        raise DataError(f"{where}: image of {width}x{height} pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{where}: the image declares {width}x{height} pixels "
                        f"({width * height:,}); facelt decodes at most {MAX_IMAGE_PIXELS:,} "
                        f"pixels an image (8192x8192), so it is refused before decoding")


def declared_image_size(fh: BinaryIO, where: str) -> tuple[int, int]:
    """``(width, height)`` that the image in the seekable binary file ``fh`` declares, read from
    its header only (JPEG, PNG, BMP, GIF, TIFF, WebP, PPM ...: PIL's header parsers, without its
    decompression-bomb refusal, which is :func:`check_decoded_size`'s job here);
    :class:`DataError` naming ``where`` when no header parser recognises it."""
    from PIL import Image
    Image.init()
    fh.seek(0)
    prefix = fh.read(16)
    for fmt in Image.ID:  # Image.open's own loop
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(prefix):
                continue
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = factory(fh, None)
            return int(img.size[0]), int(img.size[1])
        except Exception:  # noqa: BLE001 -- not this format, or a damaged header: try the next
            continue
        finally:
            fh.seek(0)
    raise DataError(f"{where}: not an image facelt can read (unrecognised or damaged header)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (they hold the size); C4, C8 and CC are not frames
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    """The frame size of a baseline / progressive JPEG from its markers (None when unsure)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", data, pos + 5)
            return (w, h) if w and h else None
        if marker == 0xDA or length < 2:  # scan data before any frame header: not sure
            return None
        pos += 2 + length
    return None


def _quick_size(data: bytes) -> Optional[tuple[int, int]]:
    """``(width, height)`` of a PNG or JPEG read straight from its header (the common cases, a
    few microseconds); None for anything else, left to PIL's parsers."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack_from(">II", data, 16)
        return (w, h) if w and h else None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def encoded_image_size(payload: bytes, where: str) -> tuple[int, int]:
    """``(width, height)`` that the encoded image ``payload`` declares (PNG and JPEG headers
    read directly, other formats by :func:`declared_image_size`); :class:`DataError` naming
    ``where`` when it is empty or not an image."""
    if len(payload) == 0:
        raise DataError(f"{where}: the image is empty (0 bytes)")
    quick = _quick_size(payload)
    if quick is not None:
        return quick
    try:
        return declared_image_size(io.BytesIO(payload), where)
    except DataError:
        raise DataError(f"{where}: {len(payload)} bytes that are not an image OpenCV can decode "
                        "(unrecognised or damaged header)") from None


def imdecode(payload: Union[bytes, bytearray, memoryview, np.ndarray], flags: int,
             where: str) -> np.ndarray:
    """``cv2.imdecode(payload, flags)`` once the declared size passed :func:`check_decoded_size`;
    :class:`DataError` naming ``where`` for an empty, oversized or undecodable image."""
    data = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)
    w, h = encoded_image_size(data, where)
    check_decoded_size(w, h, where)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise DataError(f"{where}: OpenCV cannot decode the image ({len(data)} bytes): "
                        f"{str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise DataError(f"{where}: {len(data)} bytes that are not an image OpenCV can decode")
    return img


def imread(path: Union[str, os.PathLike], flags: int, where: str = "") -> np.ndarray:
    """The image file ``path`` decoded by :func:`imdecode` (its size checked from the header);
    :class:`DataError` naming the file (and ``where``) when it is missing, too large or not an
    image."""
    p = Path(path)
    name = f"image {p}" + (f" ({where})" if where else "")
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise DataError(f"{name}: not a file")
        if size > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"{name}: {size:,} bytes, more than the {MAX_IMAGE_FILE_BYTES:,} an "
                            "image file may have")
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: not found") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    return imdecode(data, flags, name)
