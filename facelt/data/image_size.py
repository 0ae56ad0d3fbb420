"""One image-size rule for face data, checked before any work.

A face model sees its images at one size; a rec packed at 32x32 fed to a recipe of 112 fails at
the first forward pass (or, resized silently, evaluates something else).  :func:`require_image_size`
is the rule and its one message; ``facelt check`` (also without ``--decode``), ``facelt train``
(before the verification sets are decoded), ``extract-features`` and ``verify`` call it with the
size their images have (:func:`rec_image_size`: the ``property`` file, else the first record's
header) and the size the model or recipe expects.  Nothing is resized silently.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

from facelt.errors import DataError

if TYPE_CHECKING:
    from facelt.config import Config

PathLike = Union[str, os.PathLike]


def require_image_size(found: tuple[int, int], expected: tuple[int, int], where: str,
                       expected_from: str, fix: str) -> None:
    """Raise :class:`DataError` unless images of ``where`` are ``expected`` (height, width) as
    ``expected_from`` (the recipe, the model) says; the message names both sizes and ``fix``."""
    found = (int(found[0]), int(found[1]))
    expected = (int(expected[0]), int(expected[1]))
    if found != expected:
        raise DataError(f"{where}: images are {found[0]}x{found[1]}, but {expected_from} expects "
                        f"{expected[0]}x{expected[1]}; facelt does not resize faces silently: {fix}")


def rec_image_size(prefix: PathLike) -> tuple[int, int]:
    """``(height, width)`` of the images of rec ``PREFIX``: its ``property`` file's, else what the
    first image record's header declares (nothing is decoded)."""
    from facelt.data.decode import encoded_image_size
    from facelt.data.recordio import RecordReader, read_insightface
    index = read_insightface(prefix)
    if index.image_size is not None:
        return int(index.image_size[0]), int(index.image_size[1])
    if len(index.keys) == 0:
        raise DataError(f"{index.rec_path}: no image records")
    key = int(index.keys[0])
    reader = RecordReader(index.rec_path, index.idx_path)
    try:
        _, payload = reader.read_unpacked(key)
    finally:
        reader.close()
    w, h = encoded_image_size(payload, f"{index.rec_path} record {key}")
    return h, w


def check_rec_image_size(prefix: PathLike, size: int, expected_from: str) -> None:
    """:func:`require_image_size` for rec ``PREFIX`` against a square ``size``."""
    found = rec_image_size(prefix)
    require_image_size(found, (size, size), str(prefix), expected_from,
                       f"train and evaluate at {found[0]} (--set data.image_size={found[0]}), or "
                       f"repack the images at {size} (facelt rec pack)")


def check_recipe_image_size(cfg: "Config") -> None:
    """Every rec split of ``cfg.data`` (``format: rec``) holds images of ``data.image_size``
    (list data is resized by its transforms, as the recipe says)."""
    from facelt.data.build import SPLITS, split_location
    if cfg.data.format != "rec":
        return
    for split in SPLITS:
        prefix = split_location(cfg.data, split)
        if prefix is not None:
            check_rec_image_size(prefix, cfg.data.image_size,
                                 f"the recipe ({split} split; data.image_size)")
