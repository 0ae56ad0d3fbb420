"""Image datasets over an OLTR list or a plain list of paths.

Items come back as ``(tensor, label, index)``; the index lets evaluation code write per-item outputs
(features, predictions) in list order whatever the sampler did.  Images are decoded with PIL and
converted to "RGB" (``channels=3``) or "L" (``channels=1``) before the transform.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from facelt.data.decode import check_decoded_size, declared_image_size
from facelt.data.lists import OPEN_LABEL, ImageList
from facelt.errors import DataError

Transform = Callable[[Image.Image], torch.Tensor]
_MODES = {1: "L", 3: "RGB"}


def pil_mode(channels: int) -> str:
    """PIL mode for a channel count: 1 -> "L", 3 -> "RGB"."""
    try:
        return _MODES[channels]
    except KeyError:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}") from None


def load_image(path: str | os.PathLike, mode: str, where: str) -> Image.Image:
    """Decode ``path`` into a PIL image of ``mode``; ``where`` names the list entry for errors."""
    name = f"image {path} ({where})"
    try:
        with open(path, "rb") as fh:
            try:
                w, h = declared_image_size(fh, name)
            except DataError:
                raise DataError(f"{name} cannot be decoded: unrecognised or damaged image "
                                "header") from None
            check_decoded_size(w, h, name)  # before PIL allocates what the header declares
            with Image.open(fh) as img:
                return img.convert(mode)
    except FileNotFoundError:
        raise DataError(f"image {path} ({where}) does not exist") from None
    except IsADirectoryError:
        raise DataError(f"image {path} ({where}) is a folder, not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"image {path} ({where}) cannot be decoded: {e}") from None


def _apply(transform: Optional[Transform], img: Image.Image) -> torch.Tensor:
    return transform(img) if transform is not None else TF.to_tensor(img)


class ListDataset(Dataset):
    """Images of an :class:`ImageList` under ``root``; item ``i`` -> ``(tensor, label, i)``.

    Without a transform the image becomes a float tensor in [0, 1] (``ToTensor``).
    """

    def __init__(self, image_list: ImageList, root: str | os.PathLike,
                 transform: Optional[Transform] = None, channels: int = 3) -> None:
        self.image_list = image_list
        self.root = Path(root)
        self.transform = transform
        self.channels = channels
        self.mode = pil_mode(channels)

    def __len__(self) -> int:
        return len(self.image_list)

    @property
    def labels(self) -> np.ndarray:
        """int64 labels of all items (for samplers); -1 marks open-set images."""
        return self.image_list.labels

    def path(self, index: int) -> Path:
        return self.root / self.image_list.items[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        where = f"list entry {index}, {self.image_list.line_of(index)}"
        img = load_image(self.path(index), self.mode, where)
        return _apply(self.transform, img), int(self.image_list.labels[index]), index


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def find_images(folder: str | os.PathLike,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, case-insensitive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a directory")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


class FolderImages(Dataset):
    """Arbitrary image files to classify; item ``i`` -> ``(tensor, -1, i)``."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Optional[Transform] = None,
                 channels: int = 3) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.channels = channels
        self.mode = pil_mode(channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        img = load_image(self.paths[index], self.mode, f"input {index}")
        return _apply(self.transform, img), OPEN_LABEL, index
