"""A PyTorch dataset over MXNet RecordIO image files (insightface layout or plain im2rec).

Images are decoded with OpenCV.  ``cv2.imdecode`` returns BGR; with ``rgb=True`` (the default)
the channels are converted to RGB, with ``rgb=False`` they stay BGR (as insightface's MXNet
models were trained).  Pixels become a float CHW tensor ``(x / 255 - 0.5) / 0.5`` in [-1, 1].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
import torch
import torch.utils.data

from facelt.data.decode import imdecode
from facelt.data.recordio import RecordReader, read_insightface
from facelt.errors import DataError

PathLike = Union[str, os.PathLike]


def decode_image(payload: bytes, rgb: bool = True, where: str = "record",
                 channels: int = 3) -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 uint8 array (RGB when ``rgb``, else BGR), or with
    ``channels=1`` to an HxWx1 grey one (a colour image is converted, as a grey model needs)."""
    if channels not in (1, 3):
        raise DataError(f"{where}: channels must be 1 (grey) or 3 (colour), got {channels!r}")
    flags = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = imdecode(payload, flags, where)  # the declared size is checked before decoding
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


def draw_flip(train: bool, flip: bool) -> bool:
    """Whether a training item is mirrored: one draw from torch's RNG when ``train and flip``
    (none otherwise). torch's RNG is re-seeded per DataLoader worker (numpy's is not), so draws
    differ across workers."""
    return train and flip and bool(torch.rand(()) < 0.5)


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
        return to_tensor(image, draw_flip(self.train, self.flip)), int(self.labels[index]), int(index)
