"""PyTorch datasets over MXNet RecordIO image files (insightface layout or plain im2rec).

Images are decoded with OpenCV.  ``cv2.imdecode`` returns BGR; with ``rgb=True`` (the default)
the channels are converted to RGB, with ``rgb=False`` they stay BGR (as insightface's MXNet
models were trained).  Pixels become a float CHW tensor ``(x / 255 - 0.5) / 0.5`` in [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data

from facelt.data.recordio import (IRHeader, RecordReader, insightface_paths, read_insightface,
                                  unpack)
from facelt.errors import DataError

PathLike = Union[str, os.PathLike]


def decode_image(payload: bytes, rgb: bool = True, where: str = "record",
                 channels: int = 3) -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 uint8 array (RGB when ``rgb``, else BGR), or with
    ``channels=1`` to an HxWx1 grey one (a colour image is converted, as a grey model needs)."""
    if channels not in (1, 3):
        raise DataError(f"{where}: channels must be 1 (grey) or 3 (colour), got {channels!r}")
    flags = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), flags)
    if image is None:
        raise DataError(f"{where}: payload of {len(payload)} bytes is not an image OpenCV can decode")
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if rgb else image


def to_tensor(image: np.ndarray, flip: bool = False) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32 in [-1, 1]; ``flip`` mirrors it horizontally."""
    if flip:
        image = cv2.flip(image, 1)
        if image.ndim == 2:          # OpenCV drops a single channel axis
            image = image[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return tensor.div_(127.5).sub_(1.0)


def _flip_now(train: bool, flip: bool) -> bool:
    # torch's RNG is re-seeded per DataLoader worker (numpy's is not), so draws differ across workers.
    return train and flip and bool(torch.rand(()) < 0.5)


def _label_of(header: IRHeader) -> int:
    value = header.label if isinstance(header.label, float) else header.label[0]
    return int(value)


class RecordDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``PREFIX.rec``/``PREFIX.idx`` (insightface layout or plain).

    Item ``i`` is ``(image, label, i)``: a 3xHxW float tensor in [-1, 1], the identity label and
    the index.  ``labels`` (int64 array) and ``num_classes`` serve class-aware samplers.
    """

    def __init__(self, prefix: PathLike, train: bool, flip: bool = True, rgb: bool = True,
                 channels: int = 3) -> None:
        """``channels``: 3 (colour, RGB or BGR by ``rgb``) or 1 (grey) items, as the model takes."""
        index = read_insightface(prefix)
        self.prefix = Path(prefix)
        self.train, self.flip, self.rgb = bool(train), bool(flip), bool(rgb)
        self.channels = int(channels)
        self.keys: np.ndarray = index.keys
        self.labels: np.ndarray = index.labels
        self.num_classes: int = index.num_classes
        self.ranges: Optional[np.ndarray] = index.ranges
        self.reader = RecordReader(index.rec_path, index.idx_path)

    def __len__(self) -> int:
        return int(self.keys.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        key = int(self.keys[index])
        header, payload = self.reader.read_unpacked(key)
        where = self.reader.where(key, self.reader.offset_of(key))
        image = decode_image(payload, self.rgb, where, self.channels)
        return to_tensor(image, _flip_now(self.train, self.flip)), int(self.labels[index]), int(index)


def _rank_world(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class RecordStream(torch.utils.data.IterableDataset):
    """Sequential pass over a ``.rec`` file (no .idx needed), sharded over ranks and workers.

    Record ``i`` (file order, counting every record) goes to shard ``i % (world * workers)``,
    shard ``rank * workers + worker_id``; rank/world come from the arguments, else from
    ``torch.distributed``, else from the ``RANK``/``WORLD_SIZE`` variables torchrun sets.
    Decoded items are ``(image, label, i)``; records with an empty payload (insightface's record 0
    and identity records) are skipped.  With ``raw=True`` every record of the shard is yielded as
    ``(i, IRHeader, payload)``.
    """

    def __init__(self, rec_path: PathLike, train: bool = False, flip: bool = True, rgb: bool = True,
                 raw: bool = False, rank: Optional[int] = None,
                 world_size: Optional[int] = None) -> None:
        super().__init__()
        path = Path(rec_path)
        self.rec_path = path if path.suffix == ".rec" else insightface_paths(path)[0]
        self.reader = RecordReader(self.rec_path, idx_path=None)
        self.train, self.flip, self.rgb, self.raw = bool(train), bool(flip), bool(rgb), bool(raw)
        self.rank, self.world_size = rank, world_size

    def shard(self) -> tuple[int, int]:
        """(this shard, number of shards) for the calling process and DataLoader worker."""
        rank, world = _rank_world(self.rank, self.world_size)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[tuple]:
        shard, num = self.shard()
        for j, (offset, record) in enumerate(self.reader.scan(shard, num)):
            i = shard + j * num
            where = f"{self.rec_path} (record #{i}, offset {offset})"
            header, payload = unpack(record, where)
            if self.raw:
                yield i, header, payload
            elif payload:
                image = decode_image(payload, self.rgb, where)
                yield to_tensor(image, _flip_now(self.train, self.flip)), _label_of(header), i
