"""Places-LT (Liu et al., CVPR 2019): 365 classes, 62,500 train images, 4,980..5 a class.

Where things are expected (the CLI flags ``--data-root``, ``--splits``, ``--open-root``):

* ``--data-root``: the Places365-Standard root in its "easy format" (``train/<category>/<file>``
  and ``val/<category>/Places365_val_<n>.jpg``; nested categories spelled with '-', e.g.
  ``train/desert-sand/``), as the public lists' paths say.
* ``--splits``: the folder of ``Places_LT_{train,val,test,open}.txt`` (all four are public).
  ``val`` (20 a class) comes from Places365 *train* images, ``test`` (100 a class) from Places365
  val, ``open`` (6,600 lines, label -1) from Places-Extra69: paths like
  ``3941_extra_test_00000042.jpg``.
* ``--open-root``: the folder holding the Places-Extra69 test images; by default
  ``<splits>/Places_LT_open`` (the OLTR reference's layout).

Labels: the class of label k is the folder of label k in the public lists.  This order is *not*
sorted folder names (``desert_road`` is 116, ``desert-sand`` 117, ``field-wild`` 142 after
``field_road``), so it is read from the lists, never derived.  Input: 224 x 224 RGB.

The benchmark needs nothing prepared: the four official lists ship with facelt.
:func:`prepare_places_lt` (``facelt prepare --dataset places_lt``) is for something else: it draws
a NEW long tail (other seeds, ablations; not the official split, not comparable with published
numbers) with the paper's parameters
(Pareto alpha = 6, 4,980..5 a class, 62,500 images; the rule is in :mod:`facelt.data.longtail`,
here with shape exponent p = 1.958).  It matches the released list's class count, total, max and
min; not its shot buckets: 109 / 114 / 142 classes many / medium / few against the released
131 / 163 / 71, whose counts are no smooth curve (its second-largest class has 2,612 images, the
curve's 3,424).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from facelt.data.lists import read_list, resolve_list_file
from facelt.config import load_config
from facelt.data.longtail import (LongTailRecipe, class_names_from_list, prepare_longtail,
                                  scan_class_folders, spec_from_config)

#: The paper's parameters: Pareto alpha 6, 4,980..5 a class, 62,500 images; 20 val a class.
RECIPE = LongTailRecipe(max_count=4980, min_count=5, alpha=6.0, total=62_500, n_val=20)

#: The recipe that trains it: list file names, classes and input size are said there once.
RECIPE_FILE = Path(__file__).resolve().parents[1] / "configs" / "places_lt.yaml"

SPEC = spec_from_config(
    load_config(RECIPE_FILE).data,
    name="Places_LT",
    open_dir_name="Places_LT_open",
    class_names_from="test",
    class_name_source="category folder of each label in the public Places_LT_test.txt paths",
    recipe=RECIPE,
    rebuild_hint=("Places_LT_train.txt is public (the OLTR release); or draw one with "
                  "pipelines.places_lt.prepare_places_lt(<places365>/train, <splits>, "
                  "splits_dir=<folder with Places_LT_test.txt>)"),
)


def class_names(splits_dir: str | os.PathLike) -> list[str]:
    """The 365 category folders in label order, read from ``Places_LT_test.txt``."""
    lst = read_list(Path(splits_dir) / SPEC.list_files[SPEC.class_names_from])
    return class_names_from_list(lst, SPEC.num_classes)


def prepare_places_lt(source_train_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      seed: int = 0, splits_dir: str | os.PathLike | None = None,
                      class_order: Optional[Sequence[str]] = None, prefix: str = "train",
                      recipe: LongTailRecipe = RECIPE,
                      index: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, Path]:
    """Draw ``Places_LT_train.txt`` and ``Places_LT_val.txt`` (+ ``manifest.json``) afresh.

    ``source_train_dir`` is Places365-Standard's ``train`` folder; list paths are
    ``<prefix>/<category>/<file>``.  Class order: ``class_order``, else the public lists' order
    from ``splits_dir`` (whose val images are then reserved), else sorted folder names (labels
    then differ from the released lists; the manifest says so).
    """
    reserve: list[Path] = []
    notes: list[str] = []
    if class_order is None and splits_dir is not None:
        class_order = class_names(splits_dir)
        notes.append(f"labels follow {Path(splits_dir) / SPEC.list_files['test']}")
    elif class_order is None:
        notes.append("labels follow sorted folder names, NOT the released Places-LT label order")
    if splits_dir is not None:
        public_val = resolve_list_file(Path(splits_dir) / SPEC.list_files["val"])
        if public_val.is_file():
            reserve.append(public_val)
            notes.append(f"images of {public_val} are reserved: the new train and val avoid them")
    if index is None:
        index = scan_class_folders(source_train_dir)
    return prepare_longtail(SPEC, source_train_dir, out_dir, class_order=class_order, seed=seed,
                            prefix=prefix, recipe=recipe, reserve=reserve, index=index,
                            notes=notes)
