"""The published OLTR split lists, known by their git blob hashes, and whether a recipe uses them.

Published numbers on ImageNet-LT and Places-LT are on one split: the list files of the OLTR
release (Liu et al., CVPR 2019), which classifier-balancing (facebookresearch/classifier-balancing,
``data/ImageNet_LT/``, ``data/Places_LT/``) redistributes byte for byte. A list file is recognised
here by its git blob hash (``git hash-object FILE``, of the uncompressed text), so a copy that
differs in one byte, or a list rebuilt with ``facelt prepare``, is "not the official split".

The hashes: the train / val / test lists as they stand in classifier-balancing's git tree; the
open-set lists (in the OLTR release only) and every list shipped with facelt (``pipelines/splits``,
copied from the release) hash to the same values (``tests/test_official_splits.py`` recomputes
them with ``git hash-object``). ``ImageNet_LT_train.txt`` (115,846 lines) is the one list facelt
does not ship: ``facelt prepare --dataset imagenet_lt --train-list FILE`` takes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from facelt.data.lists import list_file_bytes
from facelt.utils.fingerprint import git_blob_sha1

if TYPE_CHECKING:
    from facelt.config import Config

__all__ = ["OfficialList", "OFFICIAL_LISTS", "RECIPE_BENCHMARKS", "OFFICIAL_VERDICT",
           "REBUILT_VERDICT", "recognise_list", "split_provenance", "provenance_line"]


@dataclass(frozen=True)
class OfficialList:
    benchmark: str   # "ImageNet_LT" | "Places_LT"
    split: str       # train | val | test | open
    lines: int

    @property
    def file_name(self) -> str:
        return f"{self.benchmark}_{self.split}.txt"


#: git blob sha1 -> the published list it names
OFFICIAL_LISTS: dict[str, OfficialList] = {
    "a063f095fcd475db4cf8b0658c4b73955535bbf9": OfficialList("ImageNet_LT", "train", 115_846),
    "3ed3188b2f44829ce2dec1cc27040d8d40984088": OfficialList("ImageNet_LT", "val", 20_000),
    "76a2fb9749d6cd29e765cc4f8c270f2504131e2f": OfficialList("ImageNet_LT", "test", 50_000),
    "96c0c951d668ffa740e52c92b5cca54e32ed5f78": OfficialList("ImageNet_LT", "open", 18_000),
    "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636": OfficialList("Places_LT", "train", 62_500),
    "b93a2ca58ccb7f3b671c176f395a70bf52c95533": OfficialList("Places_LT", "val", 7_300),
    "e732e58b8aa718a2c1c11933375f5710652c2b93": OfficialList("Places_LT", "test", 36_500),
    "1310c877eefc697a85c8ba322cc1a38ee454e20b": OfficialList("Places_LT", "open", 6_600),
}

#: recipe ``name`` -> the benchmark whose published split it is meant to train on
RECIPE_BENCHMARKS = {"imagenet_lt": "ImageNet_LT", "places_lt": "Places_LT"}

OFFICIAL_VERDICT = "official split"
REBUILT_VERDICT = "not the official split (rebuilt): not comparable with published numbers"

LIST_SPLITS = ("train", "val", "test", "open")


def recognise_list(path: str | Path) -> tuple[str, Optional[OfficialList]]:
    """``(git blob hash, the published list it is or None)`` of a list file (plain or .gz)."""
    sha = git_blob_sha1(list_file_bytes(path))
    return sha, OFFICIAL_LISTS.get(sha)


def split_provenance(cfg: "Config") -> Optional[dict]:
    """Whether ``cfg``'s list files are the published split of its benchmark: ``{benchmark,
    official, verdict, lists: {split: {file, git_blob, official, as}}}``; None for a recipe of no
    benchmark with a published split (and rec data)."""
    from facelt.data.build import split_location
    if cfg.data.format != "list":
        return None
    lists, benchmark = {}, RECIPE_BENCHMARKS.get(cfg.name)
    for split in LIST_SPLITS:
        loc = split_location(cfg.data, split)
        if loc is None or not loc.is_file():
            continue
        sha, found = recognise_list(loc)
        benchmark = benchmark or (found.benchmark if found else None)
        lists[split] = {"file": str(loc), "git_blob": sha, "as": found.file_name if found else None}
    if benchmark is None:
        return None
    for split, entry in lists.items():
        found = OFFICIAL_LISTS.get(entry["git_blob"])
        entry["official"] = bool(found and (found.benchmark, found.split) == (benchmark, split))
    official = bool(lists) and all(e["official"] for e in lists.values()) and "train" in lists
    return {"benchmark": benchmark, "official": official,
            "verdict": OFFICIAL_VERDICT if official else REBUILT_VERDICT, "lists": lists}


def provenance_line(prov: dict) -> str:
    """``split: official split (ImageNet_LT: train, val, test, open lists)`` or the rebuilt
    verdict naming the lists that are not the published ones."""
    names = ", ".join(prov["lists"])
    if prov["official"]:
        return f"split: {OFFICIAL_VERDICT} ({prov['benchmark']}: {names} are the published lists)"
    other = [f"{s} ({Path(e['file']).name}, git blob {e['git_blob'][:12]})"
             for s, e in prov["lists"].items() if not e["official"]]
    if "train" not in prov["lists"]:
        other.append("train (no list file)")
    return (f"split: {REBUILT_VERDICT}; not the published {prov['benchmark']} lists: "
            + ", ".join(other))
