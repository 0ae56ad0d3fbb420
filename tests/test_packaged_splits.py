"""The public OLTR lists shipped in pipelines/splits (.txt.gz) and the recipes that use them."""
from __future__ import annotations

import argparse
import gzip
import lzma
from pathlib import Path

import numpy as np
import pytest

from facelt.cli.common import config_from_args
from facelt.config import load_config
from facelt.data.build import split_location
from facelt.data.lists import read_list, resolve_list_file
from facelt.errors import DataError
from pipelines.splits import PACKAGED_SPLITS_DIR, packaged_splits_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["Places_LT_train", "Places_LT_val", "Places_LT_test", "Places_LT_open",
           "ImageNet_LT_val", "ImageNet_LT_test", "ImageNet_LT_open"]


def test_every_public_list_is_shipped_with_its_readme():
    for name in SHIPPED:
        assert (PACKAGED_SPLITS_DIR / f"{name}.txt.gz").is_file(), name
    assert "shared/data/oltr_splits" in (PACKAGED_SPLITS_DIR / "README.md").read_text()
    assert 'pipelines.splits" = ["*.txt.gz"' in (ROOT / "pyproject.toml").read_text()


def test_compressed_lists_read_identically(tmp_path):
    text = "train/a b/1.jpg 0\n# comment\n\nval/x.jpg 2\nopen/y.jpg -1\n"
    (tmp_path / "l.txt").write_text(text)
    (tmp_path / "g.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "x.txt.xz").write_bytes(lzma.compress(text.encode()))
    plain = read_list(tmp_path / "l.txt")
    for other in (read_list(tmp_path / "g.txt.gz"), read_list(tmp_path / "x.txt.xz"),
                  read_list(tmp_path / "g.txt")):          # NAME.txt finds NAME.txt.gz
        assert other.items == ["train/a b/1.jpg", "val/x.jpg", "open/y.jpg"] == plain.items
        np.testing.assert_array_equal(other.labels, [0, 2, -1])
        np.testing.assert_array_equal(other.line_numbers, plain.line_numbers)


def test_shipped_list_matches_its_decompressed_text():
    raw = gzip.decompress((PACKAGED_SPLITS_DIR / "Places_LT_open.txt.gz").read_bytes()).decode()
    lines = [ln.rsplit(None, 1) for ln in raw.splitlines() if ln.strip()]
    lst = read_list(PACKAGED_SPLITS_DIR / "Places_LT_open.txt")
    assert lst.items == [a for a, _ in lines] and len(lst) == 6_600
    assert lst.path.name == "Places_LT_open.txt.gz"


def test_damaged_gzip_list_is_a_clear_error(tmp_path):
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.txt.gz"):
        read_list(tmp_path / "bad.txt.gz")


def test_resolve_list_file_prefers_the_plain_file(tmp_path):
    (tmp_path / "a.txt").write_text("x 0\n")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"y 1\n"))
    assert resolve_list_file(tmp_path / "a.txt") == tmp_path / "a.txt"
    assert resolve_list_file(tmp_path / "none.txt") == tmp_path / "none.txt"


@pytest.mark.parametrize("dataset,first_test", [("places_lt", "Places_LT_test.txt.gz"),
                                                ("imagenet_lt", "ImageNet_LT_test.txt.gz")])
def test_dataset_recipe_reads_the_shipped_lists(dataset, first_test):
    args = argparse.Namespace(dataset=dataset, config=None, overrides=[], data_root="/images")
    cfg = config_from_args(args)
    assert Path(cfg.data.splits_dir) == PACKAGED_SPLITS_DIR
    assert split_location(cfg.data, "test") == PACKAGED_SPLITS_DIR / first_test
    # a splits_dir the user gives wins
    args.overrides = ["data.splits_dir=/my/splits"]
    assert config_from_args(args).data.splits_dir == "/my/splits"
    # the plain yaml says nothing of the shipped folder (it is the CLI's default)
    assert load_config(ROOT / "configs" / f"{dataset}.yaml").data.splits_dir == ""


def test_only_known_benchmarks_have_shipped_lists():
    assert packaged_splits_dir("places_lt") == PACKAGED_SPLITS_DIR
    assert packaged_splits_dir("demo") is None
