"""The public OLTR split lists shipped with facelt (gzip-compressed package data).

``Places_LT_{train,val,test,open}.txt.gz`` and ``ImageNet_LT_{val,test,open}.txt.gz``; see README.md
in this folder for their provenance.  :func:`facelt.data.lists.read_list` reads them as the plain
``.txt`` files, and :func:`facelt.data.lists.resolve_list_file` finds ``NAME.txt.gz`` for ``NAME.txt``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

#: The folder of the shipped lists.
PACKAGED_SPLITS_DIR = Path(__file__).resolve().parent

#: Recipes (``Config.name``) whose public lists are shipped here.
BENCHMARKS_WITH_SPLITS = {"places_lt": "Places_LT", "imagenet_lt": "ImageNet_LT"}


def packaged_splits_dir(recipe_name: str) -> Optional[Path]:
    """The shipped split folder for recipe ``recipe_name`` (``places_lt``, ``imagenet_lt``), else None."""
    prefix = BENCHMARKS_WITH_SPLITS.get(recipe_name)
    if prefix is None or not any(PACKAGED_SPLITS_DIR.glob(f"{prefix}_*.txt.gz")):
        return None
    return PACKAGED_SPLITS_DIR
