"""OLTR list files: parsing, errors, writing, existence checks, class statistics."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from facelt.data.lists import ImageList, check_files_exist, list_stats, read_list, write_list
from facelt.errors import DataError
from pipelines.splits import PACKAGED_SPLITS_DIR

SPLITS = PACKAGED_SPLITS_DIR  # the public lists shipped in pipelines/splits (.txt.gz)


def _write(tmp_path: Path, text: str, name: str = "split.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_list_paths_with_spaces_comments_blank_lines_and_open_labels(tmp_path):
    p = _write(tmp_path, "# header comment\n"
                         "train/cat/a.jpg 0\n"
                         "\n"
                         "train/big cat/my photo 1.jpg 2\n"
                         "   # indented comment\n"
                         "train/dog/b.jpg\t1\r\n"
                         "open/x.jpg -1\n")
    lst = read_list(p)
    assert lst.items == ["train/cat/a.jpg", "train/big cat/my photo 1.jpg", "train/dog/b.jpg",
                         "open/x.jpg"]
    assert lst.labels.dtype == np.int64
    assert lst.labels.tolist() == [0, 2, 1, -1]
    assert len(lst) == 4
    assert lst.num_classes == 3
    assert lst.class_counts().tolist() == [1, 1, 1]
    assert lst.class_counts(5).tolist() == [1, 1, 1, 0, 0]
    assert lst.line_numbers.tolist() == [2, 4, 6, 7]
    assert lst.path == p


def test_bad_label_names_file_line_and_expected_format(tmp_path):
    p = _write(tmp_path, "a.jpg 0\n# c\nb.jpg cat\nc.jpg 1\n")
    with pytest.raises(DataError) as e:
        read_list(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3" in msg and "b.jpg cat" in msg
    assert "<path> <integer label>" in msg


def test_one_field_line_names_file_and_line(tmp_path):
    p = _write(tmp_path, "a.jpg 0\n\nlonely_path.jpg\n")
    with pytest.raises(DataError) as e:
        read_list(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3" in msg and "lonely_path.jpg" in msg


@pytest.mark.parametrize("label", ["-2", "1.5", "1_000", "0x1"])
def test_non_oltr_labels_are_rejected(tmp_path, label):
    p = _write(tmp_path, f"a.jpg {label}\n")
    with pytest.raises(DataError, match="line 1"):
        read_list(p)


def test_missing_list_file_is_named(tmp_path):
    p = tmp_path / "nope" / "ImageNet_LT_train.txt"
    with pytest.raises(DataError, match="ImageNet_LT_train.txt"):
        read_list(p)


def test_class_counts_rejects_too_few_classes(tmp_path):
    lst = ImageList(tmp_path / "l.txt", ["a", "b"], np.array([0, 4]))
    assert lst.num_classes == 5
    assert lst.class_counts().tolist() == [1, 0, 0, 0, 1]
    with pytest.raises(DataError):
        lst.class_counts(3)


def test_write_list_round_trips_and_leaves_no_temp_files(tmp_path):
    items = ["train/a b/c.jpg", "x.png", "open/y.jpg"]
    out = tmp_path / "sub" / "out.txt"
    write_list(out, items, [3, 0, -1])
    assert out.read_text() == "train/a b/c.jpg 3\nx.png 0\nopen/y.jpg -1\n"
    back = read_list(out)
    assert back.items == items and back.labels.tolist() == [3, 0, -1]
    assert sorted(q.name for q in out.parent.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("bad", ["trailing.jpg ", "", "a\nb.jpg", "#hidden.jpg"])
def test_write_list_refuses_paths_that_would_not_read_back(tmp_path, bad):
    with pytest.raises(DataError):
        write_list(tmp_path / "o.txt", ["ok.jpg", bad], [0, 1])
    assert not (tmp_path / "o.txt").exists()


def test_check_files_exist_reports_first_missing_and_total(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    present = [f"d/ok{i}.jpg" for i in range(3)]
    for rel in present:
        (root / rel).write_bytes(b"x")
    missing = [f"d/miss{i:02d}.jpg" for i in range(12)]
    lst = ImageList(tmp_path / "l.txt", present + missing, np.zeros(15, dtype=np.int64))
    check_files_exist(ImageList(tmp_path / "l.txt", present, np.zeros(3)), root)  # all there
    with pytest.raises(DataError) as e:
        check_files_exist(lst, root, max_report=10)
    msg = str(e.value)
    assert "12 of 15" in msg and str(root) in msg
    assert all(m in msg for m in missing[:10])
    assert missing[10] not in msg and missing[11] not in msg
    assert "2 more" in msg


def test_list_stats_on_hand_written_counts(tmp_path):
    counts = {0: 101, 1: 100, 2: 20, 3: 19}
    lines = [f"c{c}/{i}.jpg {c}" for c, n in counts.items() for i in range(n)]
    lines += ["open/o1.jpg -1", "open/o2.jpg -1"]
    p = _write(tmp_path, "\n".join(lines) + "\n")
    stats = list_stats(read_list(p))
    assert stats["classes"] == 4
    assert stats["images"] == 242 and stats["open"] == 2
    assert stats["min_per_class"] == 19 and stats["max_per_class"] == 101
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 2, 1)


def test_list_stats_ignores_absent_classes(tmp_path):
    lst = ImageList(tmp_path / "l.txt", ["a", "b", "c"], np.array([0, 0, 7]))
    stats = list_stats(lst, many=1, few=2)
    assert stats["classes"] == 2 and stats["min_per_class"] == 1
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 0, 1)


def test_reading_a_115k_line_list_is_fast(tmp_path):
    n = 115_846  # ImageNet-LT train size
    text = "".join(f"train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG {i % 1000}\n" for i in range(n))
    p = _write(tmp_path, text)
    t0 = time.process_time()
    lst = read_list(p)
    elapsed = time.process_time() - t0
    assert len(lst) == n and lst.num_classes == 1000
    assert elapsed < 1.0, f"read_list took {elapsed:.2f}s CPU for {n} lines"


def test_places_lt_train_published_statistics():
    path = SPLITS / "Places_LT_train.txt"
    stats = list_stats(read_list(path))
    assert stats["classes"] == 365
    assert stats["images"] == 62_500
    assert stats["min_per_class"] == 5 and stats["max_per_class"] == 4_980
    assert (stats["many"], stats["medium"], stats["few"]) == (131, 163, 71)


def test_places_lt_open_list_is_all_open():
    path = SPLITS / "Places_LT_open.txt"
    lst = read_list(path)
    assert len(lst) == 6_600 and lst.num_classes == 0
    assert list_stats(lst)["open"] == 6_600
