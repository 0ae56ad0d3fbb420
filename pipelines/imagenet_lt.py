"""ImageNet-LT (Liu et al., CVPR 2019): 1,000 classes, 115.8K train images, 1280..5 a class.

Where things are expected (the CLI flags ``--data-root``, ``--splits``, ``--open-root``):

* ``--data-root``: the ImageNet (ILSVRC-2012) root holding ``train/<wnid>/<file>.JPEG`` and
  ``val/<wnid>/<file>.JPEG`` (val sorted into wnid folders, as the public lists' paths say).
* ``--splits``: the folder of ``ImageNet_LT_{train,val,test,open}.txt``.  ``val`` (20 a class) is
  drawn from ImageNet *train* images, ``test`` (50 a class) from ILSVRC-2012 val, ``open``
  (18,000 lines, label -1) from ILSVRC-2010 val: paths like ``ILSVRC2010_val_00017130.JPEG``.
* ``--open-root``: the folder holding those ILSVRC-2010 val images; by default
  ``<splits>/ImageNet_LT_open`` (the OLTR reference's layout).

``ImageNet_LT_train.txt`` is not publicly mirrored; :func:`prepare_imagenet_lt` rebuilds one from
the ImageNet train folder with the paper's recipe (Pareto, alpha = 6, 1,280..5 a class, 115,846
images; the exact rule is in :mod:`facelt.data.longtail`).  For these numbers the curve's shape
exponent is p = 1.029 (the plain Pareto rescale, p = 1, would give 121,946 images) and the shot
buckets (many > 100 / medium 20..100 / few < 20) are 381 / 466 / 153 classes.  Identical to the
released file: class count, total, max and min, label order, the 20 val images a class drawn from
unused train images.  Not identical: which images are drawn and which class gets which count (the
authors' draw is unpublished; counts here fall with label order).

Labels: the k-th wnid in sorted order is label k (true of every public ImageNet-LT list).
Input: 224 x 224 RGB.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from facelt.data.lists import read_list, resolve_list_file
from facelt.config import load_config
from facelt.data.longtail import (LongTailRecipe, class_names_from_list, prepare_longtail,
                                  scan_class_folders, spec_from_config)
from facelt.errors import DataError

#: The paper's recipe: Pareto alpha 6, 1,280..5 a class, 115,846 images; 20 val a class.
RECIPE = LongTailRecipe(max_count=1280, min_count=5, alpha=6.0, total=115_846, n_val=20)

#: The recipe that trains it: list file names, classes and input size are said there once.
RECIPE_FILE = Path(__file__).resolve().parents[1] / "configs" / "imagenet_lt.yaml"

SPEC = spec_from_config(
    load_config(RECIPE_FILE).data,
    name="ImageNet_LT",
    open_dir_name="ImageNet_LT_open",
    class_names_from="test",
    class_name_source="sorted wnid folder names of the ImageNet train folder (label k = k-th)",
    recipe=RECIPE,
    rebuild_hint=("ImageNet_LT_train.txt is not public: rebuild it from the ImageNet train folder "
                  "with pipelines.imagenet_lt.prepare_imagenet_lt(<imagenet>/train, <splits>, "
                  "splits_dir=<splits>) (Pareto alpha=6, 1280..5 a class, 115,846 images)"),
)


def check_sorted_wnids(names: Sequence[str], where: str) -> None:
    """Raise unless label k is the k-th wnid in sorted order."""
    expected = sorted(names)
    if list(names) != expected:
        k = next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b)
        raise DataError(f"{where}: label {k} is {names[k]!r} but the {k}-th sorted wnid is "
                        f"{expected[k]!r}; ImageNet-LT labels follow sorted wnid order")


def class_names(splits_dir: str | os.PathLike) -> list[str]:
    """The 1,000 wnids in label order, read from ``ImageNet_LT_test.txt`` (checked sorted)."""
    lst = read_list(Path(splits_dir) / SPEC.list_files[SPEC.class_names_from])
    names = class_names_from_list(lst, SPEC.num_classes)
    check_sorted_wnids(names, str(lst.path))
    return names


def prepare_imagenet_lt(source_train_dir: str | os.PathLike, out_dir: str | os.PathLike,
                        seed: int = 0, splits_dir: str | os.PathLike | None = None,
                        prefix: str = "train", recipe: LongTailRecipe = RECIPE,
                        index: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, Path]:
    """Rebuild ``ImageNet_LT_train.txt`` and ``ImageNet_LT_val.txt`` (+ ``manifest.json``).

    ``source_train_dir`` is ImageNet's ``train`` folder (``<wnid>/<file>.JPEG``); list paths are
    ``<prefix>/<wnid>/<file>``, relative to the ImageNet root.  Labels follow sorted wnids.  With
    ``splits_dir`` the wnid order is checked against its ``ImageNet_LT_test.txt`` and the images of
    its public ``ImageNet_LT_val.txt`` are reserved (never drawn), so the new train list can be used
    with the public val list.  ``index`` (class -> file names) skips listing the folder.
    """
    if index is None:
        index = scan_class_folders(source_train_dir)
    order = sorted(index)
    reserve: list[Path] = []
    notes = ["train and val are drawn from ImageNet train images; test/open are the public lists"]
    if splits_dir is not None:
        published = class_names(splits_dir)
        if order != published:
            absent = sorted(set(published) - set(order))
            extra = sorted(set(order) - set(published))
            raise DataError(f"{source_train_dir}: class folders differ from the wnids of "
                            f"{Path(splits_dir) / SPEC.list_files['test']}: {len(absent)} missing "
                            f"(first {absent[:5]}), {len(extra)} extra (first {extra[:5]})")
        public_val = resolve_list_file(Path(splits_dir) / SPEC.list_files["val"])
        if public_val.is_file():
            reserve.append(public_val)
            notes.append(f"images of {public_val} are reserved: the new train and val avoid them")
    return prepare_longtail(SPEC, source_train_dir, out_dir, class_order=order, seed=seed,
                            prefix=prefix, recipe=recipe, reserve=reserve, index=index,
                            notes=notes)
