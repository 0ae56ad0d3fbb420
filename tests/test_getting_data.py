"""Issue 11: each design-card command without its data exits 2 with one message saying what to
get and the next command to run."""
from __future__ import annotations

import pytest

from facelt.cli import main
from facelt.cli import build_parser
from facelt.cli.common import config_from_args
from facelt.data.lists import read_list
from pipelines.getting_data import missing_data_message
from pipelines.splits import PACKAGED_SPLITS_DIR


def _err(argv, capsys) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one message
    return err


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACELT_CONFIGS", raising=False)
    return tmp_path


@pytest.mark.parametrize("argv, words", [
    (["train", "--dataset", "ms1m_lt"],
     ["train.rec", "faces_emore", "insightface", "facelt prepare --dataset ms1m_lt",
      "facelt train --dataset ms1m_lt --data-root"]),
    (["megaface-eval", "--gallery", "1M"],
     ["FaceScrub", "MegaFace", "distractor", "facelt megaface-probes", "facelt extract-features",
      "facelt megaface-eval --gallery 1M --probe-list"]),
    (["classify", "--dataset", "places_lt"],
     ["runs/places_lt/stage2/checkpoint.pt", "Places365", "lists ship with facelt",
      "facelt train --dataset places_lt --data-root", "facelt classify --dataset places_lt"]),
    (["train", "--dataset", "imagenet_lt"],
     ["ImageNet_LT_train.txt", "facelt prepare --dataset imagenet_lt"]),
])
def test_commands_without_data_say_what_to_get(empty_cwd, capsys, argv, words):
    err = _err(argv, capsys)
    for w in words:
        assert w in err, (w, err)
    assert not (empty_cwd / "runs").exists()  # nothing created


def test_present_data_gives_no_message(empty_cwd):
    p = build_parser()
    ms1m = empty_cwd / "faces"
    ms1m.mkdir()
    cfg = config_from_args(p.parse_args(["train", "--dataset", "ms1m_lt", "--data-root", str(ms1m)]))
    assert "train.idx" in missing_data_message(cfg)
    (ms1m / "train.rec").write_bytes(b"")
    assert f"{ms1m / 'train.idx'} not found" in missing_data_message(cfg)
    assert str(ms1m / "train.rec") not in missing_data_message(cfg)
    (ms1m / "train.idx").write_text("")
    assert missing_data_message(cfg) is None

    places = empty_cwd / "places"
    first = read_list(PACKAGED_SPLITS_DIR / "Places_LT_train.txt.gz").items[0]
    cfg = config_from_args(p.parse_args(["train", "--dataset", "places_lt", "--data-root", str(places)]))
    places.mkdir()
    assert "none of the first images" in missing_data_message(cfg)
    (places / first).parent.mkdir(parents=True)
    (places / first).write_bytes(b"x")
    assert missing_data_message(cfg) is None
    # recipes that are no downloaded benchmark are never second-guessed
    cfg = config_from_args(p.parse_args(["train", "--dataset", "demo_faces"]))
    assert missing_data_message(cfg) is None
