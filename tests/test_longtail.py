"""The Pareto long-tail builder (facelt.data.longtail) and the ImageNet-LT / Places-LT recipes.

Independent facts used: hand-computed quantile curves, ImageNet-LT's published size (115,846
images, 1000 classes, 1280..5 a class) and Places-LT's (62,500, 365 classes, 4980..5).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from facelt.data.longtail import LongTailRecipe, draw_longtail, pareto_counts, scan_class_folders
from facelt.errors import DataError
from pipelines import imagenet_lt, places_lt
from pipelines.splits import PACKAGED_SPLITS_DIR

SPLITS_DIR = PACKAGED_SPLITS_DIR  # the public lists shipped in pipelines/splits (.txt.gz)


def _index(num_classes: int, per_class: int) -> dict[str, list[str]]:
    """A synthetic ImageNet-like class-folder listing (wnid-style names, files in reverse order)."""
    return {f"n{c:08d}": [f"n{c:08d}_{i}.JPEG" for i in reversed(range(per_class))]
            for c in range(num_classes)}


# ---------------------------------------------------------------- the count curve, by hand

def test_curve_hand_computed_alpha1():
    # alpha=1, K=4: u = 0, 1/4, 1/2, 3/4 -> x = 1, 4/3, 2, 4 -> z = 0, 1/9, 1/3, 1
    # n = 10 + 90 z = 10, 20, 40, 100 (exact integers, no rounding needed)
    assert pareto_counts(4, 100, 10, alpha=1.0).tolist() == [100, 40, 20, 10]


def test_curve_two_classes_are_max_and_min():
    assert pareto_counts(2, 1280, 5).tolist() == [1280, 5]


def test_curve_without_total_is_the_rescaled_pareto_quantiles():
    k, alpha = 1000, 6.0
    u = np.arange(k) / k
    x = (1 - u) ** (-1 / alpha)
    z = np.sort((x - 1) / (k ** (1 / alpha) - 1))[::-1]
    real = 5 + 1275 * z
    counts = pareto_counts(k, 1280, 5, alpha=alpha)
    assert np.all(np.abs(counts - real) <= 1.0)
    assert abs(int(counts.sum()) - real.sum()) <= 1.0


def test_imagenet_curve_matches_published_statistics():
    counts = pareto_counts(1000, 1280, 5, alpha=6.0, total=115_846)
    assert counts.size == 1000
    assert counts.max() == 1280 and counts.min() == 5
    assert abs(int(counts.sum()) - 115_846) <= 0.02 * 115_846
    assert np.all(np.diff(counts) <= 0)


def test_places_curve_matches_published_totals():
    counts = pareto_counts(365, 4980, 5, alpha=6.0, total=62_500)
    assert (counts.size, int(counts.sum()), counts.max(), counts.min()) == (365, 62_500, 4980, 5)


def test_unreachable_total_is_an_error():
    with pytest.raises(ValueError, match="not reachable"):
        pareto_counts(10, 100, 5, total=10 * 100)
    with pytest.raises(ValueError, match="not reachable"):
        pareto_counts(10, 100, 5, total=50)


def test_shot_buckets_boundaries():
    # many > 100, medium 20..100 inclusive, few < 20
    from facelt.data.shots import shot_counts
    assert shot_counts([101, 100, 20, 19, 5]) == {"many": 1, "medium": 2, "few": 2}


# ---------------------------------------------------------------- drawing, at full scale

@pytest.fixture(scope="module")
def imagenet_index() -> dict[str, list[str]]:
    return _index(1000, 1300)


def test_imagenet_draw_full_scale(imagenet_index):
    draw = draw_longtail(imagenet_index, sorted(imagenet_index), imagenet_lt.RECIPE, seed=0)
    counts = np.bincount(draw.train_labels, minlength=1000)
    assert counts.size == 1000 and counts.min() == 5 and counts.max() == 1280
    assert abs(len(draw.train) - 115_846) <= 0.02 * 115_846
    assert np.bincount(draw.val_labels).tolist() == [20] * 1000
    assert not set(draw.train) & set(draw.val)
    assert len(set(draw.train)) == len(draw.train)
    # descending order: label 0 (first sorted wnid) gets the largest count, the last the smallest
    assert counts[0] == 1280 and counts[-1] == 5
    # every path is <class of its label>/<file of that class>
    for path, label in zip(draw.train[::997], draw.train_labels[::997]):
        wnid = f"n{int(label):08d}"
        assert path.startswith(wnid + "/" + wnid + "_")


def test_imagenet_draw_is_seeded(imagenet_index):
    order = sorted(imagenet_index)
    a = draw_longtail(imagenet_index, order, imagenet_lt.RECIPE, seed=0)
    b = draw_longtail({k: list(reversed(v)) for k, v in imagenet_index.items()}, order,
                      imagenet_lt.RECIPE, seed=0)
    c = draw_longtail(imagenet_index, order, imagenet_lt.RECIPE, seed=1)
    assert a.train == b.train and a.val == b.val          # listing order does not matter
    assert a.train != c.train and set(a.train) != set(c.train)
    assert a.counts.tolist() == c.counts.tolist()         # the curve itself has no randomness


def test_shuffled_order_permutes_the_counts(imagenet_index):
    recipe = LongTailRecipe(1280, 5, 6.0, 115_846, 20, order="shuffled")
    draw = draw_longtail(imagenet_index, sorted(imagenet_index), recipe, seed=3)
    counts = np.bincount(draw.train_labels, minlength=1000)
    assert sorted(counts.tolist()) == sorted(pareto_counts(1000, 1280, 5, 6.0, 115_846).tolist())
    assert not np.all(np.diff(counts) <= 0)


def test_reserved_images_are_never_drawn():
    index = _index(3, 30)
    reserved = {"n00000000": {f"n00000000_{i}.JPEG" for i in range(10)}}
    recipe = LongTailRecipe(max_count=15, min_count=2, n_val=5)
    draw = draw_longtail(index, sorted(index), recipe, seed=0, reserved=reserved)
    drawn = {p.split("/")[1] for p in draw.train + draw.val if p.startswith("n00000000/")}
    assert len(drawn) == 20 and not drawn & reserved["n00000000"]


def test_too_few_images_names_the_class():
    index = _index(3, 30)
    index["n00000001"] = index["n00000001"][:4]
    with pytest.raises(DataError, match=r"n00000001 \(label 1\): 4 free images"):
        draw_longtail(index, sorted(index), LongTailRecipe(max_count=20, min_count=2, n_val=5))


def test_missing_class_folder_is_an_error():
    with pytest.raises(DataError, match="no folder"):
        draw_longtail(_index(2, 30), ["n00000000", "n99999999"], LongTailRecipe(10, 2, n_val=2))


def test_places_draw_uses_public_order_and_reserves_public_val():
    names = places_lt.class_names(SPLITS_DIR)
    public_val = {}
    for line in gzip.decompress((SPLITS_DIR / "Places_LT_val.txt.gz").read_bytes()).decode().splitlines():
        _, cls, fname = line.split()[0].split("/")
        public_val.setdefault(cls, set()).add(fname)
    # every class: its 20 public val files plus 5,000 synthetic ones
    index = {c: sorted(public_val[c]) + [f"synthetic_{i:05d}.jpg" for i in range(5000)] for c in names}
    draw = draw_longtail(index, names, places_lt.RECIPE, seed=0, reserved=public_val)
    counts = np.bincount(draw.train_labels, minlength=365)
    assert (len(draw.train), counts.max(), counts.min()) == (62_500, 4980, 5)
    assert counts[0] == 4980 and names[0] == "airfield"
    for path in draw.train + draw.val:
        cls, fname = path.split("/")
        assert fname not in public_val[cls]


# ---------------------------------------------------------------- on disk: prepare_imagenet_lt

def _make_tree(root: Path, num_classes: int, per_class: int) -> None:
    for c in range(num_classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            os.close(os.open(d / f"n{c:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))


def test_prepare_imagenet_lt_writes_oltr_lists(tmp_path):
    src = tmp_path / "imagenet" / "train"
    _make_tree(src, 1000, 10)
    (src / "n00000000" / ".DS_Store").touch()        # hidden and non-image files are skipped
    (src / "n00000000" / "notes.txt").touch()
    (src / ".cache").mkdir()
    out = tmp_path / "lists"
    recipe = LongTailRecipe(max_count=8, min_count=1, alpha=6.0, n_val=2)
    paths = imagenet_lt.prepare_imagenet_lt(src, out, seed=5, recipe=recipe)
    assert set(paths) == {"train", "val", "manifest"}
    assert sorted(p.name for p in out.iterdir()) == ["ImageNet_LT_train.txt", "ImageNet_LT_val.txt",
                                                    "manifest.json"]      # no temp files left
    train = [ln.split() for ln in paths["train"].read_text().splitlines()]
    val = [ln.split() for ln in paths["val"].read_text().splitlines()]
    for rel, label in train + val:
        parts = rel.split("/")
        assert parts[0] == "train" and parts[1] == f"n{int(label):08d}"   # label = sorted wnid rank
        assert (src / parts[1] / parts[2]).is_file() and parts[2].endswith(".JPEG")
    labels = np.array([int(lb) for _, lb in train])
    counts = np.bincount(labels, minlength=1000)
    assert counts[0] == 8 and counts[-1] == 1 and counts.size == 1000
    assert np.bincount([int(lb) for _, lb in val]).tolist() == [2] * 1000
    assert not {r for r, _ in train} & {r for r, _ in val}
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["seed"] == 5 and manifest["train_images"] == len(train)
    assert manifest["classes"][0] == {"label": 0, "folder": "n00000000", "train": 8}
    # same seed again: byte-identical files
    again = imagenet_lt.prepare_imagenet_lt(src, tmp_path / "again", seed=5, recipe=recipe)
    assert again["train"].read_bytes() == paths["train"].read_bytes()
    assert again["val"].read_bytes() == paths["val"].read_bytes()


def test_prepare_imagenet_lt_needs_1000_classes(tmp_path):
    src = tmp_path / "train"
    _make_tree(src, 3, 4)
    with pytest.raises(DataError, match="1000 classes but 3"):
        imagenet_lt.prepare_imagenet_lt(src, tmp_path / "out")


def test_scan_rejects_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_class_folders(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_class_folders(tmp_path)


def test_prepare_imagenet_lt_next_to_public_lists(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for name in ("ImageNet_LT_val.txt", "ImageNet_LT_test.txt"):
        (splits / name).write_bytes(gzip.decompress((SPLITS_DIR / f"{name}.gz").read_bytes()))
    public_val = {}
    for line in (splits / "ImageNet_LT_val.txt").read_text().splitlines():
        _, wnid, fname = line.split()[0].split("/")
        public_val.setdefault(wnid, set()).add(fname)
    index = {w: sorted(files) + [f"{w}_synthetic_{i}.JPEG" for i in range(1300)]
             for w, files in public_val.items()}
    before = (splits / "ImageNet_LT_val.txt").read_bytes()
    paths = imagenet_lt.prepare_imagenet_lt(tmp_path / "unused", splits, seed=0, splits_dir=splits,
                                            index=index)
    assert "val" not in paths                                    # the public val list is kept
    assert (splits / "ImageNet_LT_val.txt").read_bytes() == before
    train = [ln.split() for ln in paths["train"].read_text().splitlines()]
    assert len(train) == 115_846
    val_paths = {ln.split()[0] for ln in before.decode().splitlines()}
    assert not val_paths & {p for p, _ in train}
    names = imagenet_lt.class_names(splits)
    assert all(p.split("/")[1] == names[int(k)] for p, k in train[::101])
    manifest = json.loads(paths["manifest"].read_text())
    assert any("kept, not overwritten" in n for n in manifest["notes"])
