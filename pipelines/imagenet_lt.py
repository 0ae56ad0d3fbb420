"""ImageNet-LT (Liu et al., CVPR 2019): 1,000 classes, 115.8K train images, 1280..5 a class.

Where things are expected (the CLI flags ``--data-root``, ``--splits``, ``--open-root``):

* ``--data-root``: the ImageNet (ILSVRC-2012) root holding ``train/<wnid>/<file>.JPEG`` and
  ``val/<wnid>/<file>.JPEG`` (val sorted into wnid folders, as the public lists' paths say).
* ``--splits``: the folder of ``ImageNet_LT_{train,val,test,open}.txt``.  ``val`` (20 a class) is
  drawn from ImageNet *train* images, ``test`` (50 a class) from ILSVRC-2012 val, ``open``
  (18,000 lines, label -1) from ILSVRC-2010 val: paths like ``ILSVRC2010_val_00017130.JPEG``.
* ``--open-root``: the folder holding those ILSVRC-2010 val images; by default
  ``<splits>/ImageNet_LT_open`` (the OLTR reference's layout).

``ImageNet_LT_train.txt`` (115,846 lines) is published with the OLTR release and in
classifier-balancing's repository (``data/ImageNet_LT/ImageNet_LT_train.txt``, git blob
a063f095fcd475db4cf8b0658c4b73955535bbf9); facelt does not ship it.  With the file,
:func:`use_official_train_list` (``facelt prepare --dataset imagenet_lt --train-list FILE``) checks
it by its git blob hash and copies it: the split every published number is on.

Fallback, *not the official split*: :func:`prepare_imagenet_lt` rebuilds a train list from the
ImageNet train folder with the paper's recipe (Pareto, alpha = 6, 1,280..5 a class, 115,846
images; the exact rule is in :mod:`facelt.data.longtail`).  For these numbers the curve's shape
exponent is p = 1.029 (the plain Pareto rescale, p = 1, would give 121,946 images) and the shot
buckets (many > 100 / medium 20..100 / few < 20) are 381 / 466 / 153 classes.  Identical to the
released file: class count, total, max and min, label order, the 20 val images a class drawn from
unused train images.  Not identical: which images are drawn and which class gets which count
(counts here fall with label order), so results on it are not comparable with published numbers
(``facelt check`` says which split a recipe uses).

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
from facelt.utils.io import write_json

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
    rebuild_hint=("ImageNet_LT_train.txt is not shipped: take the official file (OLTR release; "
                  "classifier-balancing's data/ImageNet_LT/ImageNet_LT_train.txt) with facelt "
                  "prepare --dataset imagenet_lt --train-list FILE --out SPLITS, or, not the "
                  "official split, rebuild one from the ImageNet train folder with facelt prepare "
                  "--dataset imagenet_lt --source <imagenet>/train --out SPLITS --splits SPLITS "
                  "(pipelines.imagenet_lt.prepare_imagenet_lt; Pareto alpha=6, 1280..5 a class, "
                  "115,846 images)"),
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
    notes = ["train and val are drawn from ImageNet train images; test/open are the public lists",
             "NOT the official ImageNet_LT_train.txt (facelt prepare --train-list takes that "
             "file): not comparable with published numbers"]
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


def use_official_train_list(train_list: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Take the official ``ImageNet_LT_train.txt``: check it by its git blob hash
    (:data:`pipelines.official_splits.OFFICIAL_LISTS`), parse it, copy it byte for byte to
    ``out_dir/ImageNet_LT_train.txt`` and write ``manifest.json`` (``split: official``); val, test
    and open are the official lists shipped with facelt. A file with another hash is refused
    (:class:`DataError` saying what it is not and what to do)."""
    from facelt.data.lists import list_file_bytes
    from facelt.utils.io import atomic_path
    from pipelines.official_splits import OFFICIAL_LISTS, recognise_list
    name = SPEC.list_files["train"]
    sha, found = recognise_list(train_list)
    if found is None or (found.benchmark, found.split) != (SPEC.name, "train"):
        official = next(h for h, o in OFFICIAL_LISTS.items()
                        if (o.benchmark, o.split) == (SPEC.name, "train"))
        what = f"it is the official {found.file_name}" if found else "it matches no published list"
        raise DataError(f"{train_list}: not the official {name} (git blob {sha}; the official "
                        f"file's is {official}, {OFFICIAL_LISTS[official].lines:,} lines; {what}). "
                        f"Train on it anyway with --set data.train={train_list} (not the official "
                        f"split), or run prepare without --train-list to rebuild one")
    lst = read_list(train_list)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / name
    with atomic_path(dest) as tmp:
        Path(tmp).write_bytes(list_file_bytes(train_list))
    counts = lst.class_counts()
    manifest = {"benchmark": SPEC.name, "split": "official", "source": str(train_list),
                "git_blob": sha, "images": len(lst), "classes": int((counts > 0).sum()),
                "notes": [f"{name}: the published list (OLTR release), recognised by its git blob "
                          "hash; val/test/open: the official lists shipped with facelt "
                          "(pipelines/splits)"]}
    write_json(out / "manifest.json", manifest)
    return {"train": dest, "manifest": out / "manifest.json", "split": "official"}
