"""IJB-B/C 1:1: media / template aggregation and TAR@FAR worked by hand, the layout, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facelt.cli import main
from facelt.errors import DataError
from facelt.faces.ijb import (evaluate_ijb, ijb_paths, iter_pairs, read_meta, roc_points, tar_at_far,
                        template_features)

# image, template, media, raw 2-d feature, detector score
IMAGES = [
    ("a.jpg", 1, 10, (2.0, 0.0), 0.5),
    ("b.jpg", 1, 10, (0.0, 4.0), 0.5),
    ("c.jpg", 1, 11, (3.0, 0.0), 1.0),
    ("d.jpg", 2, 20, (0.0, 1.0), 1.0),
    ("e.jpg", 3, 30, (1.0, 1.0), 0.5),
    ("f.jpg", 3, 31, (1.0, -1.0), 1.0),
    ("g.jpg", 3, 31, (3.0, -3.0), 1.0),
]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 0), (3, 1, 1)]


def write_ijb(root, target="ijbc", order=None, pairs=PAIRS):
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    rows = IMAGES if order is None else [IMAGES[i] for i in order]
    (meta / f"{target}_name_5pts_score.txt").write_text(
        "".join(f"{n} " + " ".join(["50.0"] * 10) + f" {s}\n" for n, _, _, _, s in IMAGES))
    (meta / f"{target}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _, _ in rows))
    (meta / f"{target}_template_pair_label.txt").write_text("".join(f"{a} {b} {l}\n" for a, b, l in pairs))
    return np.asarray([f for _, _, _, f, _ in IMAGES], dtype=np.float32)


def cos(u, v):
    u, v = np.asarray(u, float), np.asarray(v, float)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_media_and_templates_by_hand(tmp_path):
    feats = write_ijb(tmp_path)
    meta = read_meta(ijb_paths(tmp_path, "IJBC"))
    # insightface default: feature x score; media = mean; template = sum of media
    #   T1: media 10 = mean((1, 0), (0, 2)) = (0.5, 1); media 11 = (3, 0)  -> (3.5, 1)
    #   T2: (0, 1);   T3: media 30 = (0.5, 0.5), media 31 = mean((1, -1), (3, -3)) = (2, -2) -> (2.5, -1.5)
    t1, t2, t3 = (3.5, 1.0), (0.0, 1.0), (2.5, -1.5)
    tids, tf = template_features(feats, meta)
    assert tids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(tf, [np.divide(t, np.linalg.norm(t)) for t in (t1, t2, t3)], atol=1e-12)
    report, scores, _ = evaluate_ijb(feats, meta, tmp_path / "meta" / "ijbc_template_pair_label.txt")
    np.testing.assert_allclose(scores, [cos(t1, t2), cos(t1, t3), cos(t2, t3), cos(t3, t1)], atol=1e-12)
    assert report["pairs"] == 4 and report["genuine"] == 2 and report["templates"] == 3
    # scores: (1,2) genuine 0.2747, (1,3) impostor 0.6831, (2,3) impostor -0.5145, (3,1) genuine
    # 0.6831 -- tied with the impostor.  Thresholds: >= 0.6831 -> TPR 1/2, FPR 1/2;
    # >= 0.2747 -> TPR 1, FPR 1/2.  Nothing below FPR 1/2 but (0, 0).
    assert report["tar_at_far"] == {"1e-06": 0.0, "1e-05": 0.0, "0.0001": 0.0, "0.001": 0.0,
                                    "0.01": 0.0, "0.1": 0.0}
    # without the detector score: T1 = mean((2,0),(0,4)) + (3,0) = (4, 2); T3 = (1,1) + (2,-2) = (3,-1)
    _, s2, _ = evaluate_ijb(feats, meta, tmp_path / "meta" / "ijbc_template_pair_label.txt",
                            detector_score=False)
    np.testing.assert_allclose(s2[:2], [cos((4, 2), (0, 1)), cos((4, 2), (3, -1))], atol=1e-12)
    # normalised image features (x score): T1 = mean((.5,0),(0,.5)) + (1,0) = (1.25, .25)
    _, s3, _ = evaluate_ijb(feats, meta, tmp_path / "meta" / "ijbc_template_pair_label.txt",
                            normalize_images=True)
    t3n = np.array([0.5, 0.5]) / np.sqrt(2) + np.array([1, -1]) / np.sqrt(2)
    np.testing.assert_allclose(s3[:2], [cos((1.25, 0.25), (0, 1)), cos((1.25, 0.25), t3n)], atol=1e-12)


def test_meta_rows_join_by_name(tmp_path):
    feats = write_ijb(tmp_path, order=[6, 5, 4, 3, 2, 1, 0])  # tid_mid file in another order
    meta = read_meta(ijb_paths(tmp_path, "IJBC"))
    assert meta.templates.tolist() == [1, 1, 1, 2, 3, 3, 3]
    assert meta.medias.tolist() == [10, 10, 11, 20, 30, 31, 31]
    assert meta.scores.tolist() == [0.5, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0]
    assert len(feats) == 7


def test_tar_at_far_with_ties():
    # scores (label): .9 (1) .8 (1) .8 (0) .7 (1) .6 (0) .5 (0) .5 (1) .4 (0); 4 genuine, 4 impostor
    scores = np.array([0.8, 0.5, 0.9, 0.6, 0.8, 0.4, 0.7, 0.5])
    labels = np.array([1, 0, 1, 0, 0, 0, 1, 1])
    fpr, tpr, _ = roc_points(scores, labels)
    # accept >= .9: (0, .25); >= .8: (.25, .5) -- the tie moves together; >= .7: (.25, .75);
    # >= .6: (.5, .75); >= .5: (.75, 1); >= .4: (1, 1)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0])
    got = tar_at_far(fpr, tpr, fars=(1e-6, 0.1, 0.25, 0.6, 0.75))
    assert got == {"1e-06": 0.25, "0.1": 0.25, "0.25": 0.75, "0.6": 0.75, "0.75": 1.0}
    # a top score shared by a genuine and an impostor pair: nothing at FPR 0 but (0, 0)
    f2, t2, _ = roc_points(np.array([0.9, 0.9, 0.1]), np.array([1, 0, 1]))
    assert tar_at_far(f2, t2, fars=(0.1,)) == {"0.1": 0.0}
    with pytest.raises(DataError, match="genuine"):
        roc_points(np.array([0.1, 0.2]), np.array([1, 1]))


def test_pairs_stream_in_blocks_and_bad_lines_are_named(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("".join(f"{i} {i + 1} {i % 2}\n" for i in range(1000)))
    blocks = list(iter_pairs(p, block=64))
    assert len(blocks) > 5
    assert np.concatenate([b[0] for b in blocks]).tolist() == list(range(1000))
    assert np.concatenate([b[2] for b in blocks]).tolist() == [i % 2 for i in range(1000)]
    p.write_text("1 2 1\n3 4 x\n")
    with pytest.raises(DataError, match=r"pairs.txt \(pairs\): line 2: expected 3 integers"):
        list(iter_pairs(p))
    p.write_text("1 2 1\n\n3 4\n")
    with pytest.raises(DataError, match=r"line 3: 2 fields; expected 3"):
        list(iter_pairs(p))
    p.write_text("1 2 1\n3 4 2")  # no final newline
    with pytest.raises(DataError, match="pair line 2: label 2"):
        list(iter_pairs(p))
    p.write_text("1 2 1\n3 4 0")
    assert np.concatenate([b[1] for b in iter_pairs(p)]).tolist() == [2, 4]
    p.write_text("1 2 1\n3 4 2\n")
    with pytest.raises(DataError, match="pair line 2: label 2"):
        list(iter_pairs(p))


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"meta/ijbb_face_tid_mid.txt not found"):
        ijb_paths(tmp_path, "IJBB")
    feats = write_ijb(tmp_path, pairs=[(1, 9, 1)])
    meta = read_meta(ijb_paths(tmp_path, "IJBC"))
    with pytest.raises(DataError, match="template 9 has no images"):
        evaluate_ijb(feats, meta, tmp_path / "meta" / "ijbc_template_pair_label.txt")


def test_cli_ijb_from_features(tmp_path, capsys):
    feats = write_ijb(tmp_path, pairs=PAIRS + [(2, 1, 0)])
    f = tmp_path / "f.npy"
    np.save(f, feats)
    out = tmp_path / "rep"
    assert main(["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f),
                 "--json", "--out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["pairs"] == 5
    assert list(got["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    for name in ("report.md", "roc.png", "pair_scores.npy", "report.json"):
        assert (out / name).is_file()
    assert np.load(out / "pair_scores.npy").shape == (5,)
    np.save(f, feats[:5])
    assert main(["ijb", "--root", str(tmp_path), "--target", "IJBC", "--features", str(f)]) == 2
    assert "5 rows" in capsys.readouterr().err
    assert main(["ijb", "--root", str(tmp_path), "--target", "IJBC", "--onnx", "m.onnx"]) == 2
