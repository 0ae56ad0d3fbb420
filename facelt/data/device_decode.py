"""JPEG records decoded a batch at a time on a device, with :class:`RecordDataset`'s transform.

The CPU pipeline decodes every image in a loader worker (OpenCV) and ships float tensors. Here the
workers only read the records: :class:`EncodedRecordDataset` yields each JPEG's bytes (and the
flip it draws exactly as :class:`RecordDataset` draws it), :func:`collate_encoded` keeps them as a
list, and :func:`decode_batch` decodes the whole list in one ``torchvision.io.decode_jpeg`` call on
``device`` (nvJPEG on CUDA, libjpeg-turbo on the CPU), then applies RecordDataset's transform
there: RGB (or BGR, or grey), horizontal flip, ``x / 127.5 - 1``. A record that is not a JPEG
(insightface recs may hold PNGs) is decoded by the worker with OpenCV, as RecordDataset does, and
slotted into the batch.

    ds = EncodedRecordDataset(prefix, train=True)
    loader = make_loader(ds, batch, workers, sampler=..., drop_last=True)   # collate_fn below
    for x, labels, index in decoded_batches(loader, device):               # x on ``device``
        ...

On the CPU the pixels are those of RecordDataset (both decoders are libjpeg-turbo with its
default integer IDCT; ``tests/test_device_decode.py``); nvJPEG may differ by a level or so, which
``benchmarks/gpu_check.py`` measures. The trainer does not use this module yet (it reads
RecordDataset's float batches).
"""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from facelt.data.rec_dataset import RecordDataset, decode_image, draw_flip
from facelt.errors import DataError

JPEG_MAGIC = b"\xff\xd8"


def is_jpeg(payload: bytes) -> bool:
    """Whether encoded image bytes start with the JPEG start-of-image marker."""
    return payload[:2] == JPEG_MAGIC


class EncodedItem(NamedTuple):
    """One record: ``data`` is the JPEG's bytes (1-d uint8) when ``jpeg``, else the image
    already decoded on the CPU (CxHxW uint8, unflipped)."""

    data: torch.Tensor
    jpeg: bool
    label: int
    index: int
    flip: bool


class EncodedBatch(NamedTuple):
    """A batch of :class:`EncodedItem` (what :func:`collate_encoded` returns)."""

    data: list[torch.Tensor]
    jpeg: torch.Tensor       # (B,) bool
    labels: torch.Tensor     # (B,) int64
    indices: torch.Tensor    # (B,) int64
    flips: torch.Tensor      # (B,) bool


class EncodedRecordDataset(RecordDataset):
    """:class:`RecordDataset` whose items are :class:`EncodedItem` (bytes, not pixels).

    The flip is drawn in the worker from torch's RNG exactly as RecordDataset draws it, so the
    same sampler, seed and workers give the same flips and, decoded, the same batches."""

    def __getitem__(self, index: int) -> EncodedItem:
        key = int(self.keys[index])
        _, payload = self.reader.read_unpacked(key)
        flip = draw_flip(self.train, self.flip)
        label = int(self.labels[index])
        if is_jpeg(payload):
            data = torch.from_numpy(np.frombuffer(payload, np.uint8).copy())
            return EncodedItem(data, True, label, int(index), flip)
        where = self.reader.where(key, self.reader.offset_of(key))
        image = decode_image(payload, self.rgb, where, self.channels)
        data = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return EncodedItem(data, False, label, int(index), flip)


def collate_encoded(items: Sequence[EncodedItem]) -> EncodedBatch:
    """The DataLoader ``collate_fn`` for :class:`EncodedRecordDataset` (payloads stay a list)."""
    return EncodedBatch([it.data for it in items],
                        torch.tensor([it.jpeg for it in items], dtype=torch.bool),
                        torch.tensor([it.label for it in items], dtype=torch.int64),
                        torch.tensor([it.index for it in items], dtype=torch.int64),
                        torch.tensor([it.flip for it in items], dtype=torch.bool))


def decode_jpegs(payloads: list[torch.Tensor], device: torch.device | str,
                 channels: int = 3) -> list[torch.Tensor]:
    """Decode JPEG byte tensors in one ``torchvision.io.decode_jpeg`` call on ``device``: a list
    of CxHxW uint8 tensors there (RGB for ``channels=3``, grey for 1)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    if not payloads:
        return []
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    device = torch.device(device)
    out = decode_jpeg(list(payloads), mode=mode, device=device)
    return list(out)


def decode_batch(batch: EncodedBatch, device: torch.device | str, rgb: bool = True,
                 channels: int = 3, where: str = "batch") -> torch.Tensor:
    """The batch's images as RecordDataset gives them, ``(B, C, H, W)`` float32 in [-1, 1] on
    ``device``: JPEGs decoded there in one call, the others (decoded by the worker) copied;
    channels RGB (BGR when not ``rgb``), flipped where ``batch.flips``."""
    device = torch.device(device)
    jpeg = batch.jpeg.tolist()
    decoded = iter(decode_jpegs([d for d, j in zip(batch.data, jpeg) if j], device, channels))
    images = []
    for d, j in zip(batch.data, jpeg):
        if j:
            x = next(decoded)
            if channels == 3 and not rgb:
                x = x.flip(0)                      # RGB -> BGR, as cv2 returns it
        else:
            x = d.to(device, non_blocking=True)    # already in the dataset's channel order
        images.append(x)
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images of different sizes {sorted(shapes)} cannot form one "
                        "batch (the rec's images must share one size)")
    x = torch.stack(images)
    flips = batch.flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
    x = torch.where(flips, x.flip(3), x)
    return x.float().div_(127.5).sub_(1.0)


def decoded_batches(loader: Iterable[EncodedBatch], device: torch.device | str
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x on device, labels, indices)`` per batch of a loader over an
    :class:`EncodedRecordDataset` (built with ``collate_fn=collate_encoded``): the triples the
    CPU loader yields, decoded on ``device``."""
    ds = loader.dataset
    for i, batch in enumerate(loader):
        yield (decode_batch(batch, device, ds.rgb, ds.channels, where=f"{ds.prefix} batch {i}"),
               batch.labels, batch.indices)


__all__ = ["EncodedItem", "EncodedBatch", "EncodedRecordDataset", "collate_encoded", "is_jpeg",
           "decode_jpegs", "decode_batch", "decoded_batches"]
