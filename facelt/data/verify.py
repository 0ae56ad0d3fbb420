"""Deep checks of a split's data for ``facelt check``: every image decodes, every .idx entry
points at a sound record.  Each returns the problems found (empty when sound) instead of stopping
at the first, so one run lists what to fix."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facelt.data.images import ListDataset, load_image, pil_mode
from facelt.data.lists import ImageList
from facelt.data.recordio import RecordReader, insightface_paths
from facelt.data.rec_dataset import decode_image
from facelt.errors import DataError
from facelt.utils.progress import progress


def verify_list_images(image_list: ImageList, root: str | os.PathLike, channels: int = 3,
                       max_report: int = 10) -> tuple[int, list[str]]:
    """Decode every image of ``image_list`` under ``root``; ``(bad count, first messages)``."""
    root = Path(root)
    mode = pil_mode(channels)
    bad, shown = 0, []
    for i, item in enumerate(progress(image_list.items, desc="decoding images", unit="img")):
        try:
            load_image(root / item, mode, image_list.line_of(i))
        except DataError as exc:
            bad += 1
            if len(shown) < max_report:
                shown.append(str(exc))
    return bad, shown


def verify_rec(prefix: str | os.PathLike, image_keys: Optional[Sequence[int]] = None,
               decode: bool = False, max_report: int = 10) -> tuple[int, list[str]]:
    """Walk the whole ``PREFIX.rec`` framing and every ``.idx`` entry (its offset must start a
    record whose header reads); with ``decode`` also decode the payload of every ``image_keys``
    record.  Returns ``(bad count, first messages)``; a damaged framing is one problem."""
    rec_path, idx_path, _ = insightface_paths(prefix)
    reader = RecordReader(rec_path, idx_path)
    bad, shown = 0, []

    def note(msg: str) -> None:
        nonlocal bad
        bad += 1
        if len(shown) < max_report:
            shown.append(msg)

    try:
        starts = reader.record_offsets()
    except DataError as exc:
        note(str(exc))
        starts = None
    keys, offsets = reader.keys, reader.offsets
    if starts is not None:
        stray = np.flatnonzero(~np.isin(offsets, starts))
        for i in stray.tolist():
            note(f"{idx_path}: key {int(keys[i])} points at byte {int(offsets[i])} of {rec_path}, "
                 "which is not the start of a record")
    else:
        stray = np.zeros(0, np.int64)
    skip = set(stray.tolist())
    for i, key in enumerate(progress(keys.tolist(), desc="reading .idx records", unit="rec")):
        if i in skip:
            continue
        try:
            reader.read_header(int(key))
        except DataError as exc:
            note(str(exc))
    if decode:
        wanted = keys.tolist() if image_keys is None else [int(k) for k in image_keys]
        for key in progress(wanted, desc="decoding records", unit="img"):
            try:
                _, payload = reader.read_unpacked(key)
                decode_image(payload, True, reader.where(key, reader.offset_of(key)))
            except DataError as exc:
                note(str(exc))
    return bad, shown


def verify_split_data(dataset, decode: bool = False, max_report: int = 10) -> tuple[int, list[str]]:
    """:func:`verify_rec` for a RecordDataset (its whole .idx, its image keys decoded with
    ``decode``), :func:`verify_list_images` for a ListDataset when ``decode`` (existence is checked
    when the split is built); ``(0, [])`` otherwise."""
    from facelt.data.rec_dataset import RecordDataset
    if isinstance(dataset, RecordDataset):
        return verify_rec(dataset.prefix, dataset.keys, decode, max_report)
    if isinstance(dataset, ListDataset) and decode:
        return verify_list_images(dataset.image_list, dataset.root, dataset.channels, max_report)
    return 0, []
