"""The public ImageNet-LT / Places-LT split lists against their published statistics, and the
pipelines' path resolution and validation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facelt.data.lists import list_stats, read_list
from facelt.data.longtail import resolve_split_paths, validate_split_paths
from facelt.errors import DataError
from pipelines import imagenet_lt, places_lt
from pipelines.splits import PACKAGED_SPLITS_DIR

SPLITS_DIR = PACKAGED_SPLITS_DIR  # the public lists shipped in pipelines/splits (.txt.gz)



def _per_class(name: str, num_classes: int) -> np.ndarray:
    return read_list(SPLITS_DIR / name).class_counts(num_classes)


# ---------------------------------------------------------------- published statistics

def test_places_lt_train_statistics():
    stats = list_stats(read_list(SPLITS_DIR / "Places_LT_train.txt"))
    assert stats["classes"] == 365 and stats["images"] == 62_500
    assert (stats["min_per_class"], stats["max_per_class"]) == (5, 4980)
    assert (stats["many"], stats["medium"], stats["few"]) == (131, 163, 71)


def test_places_lt_val_test_open():
    assert _per_class("Places_LT_val.txt", 365).tolist() == [20] * 365
    assert _per_class("Places_LT_test.txt", 365).tolist() == [100] * 365
    open_list = read_list(SPLITS_DIR / "Places_LT_open.txt")
    assert len(open_list) == 6_600 and np.all(open_list.labels == -1)


def test_imagenet_lt_val_test_open():
    assert _per_class("ImageNet_LT_val.txt", 1000).tolist() == [20] * 1000
    assert _per_class("ImageNet_LT_test.txt", 1000).tolist() == [50] * 1000
    open_list = read_list(SPLITS_DIR / "ImageNet_LT_open.txt")
    assert len(open_list) == 18_000 and np.all(open_list.labels == -1)
    assert all(p.startswith("ILSVRC2010_val_") and "/" not in p for p in open_list.items)


def test_imagenet_labels_are_sorted_wnids():
    names = imagenet_lt.class_names(SPLITS_DIR)        # raises unless label k = k-th sorted wnid
    assert names == sorted(names) and len(set(names)) == 1000
    assert names[0] == "n01440764" and all(n.startswith("n") and len(n) == 9 for n in names)
    # the val list (ImageNet train images) uses the same wnid for each label
    val = read_list(SPLITS_DIR / "ImageNet_LT_val.txt")
    assert all(p.split("/")[0] == "train" and p.split("/")[1] == names[k]
               for p, k in zip(val.items, val.labels.tolist()))


def test_places_labels_come_from_the_lists_not_sorting():
    names = places_lt.class_names(SPLITS_DIR)
    assert len(names) == 365 and names[0] == "airfield"
    assert names[116:119] == ["desert_road", "desert-sand", "desert-vegetation"]
    assert names != sorted(names)
    for split in ("train", "val"):
        lst = read_list(SPLITS_DIR / f"Places_LT_{split}.txt")
        assert all(p.split("/")[1] == names[k] for p, k in zip(lst.items, lst.labels.tolist()))


def test_specs():
    assert (imagenet_lt.SPEC.num_classes, places_lt.SPEC.num_classes) == (1000, 365)
    for spec in (imagenet_lt.SPEC, places_lt.SPEC):
        assert spec.image_size == 224 and spec.color == "RGB"
    assert imagenet_lt.SPEC.list_files["train"] == "ImageNet_LT_train.txt"
    assert places_lt.SPEC.list_files["open"] == "Places_LT_open.txt"
    r = imagenet_lt.RECIPE
    assert (r.max_count, r.min_count, r.alpha, r.total, r.n_val) == (1280, 5, 6.0, 115_846, 20)
    r = places_lt.RECIPE
    assert (r.max_count, r.min_count, r.alpha, r.total, r.n_val) == (4980, 5, 6.0, 62_500, 20)


# ---------------------------------------------------------------- paths and validation

def test_resolve_paths_defaults_and_override(tmp_path):
    paths = resolve_split_paths(imagenet_lt.SPEC, tmp_path / "imagenet", tmp_path / "lists")
    assert paths["train"] == tmp_path / "lists" / "ImageNet_LT_train.txt"
    assert paths["open"] == tmp_path / "lists" / "ImageNet_LT_open.txt"
    assert paths["root"] == tmp_path / "imagenet"
    assert paths["open_root"] == tmp_path / "lists" / "ImageNet_LT_open"
    paths = resolve_split_paths(places_lt.SPEC, "/data/places365", "/lists", open_root="/data/extra69")
    assert paths["test"] == Path("/lists/Places_LT_test.txt")
    assert paths["open_root"] == Path("/data/extra69")


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _small_benchmark(tmp_path: Path, n_missing: int) -> dict[str, Path]:
    """ImageNet-LT-named lists over 3 classes; the last ``n_missing`` test images are absent."""
    lists, root, open_root = tmp_path / "lists", tmp_path / "imagenet", tmp_path / "open"
    wnids = ["n01440764", "n01443537", "n01484850"]
    files = {
        "train": [f"train/{w}/{w}_{i}.JPEG {k}" for k, w in enumerate(wnids) for i in range(4)],
        "val": [f"train/{w}/{w}_v{i}.JPEG {k}" for k, w in enumerate(wnids) for i in range(2)],
        "test": [f"val/{w}/ILSVRC2012_val_{k:04d}{i:04d}.JPEG {k}" for k, w in enumerate(wnids)
                 for i in range(6)],
        "open": [f"ILSVRC2010_val_{i:08d}.JPEG -1" for i in range(3)],
    }
    for split, lines in files.items():
        _write(lists / f"ImageNet_LT_{split}.txt", lines)
        base = open_root if split == "open" else root
        keep = lines[:len(lines) - n_missing] if split == "test" else lines
        for line in keep:
            p = base / line.split()[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    return resolve_split_paths(imagenet_lt.SPEC, root, lists, open_root=open_root)


def test_validate_passes_when_everything_exists(tmp_path):
    lists = validate_split_paths(imagenet_lt.SPEC, _small_benchmark(tmp_path, 0))
    assert {k: len(v) for k, v in lists.items()} == {"train": 12, "val": 6, "test": 18, "open": 3}


def test_validate_reports_count_and_first_missing(tmp_path):
    paths = _small_benchmark(tmp_path, 13)
    with pytest.raises(DataError) as err:
        validate_split_paths(imagenet_lt.SPEC, paths, max_report=10)
    msg = str(err.value)
    assert "13 of 39 listed images are missing" in msg
    assert "... and 3 more" in msg
    # the first missing one is test line 6 (18 lines, the last 13 absent), named with its root
    first = paths["root"] / "val" / "n01440764" / "ILSVRC2012_val_00000005.JPEG"
    assert f"{first} ({paths['test']} line 6)" in msg
    assert msg.count("ILSVRC2012_val_") == 10


def test_validate_names_missing_list_and_how_to_rebuild(tmp_path):
    paths = _small_benchmark(tmp_path, 0)
    paths["train"].unlink()
    with pytest.raises(DataError, match=r"(?s)ImageNet_LT_train\.txt.*prepare_imagenet_lt"):
        validate_split_paths(imagenet_lt.SPEC, paths)


def test_validate_rejects_bad_labels(tmp_path):
    paths = _small_benchmark(tmp_path, 0)
    _write(paths["open"], ["ILSVRC2010_val_00000000.JPEG 3"])
    with pytest.raises(DataError, match=r"line 1.*label 3.*label -1"):
        validate_split_paths(imagenet_lt.SPEC, paths)
    _write(paths["open"], ["ILSVRC2010_val_00000000.JPEG -1"])
    _write(paths["val"], ["train/n01440764/x.JPEG 1000"])
    with pytest.raises(DataError, match=r"label 1000.*0\.\.999"):
        validate_split_paths(imagenet_lt.SPEC, paths)


def test_validate_public_lists_against_an_empty_root(tmp_path):
    paths = resolve_split_paths(places_lt.SPEC, tmp_path / "places365", SPLITS_DIR, open_root=tmp_path / "x69")
    with pytest.raises(DataError) as err:
        validate_split_paths(places_lt.SPEC, paths, max_report=3)
    msg = str(err.value)
    total = 62_500 + 7_300 + 36_500 + 6_600
    assert f"{total} of {total} listed images are missing" in msg
    assert f"{tmp_path / 'places365' / 'train' / 'airfield' / '00004851.jpg'}" in msg
    assert f"and {total - 3} more" in msg
