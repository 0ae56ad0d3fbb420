"""IJB 1:N: closed-set rank-k and NIST open-set TPIR@FPIR worked by hand (ties included), the
layout's errors, the CLI's JSON.

Scores are chosen exactly: gallery templates are one-hot unit vectors, each probe template is
(a_1, .., a_G, slack) / 16 with integer a_j, the slack a four-square remainder so that the probe
has norm exactly 1.  Its cosine with gallery template j is then exactly a_j / 16 (no rounding), so
ties are real ties.  Every score below is written in sixteenths.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from facelt.cli import main
from facelt.errors import DataError
from facelt.faces.ijb import ijb_paths, read_meta
from facelt.faces.ijb_1n import (evaluate_ijb_1n, ijb_1n_paths, nist_threshold, open_set_figures,
                                 probes_per_block, rank_rates, read_1n_lists, search_1n)


def four_squares(r: int) -> tuple[int, int, int, int]:
    for w in range(17):
        for x in range(w + 1):
            for y in range(x + 1):
                for z in range(y + 1):
                    if w * w + x * x + y * y + z * z == r:
                        return w, x, y, z
    raise AssertionError(r)


def probe_vector(scores, dim) -> np.ndarray:
    """(scores..., zeros..., slack) / 16 with norm exactly 1."""
    a = list(scores)
    rest = 256 - sum(v * v for v in a)
    assert rest >= 0, scores
    v = np.zeros(dim + 4)
    v[:len(a)] = a
    v[dim:] = four_squares(rest)
    return v / 16


# ---------------------------------------------------------------------------- the layout
# Subjects 1, 2 are enrolled in G1 (templates 101, 102), subjects 3, 4 in G2 (201, 202).
# Probe templates 1..10 are of subjects 1, 2 (G1's mated searches, G2's non-mated ones),
# 11..20 of subjects 3, 4.  Scores against (101, 102, 201, 202), in sixteenths:
GALLERY = [(101, 1, "G1"), (102, 2, "G1"), (201, 3, "G2"), (202, 4, "G2")]
PROBES = [
    #  id subj  scores            G1: mate first? > thr      union rank   G2 top (non-mated)
    (1, 1, (12, 3, 2, 0)),     # first, 12 > 8: hit        1            2
    (2, 1, (9, 2, 10, 1)),     # first, 9 > 8: hit         2 (201 = 10) 10
    (3, 1, (8, 1, 7, 0)),      # first, 8 = thr: miss      1            7
    (4, 1, (6, 6, 7, 0)),      # tied with 102: not first  3 (102, 201) 7
    (5, 1, (5, 4, 5, 3)),      # first, 5 < 8: miss        2 (201 tied) 5
    (6, 2, (2, 11, 4, 0)),     # first, 11: hit            1            4
    (7, 2, (3, 10, 3, 1)),     # first, 10: hit            1            3
    (8, 2, (7, 4, 2, 1)),      # 101 beats the mate        2            2
    (9, 2, (0, 9, 1, 0)),      # first, 9: hit             1            1
    (10, 2, (1, 13, 0, 0)),    # first, 13: hit            1            0
    #                             G2: first? > 10 / > 7     union rank   G1 top (non-mated)
    (11, 3, (8, 0, 12, 1)),    # first: hit / hit          1            8
    (12, 3, (2, 8, 8, 0)),     # first: miss / hit         2 (102 tied) 8
    (13, 3, (6, 0, 7, 7)),     # tied with 202: no / no    2            6
    (14, 3, (5, 1, 11, 9)),    # first: hit / hit          1            5
    (15, 3, (4, 0, 10, 2)),    # first: 10 = thr miss/hit  1            4
    (16, 4, (3, 0, 1, 9)),     # first: miss / hit         1            3
    (17, 4, (0, 2, 9, 6)),     # 201 beats the mate        2            2
    (18, 4, (2, 1, 0, 7)),     # first: 7 = thr: no / no   1            2
    (19, 4, (1, 0, 2, 14)),    # first: hit / hit          1            1
    (20, 4, (0, 0, 3, 4)),     # first, low: no / no       1            0
]
# G1: N = 10 non-mated searches (probes 11..20), top scores 8 8 6 5 4 3 2 2 1 0.
#   FPIR 0.01: floor(0.1) + 1 = 1st highest = 8;  FPIR 0.1: floor(1) + 1 = 2nd highest = 8 (a tie
#   with the 1st).  Achieved FPIR: none of them is strictly above 8 -> 0.0 at both.
#   TPIR: probes 1, 2, 6, 7, 9, 10 -> 6 / 10 at both.
# G2: N = 10 (probes 1..10), top scores 10 7 7 5 4 3 2 2 1 0.
#   FPIR 0.01: 1st highest = 10, achieved 0 / 10;  FPIR 0.1: 2nd highest = 7 (tied with the 3rd),
#   achieved 1 / 10 (only the 10 is above).
#   TPIR at 0.01 (> 10): probes 11, 14, 19 -> 3 / 10;  at 0.1 (> 7): 11, 12, 14, 15, 16, 19 -> 6 / 10.
# Mean TPIR: (0.6 + 0.3) / 2 = 0.45 at 0.01, (0.6 + 0.6) / 2 = 0.6 at 0.1.
# Closed set on G1 + G2: ranks 1 2 1 3 2 1 1 2 1 1 | 1 2 2 1 1 1 2 1 1 1 -> rank-1 = 13 / 20;
#   with 4 gallery templates every mate is within rank 5 and 10.
EXPECTED_TPIR = {"G1": {"0.01": 0.6, "0.1": 0.6}, "G2": {"0.01": 0.3, "0.1": 0.6},
                 "mean": {"0.01": 0.45, "0.1": 0.6}}
EXPECTED_FPIR = {"G1": {"0.01": 0.0, "0.1": 0.0}, "G2": {"0.01": 0.0, "0.1": 0.1}}
EXPECTED_THR = {"G1": {"0.01": 0.5, "0.1": 0.5}, "G2": {"0.01": 10 / 16, "0.1": 7 / 16}}
DIM = 4


def write_1n(root, target="ijbc", probes=PROBES, gallery=GALLERY, extra_probe_lines="",
             extra_gallery_lines=("", ""), pairs=False):
    """The 1:1 image files and the three 1:N lists; returns the raw image features.

    Template 101 has two media: media 1 = image (1, 1), media 2 = images (1, -2) and (1, 0), mean
    (1, -1); template = sum of media = (2, 0) -> L2 = e_1.  (A plain mean of its images would be
    (1, -1/3), off the axis.)  Every other template has one image, its vector, score 1."""
    rows = []  # name, template, media, feature, score
    width = DIM + 4
    for t, _, _ in gallery:
        e = np.zeros(width)
        e[[g[0] for g in gallery].index(t)] = 1.0
        if t == 101:
            rows += [(f"{t}_a.jpg", t, 1, e + np.eye(width)[1], 1.0),
                     (f"{t}_b.jpg", t, 2, e - 2 * np.eye(width)[1], 1.0),
                     (f"{t}_c.jpg", t, 2, e, 1.0)]
        else:
            rows.append((f"{t}.jpg", t, 1, e, 1.0))
    for t, _, s in probes:
        rows.append((f"p{t}.jpg", t, 1, probe_vector(s, DIM), 1.0))
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / f"{target}_name_5pts_score.txt").write_text(
        "".join(f"{n} " + " ".join(["50.0"] * 10) + f" {sc}\n" for n, _, _, _, sc in rows))
    (meta / f"{target}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _, _ in rows))
    if pairs:
        (meta / f"{target}_template_pair_label.txt").write_text("101 1 1\n101 11 0\n201 11 1\n")
    names = ("S1", "S2") if target == "ijbb" else ("G1", "G2")
    subj = {t: s for t, s, _ in gallery} | {t: s for t, s, _ in probes}
    for k, (gname, extra) in enumerate(zip(names, extra_gallery_lines)):
        body = "".join(f"{t},{subj[t]},{n}\n" for n, t, _, _, _ in rows
                       if any(t == g[0] and g[2] == f"G{k + 1}" for g in gallery))
        (meta / f"{target}_1N_gallery_{gname}.csv").write_text(
            "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + body + extra)
    body = "".join(f"{t},{subj[t]},{n}\n" for n, t, _, _, _ in rows if t in {p[0] for p in probes})
    (meta / f"{target}_1N_probe_mixed.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n" + body + extra_probe_lines)
    return np.stack([f for _, _, _, f, _ in rows]).astype(np.float32)


def evaluate(root, feats, target="IJBC", **kw):
    meta = read_meta(ijb_paths(root, target, pairs=False))
    lists = read_1n_lists(ijb_1n_paths(root, target))
    return evaluate_ijb_1n(feats, meta, lists, **kw)


def assert_hand_figures(report):
    assert report["rank1"] == pytest.approx(13 / 20, abs=1e-12)
    assert report["rank5"] == 1.0 and report["rank10"] == 1.0
    for g in ("G1", "G2", "mean"):
        for k in ("0.01", "0.1"):
            assert report["tpir_at_fpir"][g][k] == pytest.approx(EXPECTED_TPIR[g][k], abs=1e-12), (g, k)
    for g in ("G1", "G2"):
        for k in ("0.01", "0.1"):
            assert report["achieved_fpir"][g][k] == pytest.approx(EXPECTED_FPIR[g][k], abs=1e-12)
            assert report["threshold"][g][k] == pytest.approx(EXPECTED_THR[g][k], abs=1e-12)


def test_hand_computed_figures_with_ties(tmp_path):
    feats = write_1n(tmp_path)
    report, result = evaluate(tmp_path, feats)
    assert report["probes"] == 20 and report["gallery_templates"] == 4
    assert report["galleries"]["G1"] == {"file": "ijbc_1N_gallery_G1.csv", "templates": 2,
                                         "mated": 10, "non_mated": 10}
    assert_hand_figures(report)
    # ties count against the probe: probe 4 (mate 101 tied with 102 at 6, 201 above) ranks 3
    assert result.rank.tolist() == [1, 2, 1, 3, 2, 1, 1, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 1, 1, 1]
    # candidates of probe 1: 101 (12), 102 (3), 201 (2), 202 (0), as gallery positions
    assert result.candidates[0].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(result.candidate_scores[0], np.array([12, 3, 2, 0]) / 16)


def test_blocks_of_one_probe_give_the_same_figures(tmp_path):
    feats = write_1n(tmp_path)
    assert probes_per_block(4, block_bytes=1) == 1
    report, _ = evaluate(tmp_path, feats, block_bytes=1)
    assert_hand_figures(report)
    report, _ = evaluate(tmp_path, feats, block_bytes=3 * 17 * 4)  # 3 probes a block
    assert_hand_figures(report)


def test_ranks_5_and_10_with_a_tie_at_the_boundary():
    # 12 gallery templates (one-hot), G1 = the first 6, G2 = the last 6
    part = np.repeat([0, 1], 6)
    gallery = np.eye(12, 16)
    probes = np.stack([
        probe_vector([5, 6, 6, 6, 6, 5], 12),       # mate 0: 4 above + 1 tied -> rank 6
        probe_vector([3] + [4] * 9, 12),            # mate 0: 9 above -> rank 10
        probe_vector([1] + [2] * 10, 12),           # mate 0: 10 above -> rank 11
        probe_vector([0] * 6 + [10], 12),           # mate 6: alone -> rank 1
    ])
    r = search_1n(probes, gallery, part, np.array([0, 0, 0, 6]))
    assert r.rank.tolist() == [6, 10, 11, 1]
    assert rank_rates(r.rank) == {"rank1": 0.25, "rank5": 0.25, "rank10": 0.75}
    # the candidate list: the 10 best, ties in gallery order
    assert r.candidates[0, :6].tolist() == [1, 2, 3, 4, 0, 5]


def test_nist_threshold_by_hand():
    tops = np.arange(25, dtype=float)  # 24 highest .. 0
    assert nist_threshold(tops, 0.01) == 24.0   # floor(0.25) + 1 = 1st highest
    assert nist_threshold(tops, 0.1) == 22.0    # floor(2.5) + 1 = 3rd highest
    tops = np.arange(100, dtype=float)
    assert nist_threshold(tops, 0.01) == 98.0   # floor(1) + 1 = 2nd highest (exact decimal)
    assert nist_threshold(np.arange(30.0), 0.1) == 26.0  # floor(3) + 1 = 4th highest
    assert nist_threshold(np.array([]), 0.1) is None       # 1 > N = 0: no threshold


def test_no_non_mated_searches_every_search_passes():
    # G1 = templates 0, 1; G2 = template 2; both probes are of template 0's subject
    #   probe a: (8, 4, 2) -> mate first in G1;  probe b: (4, 4, 1) -> tied with 1: not first
    # G1: N = 0 non-mated -> no threshold, TPIR = 1/2 (a), achieved FPIR undefined.
    # G2: no mated searches -> TPIR undefined; its non-mated tops 2, 1 (N = 2):
    #   floor(0.02) + 1 = floor(0.2) + 1 = 1st highest = 2/16 -> achieved FPIR 0.
    probes = np.stack([probe_vector([8, 4, 2], 3), probe_vector([4, 4, 1], 3)])
    r = search_1n(probes, np.eye(3, 7), np.array([0, 0, 1]), np.array([0, 0]))
    f = open_set_figures(r)
    assert f["G1"]["0.1"].threshold is None and f["G1"]["0.1"].tpir == 0.5
    assert f["G1"]["0.01"].achieved_fpir is None
    assert f["G2"]["0.1"].tpir is None and f["G2"]["0.1"].threshold == 0.125
    assert f["G2"]["0.1"].achieved_fpir == 0.0
    assert f["mean"] == {"0.01": None, "0.1": None}


# ------------------------------------------------------------------------------- errors

def test_probe_subject_in_neither_gallery(tmp_path):
    feats = write_1n(tmp_path, extra_probe_lines="21,9,x.jpg\n")
    with pytest.raises(DataError, match=r"ijbc_1N_probe_mixed.csv line 22: probe template 21 is "
                                        r"of subject 9, who is in neither gallery"):
        evaluate(tmp_path, feats)


def test_gallery_template_listed_twice(tmp_path):
    # in both galleries
    feats = write_1n(tmp_path, extra_gallery_lines=("", "101,1,again.jpg\n"))
    with pytest.raises(DataError, match=r"template 101 is listed twice: in .*ijbc_1N_gallery_G1.csv "
                                        r"line 2 and in .*ijbc_1N_gallery_G2.csv line 4"):
        evaluate(tmp_path, feats)
    # in a gallery and among the probes
    feats = write_1n(tmp_path, extra_probe_lines="201,3,x.jpg\n")
    with pytest.raises(DataError, match=r"template 201 is listed twice"):
        evaluate(tmp_path, feats)
    # one template, two subjects
    feats = write_1n(tmp_path, extra_gallery_lines=("101,2,x.jpg\n", ""))
    with pytest.raises(DataError, match=r"G1.csv line 6: template 101 has subject 2, but subject 1 "
                                        r"at line 2"):
        evaluate(tmp_path, feats)
    # one subject enrolled by two gallery templates
    feats = write_1n(tmp_path, extra_gallery_lines=("", "203,1,x.jpg\n"))
    with pytest.raises(DataError, match=r"subject 1 is enrolled twice: template 101 \(.*G1.csv line "
                                        r"2\) and template 203 \(.*G2.csv line 4\)"):
        evaluate(tmp_path, feats)


def test_missing_files(tmp_path):
    write_1n(tmp_path)
    (tmp_path / "meta" / "ijbc_1N_gallery_G2.csv").unlink()
    with pytest.raises(DataError, match=r"meta/ijbc_1N_gallery_G2.csv not found"):
        ijb_1n_paths(tmp_path, "IJBC")
    with pytest.raises(DataError, match=r"meta/ijbb_1N_gallery_S1.csv not found"):
        ijb_1n_paths(tmp_path, "IJBB")


def test_ijbb_names_its_galleries_s1_s2(tmp_path):
    feats = write_1n(tmp_path, target="ijbb")
    report, _ = evaluate(tmp_path, feats, target="IJBB")
    assert report["galleries"]["G2"]["file"] == "ijbb_1N_gallery_S2.csv"
    assert_hand_figures(report)


@pytest.mark.parametrize("line, message", [
    ("101\n", r"G1.csv line 6: '101': expected at least 2 comma-separated fields"),
    ("1x1,1,a.jpg\n", r"G1.csv line 6: '1x1,1,a.jpg': template id and subject id must be integers"),
])
def test_malformed_csv_lines(tmp_path, line, message):
    feats = write_1n(tmp_path, extra_gallery_lines=(line, ""))
    with pytest.raises(DataError, match=message):
        evaluate(tmp_path, feats)


def test_csv_without_header(tmp_path):
    feats = write_1n(tmp_path)
    g1 = tmp_path / "meta" / "ijbc_1N_gallery_G1.csv"
    g1.write_text(g1.read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match=r"G1.csv line 1: .* is data, but the file must start with "
                                        r"a header line"):
        evaluate(tmp_path, feats)


def test_templates_without_features(tmp_path):
    feats = write_1n(tmp_path)
    probe = tmp_path / "meta" / "ijbc_1N_probe_mixed.csv"
    probe.write_text(probe.read_text() + "99,4,nowhere.jpg\n")
    with pytest.raises(DataError, match=r"probe_mixed.csv line 22: template 99 has no images in "
                                        r"face_tid_mid"):
        evaluate(tmp_path, feats)


def test_non_finite_features(tmp_path):
    feats = write_1n(tmp_path)
    feats[9, 2] = np.nan  # rows 0-5: the gallery images; row 9: probe 4's image p4.jpg
    with pytest.raises(DataError, match=r"the image features: row 9 \(image p4.jpg, template 4\) "
                                        r"holds non-finite values"):
        evaluate(tmp_path, feats)


# ---------------------------------------------------------------------------------- CLI

def test_cli_1n_json_and_reports(tmp_path, capsys):
    feats = write_1n(tmp_path)  # no 1:1 pair file: not needed for 1:N
    f = tmp_path / "f.npy"
    np.save(f, feats)
    out = tmp_path / "rep"
    args = ["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f)]
    assert main(args + ["--protocol", "1n", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    # 4 gallery / 20 probe templates are not the published IJB-C lists: said on stderr
    assert "differ from the published IJB-C ones" in captured.err
    assert {"rank1", "rank5", "rank10", "tpir_at_fpir"} <= set(got)
    assert set(got["tpir_at_fpir"]) == {"G1", "G2", "mean"}
    assert all(list(got["tpir_at_fpir"][g]) == ["0.01", "0.1"] for g in ("G1", "G2", "mean"))
    assert_hand_figures(got)
    for name in ("report_1n.json", "report_1n.md", "candidates_1n.npz"):
        assert (out / name).is_file()
    c = np.load(out / "candidates_1n.npz")
    assert c["probe_templates"][0] == 1 and c["candidate_templates"][0].tolist() == [101, 102, 201, 202]
    assert c["mate_rank"].tolist()[:4] == [1, 2, 1, 3]
    # text: the achieved FPIR beside each TPIR
    assert main(args + ["--protocol", "1n"]) == 0
    text = capsys.readouterr().out
    assert "rank-1 65.00%" in text
    assert "open set G2: TPIR@FPIR=0.01: 30.00% (achieved FPIR 0.0000)  TPIR@FPIR=0.1: 60.00% " \
           "(achieved FPIR 0.1000)" in text
    # the default stays 1:1, which needs the pair file
    assert main(args) == 2
    assert "ijbc_template_pair_label.txt not found" in capsys.readouterr().err


def test_cli_both_and_errors(tmp_path, capsys):
    feats = write_1n(tmp_path, pairs=True)
    f = tmp_path / "f.npy"
    np.save(f, feats)
    args = ["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f), "--json"]
    assert main(args + ["--protocol", "both"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"target", "11", "1n"}
    assert got["11"]["pairs"] == 3 and "tar_at_far" in got["11"]
    assert_hand_figures(got["1n"])
    assert main(args) == 0  # default: 1:1 only, as before
    assert "rank1" not in json.loads(capsys.readouterr().out)
    probe = tmp_path / "meta" / "ijbc_1N_probe_mixed.csv"
    probe.write_text(probe.read_text() + "21,7,x.jpg\n")
    assert main(args + ["--protocol", "1n"]) == 2
    assert "subject 7, who is in neither gallery" in capsys.readouterr().err
