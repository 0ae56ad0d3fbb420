"""`facelt check`: a recipe's data validated before training (files, labels, statistics)."""
from __future__ import annotations

import json
import shutil

from facelt.cli import main
from tests.conftest import ROOT, demo_overrides


def _args(data):
    return ["check", "--config", str(ROOT / "configs" / "demo_list.yaml"),
            *[a for o in demo_overrides(data) for a in ("--set", o)]]


def test_check_reports_the_splits(demo_data, capsys):
    assert main(_args(demo_data) + ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["num_classes"] == 6
    assert rep["test"] == {"images": 36, "classes": 6, "per_class": [6, 6]}
    assert rep["open"] == {"images": 12}
    assert sum(rep["train"]["shots"].values()) == 6


def test_check_names_missing_files_and_bad_open_labels(demo_data, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(demo_data, data)
    (data / "images" / "test" / "id002" / "0001.png").unlink()
    assert main(_args(data)) == 2
    err = capsys.readouterr().err
    assert "images/test/id002/0001.png" in err and "demo_test.txt" in err
    shutil.copy(demo_data / "images" / "test" / "id002" / "0001.png",
                data / "images" / "test" / "id002" / "0001.png")
    lst = data / "demo_open.txt"
    lst.write_text(lst.read_text().replace(" -1\n", " 3\n", 1))
    assert main(_args(data)) == 2
    assert "open split" in capsys.readouterr().err
