"""Issue 19, item 7: the official OLTR split lists are recognised by their git blob hashes;
``prepare --train-list`` takes the official ImageNet_LT_train.txt; ``check`` says which split.

The hashes are checked against ``git hash-object`` itself (an independent implementation) and
against the blob ids of facebookresearch/classifier-balancing's tree (``git ls-tree`` of its
``data/``, written out here): ImageNet_LT_train.txt a063f095..., ImageNet_LT_val.txt 3ed3188b...,
ImageNet_LT_test.txt 76a2fb97..., Places_LT_train.txt 6392252f..., Places_LT_val.txt b93a2ca5...,
Places_LT_test.txt e732e58b.... The ImageNet-LT train list cannot be shipped: recognition is
tested with a file whose hash the test computes with git and registers.
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from facelt.cli import main
from facelt.utils.fingerprint import git_blob_sha1
from pipelines import official_splits
from pipelines.official_splits import OFFICIAL_LISTS, OfficialList, split_provenance

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "pipelines" / "splits"

CLASSIFIER_BALANCING_BLOBS = {
    ("ImageNet_LT", "train"): "a063f095fcd475db4cf8b0658c4b73955535bbf9",
    ("ImageNet_LT", "val"): "3ed3188b2f44829ce2dec1cc27040d8d40984088",
    ("ImageNet_LT", "test"): "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
    ("Places_LT", "train"): "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636",
    ("Places_LT", "val"): "b93a2ca58ccb7f3b671c176f395a70bf52c95533",
    ("Places_LT", "test"): "e732e58b8aa718a2c1c11933375f5710652c2b93",
}


def git_hash_object(data: bytes) -> str:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    return subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True,
                          check=True).stdout.decode().strip()


def test_blob_hash_is_gits():
    for data in (b"", b"a b\n", bytes(range(256)) * 7):
        assert git_blob_sha1(data) == git_hash_object(data)


def test_the_published_blobs_are_known():
    for (bench, split), sha in CLASSIFIER_BALANCING_BLOBS.items():
        assert (OFFICIAL_LISTS[sha].benchmark, OFFICIAL_LISTS[sha].split) == (bench, split)
    assert OFFICIAL_LISTS["a063f095fcd475db4cf8b0658c4b73955535bbf9"].lines == 115_846


@pytest.mark.parametrize("path", sorted(SPLITS.glob("*.txt.gz")), ids=lambda p: p.name)
def test_every_shipped_list_is_the_published_file(path):
    data = gzip.decompress(path.read_bytes())
    found = OFFICIAL_LISTS[git_hash_object(data)]
    assert found.file_name + ".gz" == path.name
    assert found.lines == data.count(b"\n")


def _tiny_imagenet_lt(tmp: Path, monkeypatch) -> tuple[Path, Path]:
    """A stand-in benchmark named imagenet_lt: 2 classes, images on disk, four lists, all four
    registered as the 'official' ImageNet-LT lists by their git hashes (computed with git)."""
    root = tmp / "imagenet"
    lists = tmp / "lists"
    lists.mkdir()
    import numpy as np
    from PIL import Image
    rows = {"train": [("train/n01/a.JPEG", 0), ("train/n01/b.JPEG", 0), ("train/n02/c.JPEG", 1)],
            "val": [("train/n01/v.JPEG", 0), ("train/n02/w.JPEG", 1)],
            "test": [("val/n01/t.JPEG", 0), ("val/n02/u.JPEG", 1)],
            "open": [("o1.JPEG", -1)]}
    table = dict(OFFICIAL_LISTS)
    for split, items in rows.items():
        for rel, _ in items:
            p = (tmp / "open" if split == "open" else root) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(p, format="JPEG")
        text = "".join(f"{rel} {lab}\n" for rel, lab in items).encode()
        (lists / f"ImageNet_LT_{split}.txt").write_bytes(text)
        table[git_hash_object(text)] = OfficialList("ImageNet_LT", split, len(items))
    monkeypatch.setattr(official_splits, "OFFICIAL_LISTS", table)
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"name: imagenet_lt\ndata:\n  root: {root}\n  open_root: {tmp / 'open'}\n"
                   f"  splits_dir: {lists}\n  train: ImageNet_LT_train.txt\n"
                   "  val: ImageNet_LT_val.txt\n  test: ImageNet_LT_test.txt\n"
                   "  open: ImageNet_LT_open.txt\n  num_classes: 2\n  num_workers: 0\n")
    return cfg, lists


def test_check_says_official_or_rebuilt(tmp_path, monkeypatch, capsys):
    cfg, lists = _tiny_imagenet_lt(tmp_path, monkeypatch)
    assert main(["check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "split: official split (ImageNet_LT: train, val, test, open" in out
    # one byte more in the train list: rebuilt, and said so
    train = lists / "ImageNet_LT_train.txt"
    train.write_bytes(train.read_bytes() + b"train/n02/c.JPEG 1\n")
    assert main(["check", "--config", str(cfg), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"]["official"] is False
    assert rep["split"]["verdict"] == ("not the official split (rebuilt): not comparable with "
                                       "published numbers")
    assert [s for s, e in rep["split"]["lists"].items() if not e["official"]] == ["train"]
    assert main(["check", "--config", str(cfg)]) == 0
    assert ("split: not the official split (rebuilt): not comparable with published numbers; not "
            "the published ImageNet_LT lists: train (ImageNet_LT_train.txt") in capsys.readouterr().out


def test_prepare_takes_the_official_train_list(tmp_path, monkeypatch, capsys):
    cfg, lists = _tiny_imagenet_lt(tmp_path, monkeypatch)
    official = lists / "ImageNet_LT_train.txt"
    out = tmp_path / "prepared"
    assert main(["prepare", "--dataset", "imagenet_lt", "--train-list", str(official),
                 "--out", str(out)]) == 0                      # no --source needed
    assert (out / "ImageNet_LT_train.txt").read_bytes() == official.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == "official" and manifest["git_blob"] == git_hash_object(
        official.read_bytes()) and manifest["images"] == 3
    # a copy with a changed line is refused, naming both hashes
    other = tmp_path / "mine.txt"
    other.write_bytes(official.read_bytes().replace(b"b.JPEG", b"x.JPEG"))
    capsys.readouterr()
    assert main(["prepare", "--dataset", "imagenet_lt", "--train-list", str(other),
                 "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert "not the official ImageNet_LT_train.txt" in err and git_hash_object(
        other.read_bytes()) in err
    # the official val list given as a train list: refused too, saying what it is
    assert main(["prepare", "--dataset", "imagenet_lt", "--train-list",
                 str(lists / "ImageNet_LT_val.txt"), "--out", str(tmp_path / "p3")]) == 2
    assert "it is the official ImageNet_LT_val.txt" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "places_lt", "--train-list", str(official),
                 "--out", str(tmp_path / "p4")]) == 2


def test_shipped_places_lists_are_the_official_split(monkeypatch):
    from facelt.config import load_config
    from pipelines.splits import PACKAGED_SPLITS_DIR
    cfg = load_config(ROOT / "configs" / "places_lt.yaml", [f"data.splits_dir={PACKAGED_SPLITS_DIR}"])
    prov = split_provenance(cfg)
    assert prov["official"] and prov["verdict"] == "official split"
    assert set(prov["lists"]) == {"train", "val", "test", "open"}
    # ImageNet-LT without its train list (not shipped) is not the official split
    cfg = load_config(ROOT / "configs" / "imagenet_lt.yaml",
                      [f"data.splits_dir={PACKAGED_SPLITS_DIR}"])
    prov = split_provenance(cfg)
    assert not prov["official"] and "train" not in prov["lists"]
    assert all(e["official"] for e in prov["lists"].values())   # val/test/open are


def test_a_rebuilt_list_says_so_in_its_manifest(tmp_path):
    from facelt.data.longtail import BenchmarkSpec, LongTailRecipe, prepare_longtail
    spec = BenchmarkSpec("Tiny_LT", 4, {"train": "Tiny_LT_train.txt", "val": "Tiny_LT_val.txt",
                                        "test": "Tiny_LT_test.txt", "open": "Tiny_LT_open.txt"},
                         "Tiny_LT_open")
    index = {f"n{k:02d}": [f"{k}_{i}.JPEG" for i in range(12)] for k in range(4)}
    prepare_longtail(spec, tmp_path / "train", tmp_path / "out", class_order=sorted(index),
                     recipe=LongTailRecipe(max_count=8, min_count=2, alpha=6.0, total=16, n_val=1),
                     index=index)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["split"].startswith("rebuilt") and "not the official split" in manifest["split"]
