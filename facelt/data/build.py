"""Datasets and loaders from a :class:`~facelt.config.DataConfig`.

A split is one of ``train``, ``val``, ``test``, ``open``; it is an OLTR list over an image root
(``format: list``) or a RecordIO prefix in the insightface layout (``format: rec``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facelt.config import DataConfig, StageConfig
from facelt.errors import ConfigError, DataError
from facelt.data.lists import check_files_exist, labels_outside, read_list, resolve_list_file
from facelt.data.images import ListDataset
from facelt.data.transforms import build_transforms
from facelt.data.samplers import ClassAwareSampler, InstanceSampler

SPLITS = ("train", "val", "test", "open")


@dataclass
class Split:
    """A dataset with what the engine needs to know about it."""

    name: str
    dataset: Dataset
    labels: np.ndarray
    items: list[str]
    """Human-readable name of each item (image path or ``prefix#key``) for predictions.csv."""


def check_known_labels(split: Split, what: str, num_classes: int) -> None:
    """Training and validation images need a known class: 0 <= label < num_classes."""
    bad = labels_outside(split.labels, num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{what} split: {bad.size} item(s) have a label outside 0..{num_classes - 1}, "
                        f"first {split.items[i]} (label {int(split.labels[i])}); open-set images "
                        f"(label -1) belong in data.open, not in data.{split.name}")


def split_location(cfg: DataConfig, split: str) -> Optional[Path]:
    value = getattr(cfg, split)
    if not value:
        return None
    p = Path(value)
    base = cfg.splits_dir or (cfg.root if cfg.format == "rec" else "")
    if base and not p.is_absolute():
        p = Path(base) / p
    if cfg.format == "list":
        p = resolve_list_file(p)
    return p


def _root_for(cfg: DataConfig, split: str) -> Path:
    if split == "open" and cfg.open_root:
        return Path(cfg.open_root)
    return Path(cfg.root) if cfg.root else Path(".")


def build_split(cfg: DataConfig, split: str, train: bool, check_files: bool = False
                ) -> Optional[Split]:
    """The dataset of ``split`` with train (augmenting) or test transforms; None if not configured."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    loc = split_location(cfg, split)
    if loc is None:
        return None
    if cfg.format == "list":
        image_list = read_list(loc)
        if len(image_list) == 0:
            raise DataError(f"{image_list.path}: the {split} list (data.{split}) holds no images; "
                            f"expected '<path> <label>' lines" +
                            ("" if split in ("train", "test") else
                             f", or leave data.{split} empty to run without a {split} split"))
        root = _root_for(cfg, split)
        if check_files:
            check_files_exist(image_list, root)
        transform = build_transforms(cfg.image_size, cfg.channels, train=train and cfg.augment,
                                     mean=cfg.mean or None, std=cfg.std or None)
        ds = ListDataset(image_list, root, transform, channels=cfg.channels)
        return Split(split, ds, np.asarray(image_list.labels), list(image_list.items))
    from facelt.data.rec_dataset import RecordDataset
    ds = RecordDataset(str(loc), train=train and cfg.augment, channels=cfg.channels)
    if len(ds) == 0:
        raise DataError(f"{loc}: the {split} rec (data.{split}) holds no images")
    labels = np.asarray(ds.labels, dtype=np.int64)
    items = [f"{loc}#{k}" for k in ds.keys]
    return Split(split, ds, labels, items)


def dataset_source_files(dataset: Dataset) -> tuple[list[Path], list[Path]]:
    """``(data_files, index_files)`` a dataset's images are read from, for
    :func:`facelt.utils.fingerprint.image_source_fingerprint`: a RecordDataset's ``.rec`` and its
    ``.idx`` / ``property``, a ListDataset's image files and its list file, FolderImages' files."""
    from facelt.data.images import FolderImages
    from facelt.data.rec_dataset import RecordDataset
    from facelt.data.recordio import insightface_paths
    if isinstance(dataset, RecordDataset):
        rec, idx, prop = insightface_paths(dataset.prefix)
        return [rec], [idx] + ([prop] if prop.is_file() else [])
    if isinstance(dataset, ListDataset):
        lst = dataset.image_list
        return [dataset.root / item for item in lst.items], [lst.path]
    if isinstance(dataset, FolderImages):
        return list(dataset.paths), []
    raise TypeError(f"no image files known for a {type(dataset).__name__}")


class FaceCropTensor:
    """An aligned face image file as the RecordIO pipeline presents it: RGB, the whole crop (resized
    only when it is not ``size`` x ``size``), scaled to [-1, 1] like ``RecordDataset``."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img) -> torch.Tensor:
        img = img.convert("RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
        return x.div_(127.5).sub_(1.0)


def eval_transform(cfg: DataConfig):
    """The test-time transform for image files, matching what the model was trained on: the list
    pipeline's for list data, the RecordIO face pipeline's for rec data."""
    if cfg.format == "rec":
        return FaceCropTensor(cfg.image_size)
    return build_transforms(cfg.image_size, cfg.channels, train=False,
                            mean=cfg.mean or None, std=cfg.std or None)


def infer_num_classes(cfg: DataConfig, train_labels: np.ndarray) -> int:
    known = train_labels[train_labels >= 0]
    inferred = int(known.max()) + 1 if known.size else 0
    if cfg.num_classes and cfg.num_classes < inferred:
        raise ConfigError(f"data.num_classes = {cfg.num_classes} but the training split has label "
                          f"{inferred - 1}")
    return cfg.num_classes or inferred


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    known = labels[labels >= 0]
    return np.bincount(known, minlength=num_classes)[:num_classes]


def train_sampler(stage: StageConfig, labels: np.ndarray, seed: int, rank: int, world: int
                  ) -> Sampler:
    if stage.sampler == "class_aware":
        return ClassAwareSampler(labels, samples_per_class=stage.samples_per_class, seed=seed,
                                 num_replicas=world, rank=rank)
    return InstanceSampler(len(labels), shuffle=True, seed=seed, num_replicas=world, rank=rank)


def eval_indices(n: int, rank: int, world: int) -> list[int]:
    """Rank's share of ``range(n)`` with no padding, so sums over ranks count each item once."""
    return list(range(rank, n, world))


def fitted_workers(requested: int) -> int:
    """The loader worker processes to start for ``data.num_workers: requested``: at most the CPU
    cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count()``), so a recipe
    tuned for a big machine (ms1m_lt: 8) neither warns nor oversubscribes a small one."""
    import os
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover -- not Linux
        cores = os.cpu_count() or 1
    return max(0, min(int(requested), max(1, cores)))


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, sampler=None,
                drop_last: bool = False, pin: bool = False, persistent: bool = False,
                collate_fn=None) -> DataLoader:
    """``persistent``: keep the worker processes between epochs (the training loader: a new
    epoch then starts without forking and warming ``num_workers`` processes again);
    ``collate_fn``: the loader's default when None (e.g.
    :func:`facelt.data.device_decode.collate_encoded` for encoded records). ``num_workers`` is
    fitted to the cores (:func:`fitted_workers`)."""
    num_workers = fitted_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, drop_last=drop_last, pin_memory=pin,
                      persistent_workers=persistent and num_workers > 0, collate_fn=collate_fn)


def read_class_names(cfg: DataConfig, num_classes: int, train: Optional[Split] = None) -> list[str]:
    """Class names in label order: from ``data.class_names`` (a file, one name a line), or with
    ``@folders`` the folder each class's training images sit in (``train/<wnid>/x.JPEG`` ->
    ``<wnid>``; ImageNet wnids, Places categories), or none."""
    if not cfg.class_names:
        return []
    if cfg.class_names == "@folders":
        return _folder_names(cfg, num_classes, train)
    p = Path(cfg.class_names)
    if not p.is_file():
        raise ConfigError(f"data.class_names: file not found: {p}")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ConfigError(f"data.class_names: {p} has {len(names)} names but there are "
                          f"{num_classes} classes")
    return names


def _folder_names(cfg: DataConfig, num_classes: int, train: Optional[Split]) -> list[str]:
    if cfg.format != "list" or train is None:
        raise ConfigError("data.class_names: '@folders' needs a list-format training split")
    names: list[Optional[str]] = [None] * num_classes
    for item, label in zip(train.items, train.labels.tolist()):
        if label < 0:
            continue
        folder = Path(item).parent.name
        if not folder:
            raise ConfigError(f"data.class_names '@folders': {item} (label {label}) is not in a "
                              f"class folder")
        if names[label] is None:
            names[label] = folder
        elif names[label] != folder:
            raise ConfigError(f"data.class_names '@folders': label {label} has images in both "
                              f"'{names[label]}' and '{folder}'")
    return [n if n is not None else str(k) for k, n in enumerate(names)]
