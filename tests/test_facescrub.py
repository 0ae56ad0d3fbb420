"""FaceScrub probe lists: gender from the actor / actress lists, rows the evaluation reads."""
from __future__ import annotations

import csv

import pytest

from eval_megaface.facescrub import read_facescrub_names, write_probe_list
from eval_megaface.probes import read_probe_list
from facelt.cli import main
from facelt.errors import DataError

HEADER = "name\timage_id\tface_id\turl\tbbox\tsha256\n"


def _tree(tmp_path):
    for ident, n in (("Aaron_Eckhart", 3), ("Adrienne_Barbeau", 2), ("Nobody_Known", 1)):
        (tmp_path / "fs" / ident).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "fs" / ident / f"{ident}_{i}.png").write_bytes(b"x")
    (tmp_path / "fs" / "Aaron_Eckhart" / "notes.txt").write_text("not an image")
    (tmp_path / "actors.txt").write_text(HEADER + "Aaron Eckhart\t1\t1\thttp://a\t1,2,3,4\tab\n")
    (tmp_path / "actresses.txt").write_text(HEADER + "Adrienne Barbeau\t2\t2\thttp://b\t1,2,3,4\tcd\n")


def test_probe_list_has_gender_from_the_lists(tmp_path, capsys):
    _tree(tmp_path)
    assert main(["megaface-probes", "--root", str(tmp_path / "fs"), "--actors",
                 str(tmp_path / "actors.txt"), "--actresses", str(tmp_path / "actresses.txt"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["gender"] for r in rows] == ["male"] * 3 + ["female"] * 2 + ["unknown"]
    assert rows[0]["path"] == "Aaron_Eckhart/Aaron_Eckhart_0.png"
    probes = read_probe_list(tmp_path / "p.csv")
    assert probes.identities.tolist() == [0, 0, 0, 1, 1, 2]
    assert probes.attributes["gender"][3] == "female"


def test_facescrub_list_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("who\twhat\n")
    with pytest.raises(DataError, match="bad.txt, line 1"):
        read_facescrub_names(tmp_path / "bad.txt")
    _tree(tmp_path)
    with pytest.raises(DataError, match="both"):
        write_probe_list(tmp_path / "fs", tmp_path / "actors.txt", tmp_path / "actors.txt",
                         tmp_path / "p.csv")
