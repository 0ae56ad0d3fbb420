"""Image transforms of the OLTR reference code, scaled to any input size and channel count.

Train: RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(brightness 0.4, contrast 0.4,
saturation 0.4, hue 0) + ToTensor + Normalize.  Test: Resize(round(size * 256 / 224)) +
CenterCrop(size) + ToTensor + Normalize (the 256/224 ratio of the ImageNet recipe).  One-channel
(grayscale) images skip the saturation jitter, which has no meaning for them.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torchvision import transforms as T

from facelt.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)


def eval_resize(image_size: int) -> int:
    """Short-side size before the centre crop: ``round(image_size * 256 / 224)``."""
    return int(round(image_size * 256 / 224))


def build_transforms(image_size: int, channels: int, train: bool,
                     mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None) -> T.Compose:
    """The reference train or test pipeline for ``channels``-channel PIL images of any size.

    ``mean``/``std`` default to the ImageNet statistics for 3 channels and 0.5/0.5 for 1 channel.
    The input image must already be in the matching PIL mode ("RGB" or "L"; the datasets in
    :mod:`facelt.data.images` convert it).
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if int(image_size) != image_size or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if channels == 3 else GRAY_MEAN)
    std = tuple(std) if std is not None else (IMAGENET_STD if channels == 3 else GRAY_STD)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean {mean} and std {std} need {channels} value(s) each for "
                          f"{channels}-channel images")
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be positive, got {std}")
    normalize = T.Normalize(mean=mean, std=std)
    if train:
        jitter = T.ColorJitter(brightness=0.4, contrast=0.4,
                               saturation=0.4 if channels == 3 else 0.0, hue=0.0)
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), jitter,
                          T.ToTensor(), normalize])
    return T.Compose([T.Resize(eval_resize(image_size)), T.CenterCrop(image_size),
                      T.ToTensor(), normalize])
