"""MegaFace challenge-1 protocol: pair rule, CMC, gallery subsets, pseudo-shots, groups, errors.

Expected numbers are worked out by hand in the comments, or by an independent brute-force
computation (full score matrix, rank = number of distractors scoring >= the genuine score).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
from facelt.features.files import FeatureFile
from eval_megaface.protocol import (gallery_order, group_rank1, parse_gallery_sizes, score_trials,
                                    ProbeOutcome)
from eval_megaface.pseudo_shots import bucket_of, bucket_report, count_above
from eval_megaface.search import ChunkSearcher, approx_topk, stream_topk, top1_agreement
from facelt.errors import ConfigError, DataError

BACKENDS = ("blas", "faiss", "torch", "numpy")


def _ff(tmp_path: Path, name: str, arr) -> FeatureFile:
    p = tmp_path / name
    np.save(p, np.asarray(arr, dtype=np.float32))
    return FeatureFile.open(p)


def _csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


# ------------------------------------------------------------------------------------ pair rule

@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_with_a_distractor_is_a_miss(tmp_path, backend):
    # Two images of one identity, identical features: sim(p, g) = 1.  A distractor equal to them
    # also scores exactly 1 -> rank 1 (one distractor >= 1) -> not a rank-1 hit.
    probes = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    tie = _ff(tmp_path, "tie.npy", [[1, 0, 0, 0], [0, 1, 0, 0]])
    top = stream_topk(probes, tie, np.arange(2), [2], backend=backend)[0]
    out = score_trials(probes, np.array([0, 0]), top.scores)
    assert out.total_trials == 2 and out.rank1() == 0.0
    assert out.cmc()[1] == 1.0  # the tie costs exactly one place
    # A distractor at 0.5 (normalised [1, 1, 1, 1] / 2 . e1 = 0.5) is beaten: every trial a hit.
    below = _ff(tmp_path, "below.npy", [[0.5, 0.5, 0.5, 0.5], [0, 1, 0, 0]])
    top = stream_topk(probes, below, np.arange(2), [2], backend=backend)[0]
    assert score_trials(probes, np.array([0, 0]), top.scores).rank1() == 1.0


def test_exact_duplicates_of_the_gallery_image_are_ties_at_full_width(tmp_path):
    """512-d features: float32 BLAS rounds the same dot product differently in a (m x m) genuine
    product and a blocked distractor search; after rescoring with one routine, a distractor that is
    a copy of g ties with g, so no trial may be a rank-1 hit."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), 4)
    base = np.repeat(rng.standard_normal((40, 512)), 4, axis=0)
    probes = (base + 0.8 * rng.standard_normal((160, 512))).astype(np.float32)
    dist = np.concatenate([probes, rng.standard_normal((300, 512)).astype(np.float32)])
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", dist)
    with open(tmp_path / "p.csv", "w") as fh:
        fh.write("path,identity\n" + "".join(f"img{i}.jpg,{k}\n" for i, k in enumerate(ids)))
    rep = run_evaluation(MegaFaceEvalConfig(gallery_sizes=[len(dist)], probe_features=tmp_path / "p.npy",
                                    probe_list=tmp_path / "p.csv",
                                    distractor_features=tmp_path / "d.npy", chunk_rows=37))
    assert rep["trials"] == 40 * 4 * 3
    assert rep["rank1"] == 0.0   # every g has its exact copy among the distractors (a tie) ...
    # ... and p's own copy scores 1: at least 2 distractors score >= sim(p, g), so no hit at
    # rank 2; at most the copies of the identity's two other images add to them: a hit at rank 5
    assert rep["cmc"][1] == 0.0 and rep["cmc"][2] > 0.0 and rep["cmc"][4] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmc_hand_worked(tmp_path, backend):
    # Raw inner products (normalize=False) so every score is a small integer.
    # identity 0: x1=[1,0,0] x2=[1,1,0] x3=[1,1,1]; identity 1: one image (no trials).
    # distractors d1=[1,0,0] d2=[0,2,0] d3=[0,0,3] d4=[-1,0,0]
    # scores  x1: 1 0 0 -1 | x2: 1 2 0 -1 | x3: 1 2 3 -1 ; genuine x1x2=1 x1x3=1 x2x3=2
    # rank = #distractors >= genuine:
    #  (x1,x2)=1 (x1,x3)=1 (x2,x1)=2 (x2,x3)=1 (x3,x1)=3 (x3,x2)=2
    #  -> rank<1: 0/6, <2: 3/6, <3: 5/6, <4..10: 6/6
    # gallery of the first two rows (d1, d2): ranks 1 1 2 1 2 1 -> 0, 4/6, 1, ...
    probes = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1]], np.float32)
    ids = np.array([0, 0, 0, 1])
    ff = _ff(tmp_path, "d.npy", [[1, 0, 0], [0, 2, 0], [0, 0, 3], [-1, 0, 0]])
    for chunk in (1, 3, 1000):
        small, full = stream_topk(probes, ff, np.array([0, 1, 2, 3]), [2, 4], chunk_rows=chunk,
                                  normalize=False, backend=backend)
        out = score_trials(probes, ids, full.scores)
        assert out.total_trials == 6
        assert out.cmc() == pytest.approx([0, 3 / 6, 5 / 6] + [1.0] * 7, abs=0)
        assert score_trials(probes, ids, small.scores).cmc() == pytest.approx(
            [0, 4 / 6] + [1.0] * 8, abs=0)
        assert full.ids[2, :4].tolist() == [2, 1, 0, 3]  # x3's distractors, best first
        assert full.ids[2, 4:].tolist() == [-1] * 6 and np.all(np.isneginf(full.scores[2, 4:]))


# ------------------------------------------------------------------------------ gallery subsets

def test_gallery_sizes_parse():
    assert parse_gallery_sizes("10,100,1K,10K,100K,1M") == [10, 100, 1000, 10_000, 100_000, 1_000_000]
    assert parse_gallery_sizes("1k, 37") == [1000, 37]
    for bad in ("", "1G", "ten", "0"):
        with pytest.raises(ConfigError):
            parse_gallery_sizes(bad)


def test_gallery_order_nested_seeded_and_noise_free():
    a = gallery_order(1000, seed=3)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, gallery_order(1000, seed=3))
    assert not np.array_equal(a, gallery_order(1000, seed=4))
    assert set(a[:10]) <= set(a[:100])  # nested by construction: prefixes
    noisy = np.zeros(1000, bool)
    noisy[a[:5]] = True  # the first five of the permutation are noise
    b = gallery_order(1000, seed=3, exclude=noisy)
    assert np.array_equal(b, a[5:])
    assert np.array_equal(gallery_order(4, 0, preferred=np.array([3, 1, 2])), [3, 1, 2])


# ---------------------------------------------------------------- streaming == in-memory == brute force

def _brute_force_cmc(p: np.ndarray, ids: np.ndarray, d: np.ndarray) -> list[float]:
    s = p @ d.T
    g = p @ p.T
    trials, hits = 0, np.zeros(10)
    for i in range(len(p)):
        for j in range(len(p)):
            if i != j and ids[i] == ids[j]:
                rank = int(np.sum(s[i] >= g[i, j]))
                trials += 1
                hits += rank < np.arange(1, 11)
    return (hits / trials).tolist()


def test_streaming_agrees_with_in_memory_and_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(12), 5)
    centres = rng.standard_normal((12, 16))
    p = (centres[ids] + 0.5 * rng.standard_normal((60, 16))).astype(np.float32)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    d = rng.standard_normal((1500, 16)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ff = _ff(tmp_path, "d.npy", d)
    order = gallery_order(len(d), seed=1)
    sizes = [10, 100, 1500]
    ref = stream_topk(p, ff, order, sizes, chunk_rows=10 ** 9, normalize=False, backend="numpy")
    for backend, chunk in (("blas", 7), ("blas", 10 ** 9), ("faiss", 11), ("torch", 9), ("numpy", 13)):
        got = stream_topk(p, ff, order, sizes, chunk_rows=chunk, normalize=False, backend=backend)
        for a, b in zip(got, ref):
            assert np.array_equal(a.ids, b.ids)
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
            assert score_trials(p, ids, a.scores).cmc() == score_trials(p, ids, b.scores).cmc()
    small_blocks = ChunkSearcher("blas", block_elems=50)(p, d[:40], 10)  # probe blocks of one row
    torch_blocks = ChunkSearcher("torch", block_elems=50)(p, d[:40], 10)
    reference = ChunkSearcher("numpy")(p, d[:40], 10)
    assert np.array_equal(small_blocks[1], reference[1])
    assert np.array_equal(torch_blocks[1], reference[1])
    for n, top in zip(sizes, ref):
        cmc = score_trials(p, ids, top.scores).cmc()
        assert cmc == pytest.approx(_brute_force_cmc(p, ids, d[order[:n]]), abs=1e-12)
    # this data is neither trivially solved nor hopeless, so the comparison means something
    r1 = score_trials(p, ids, ref[-1].scores).rank1()
    assert 0.05 < r1 < 0.95


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "sq8"])
def test_approximate_indexes_report_agreement(tmp_path, kind):
    rng = np.random.default_rng(1)
    d = rng.standard_normal((2000, 16)).astype(np.float32)
    p = rng.standard_normal((40, 16)).astype(np.float32)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    ff = _ff(tmp_path, "d.npy", d)
    gal = np.arange(2000)
    exact = stream_topk(p, ff, gal, [2000])[0]
    approx = approx_topk(p, ff, gal, kind, nlist=8, nprobe=8)  # every IVF cell visited: exact
    assert top1_agreement(approx, exact) == 1.0
    np.testing.assert_allclose(approx.scores[:, 0], exact.scores[:, 0], atol=1e-5)  # rescored exactly
    if kind == "ivf":
        np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-5)
    assert top1_agreement(stream_topk(p, ff, gal, [2000])[0], exact) == 1.0
    shifted = exact.copy()
    shifted.ids[:10, 0] = -5
    assert top1_agreement(shifted, exact) == 0.75


# ------------------------------------------------------------------------------------ pseudo-shots

def test_pseudo_shot_counts_and_bucket_edges(tmp_path):
    # probe i = e_i; it gets c_i training rows equal to e_i (cosine 1) for c = 0, 1, 2, 5, 6, plus
    # one row 0.7 * e_i whose score is exactly float32(0.7): not > 0.7, never counted.
    dim, counts = 8, [0, 1, 2, 5, 6]
    eye = np.eye(dim, dtype=np.float32)
    rows = []
    for i, c in enumerate(counts):
        rows += [eye[i]] * c + [np.float32(0.7) * eye[i]]
    rows += [eye[7]] * 3  # rows near nobody
    ff = _ff(tmp_path, "t.npy", np.stack(rows))
    for chunk in (1, 4, 1000):
        got = count_above(eye[:5], ff, threshold=0.7, chunk_rows=chunk, normalize=False)
        assert got.tolist() == counts
    assert count_above(eye[:5], ff, threshold=0.69, normalize=False).tolist() == [c + 1 for c in counts]
    assert bucket_of(np.array(counts)).tolist() == ["zero", "one", "few", "few", "many"]
    assert bucket_of(np.array([3, 4, 7, 100])).tolist() == ["few", "few", "many", "many"]


def test_bucket_and_group_rank1_are_over_the_probes_trials():
    # probes 0..3 with trials 2, 2, 1, 3 and rank-1 hits 2, 0, 1, 1
    out = ProbeOutcome(np.array([2, 2, 1, 3]), np.array([[2] * 10, [0] * 10, [1] * 10, [1] * 10]))
    rep = bucket_report(out, np.array([0, 0, 9, 1]))
    assert rep["zero"] == {"rank1": 0.5, "probes": 2}       # (2 + 0) / (2 + 2)
    assert rep["many"] == {"rank1": 1.0, "probes": 1}
    assert rep["one"] == {"rank1": pytest.approx(1 / 3), "probes": 1}
    assert rep["few"] == {"rank1": None, "probes": 0}
    groups = group_rank1(out, {"gender": ["m", "f", "m", "f"]})
    assert groups == {"gender": {"f": pytest.approx(1 / 5), "m": 1.0}}  # f: 1/(2+3), m: 3/3


# ------------------------------------------------------------------------------ whole evaluation

def _dataset(tmp_path: Path):
    # identity a (male): two images = e1 -> genuine 1.0; identity b (female): e2 and e3 -> 0.
    # distractors at 0.5 against e1, e2, e3 ([1,1,1,1]/2) and a far one: a always hits, b never.
    probes = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    np.save(tmp_path / "p.npy", probes)
    _csv(tmp_path / "p.csv", [("path", "identity", "gender"), ("a/a_1.png", "a", "m"),
                              ("a/a_2.png", "a", "m"), ("b/b_1.png", "b", "f"), ("b/b_2.png", "b", "f")])
    d = np.array([[0.5, 0.5, 0.5, 0.5], [0, 0, 0, 1], [0, 0, 0, 1]], np.float32)
    np.save(tmp_path / "d.npy", d)
    (tmp_path / "d.txt").write_text("0/x/1.jpg\n0/x/2.jpg\n0/x/3.jpg\n")
    # train: probe e1 has 6 near rows (many), e2 one (one), e3 none (zero)
    np.save(tmp_path / "t.npy", np.array([[1, 0, 0, 0]] * 6 + [[0, 1, 0, 0]], np.float32))
    return tmp_path


def _cfg(tmp_path: Path, **kw) -> MegaFaceEvalConfig:
    base = dict(gallery_sizes=[3], probe_features=tmp_path / "p.npy", probe_list=tmp_path / "p.csv",
                distractor_features=tmp_path / "d.npy", distractor_list=tmp_path / "d.txt",
                train_features=tmp_path / "t.npy", chunk_rows=2)
    base.update(kw)
    return MegaFaceEvalConfig(**base)


def test_run_evaluation_report_fields(tmp_path):
    rep = run_evaluation(_cfg(_dataset(tmp_path), gallery_sizes=[3, 1]))
    assert rep["gallery"] == 3 and rep["trials"] == 4 and rep["rank1"] == 0.5
    assert len(rep["cmc"]) == 10 and rep["cmc"][0] == 0.5
    assert rep["groups"] == {"gender": {"f": 0.0, "m": 1.0}}
    assert rep["pseudo_shots"] == {"many": {"rank1": 1.0, "probes": 2}, "few": {"rank1": None, "probes": 0},
                                   "one": {"rank1": 0.0, "probes": 1}, "zero": {"rank1": 0.0, "probes": 1}}
    assert [r["gallery"] for r in rep["results"]] == [3, 1]
    json.dumps(rep, allow_nan=False)


def test_cli_writes_report_files(tmp_path):
    from facelt.cli import megaface
    _dataset(tmp_path)
    parser = argparse.ArgumentParser()
    megaface.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["megaface-eval", "--gallery", "3", "--probe-features", str(tmp_path / "p.npy"),
                              "--probe-list", str(tmp_path / "p.csv"), "--distractor-features",
                              str(tmp_path / "d.npy"), "--train-features", str(tmp_path / "t.npy"),
                              "--out", str(out)])
    assert args.func(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["rank1"] == 0.5 and rep["gallery"] == 3 and "results" not in rep
    for name in ("report.md", "cmc.png", "pseudo_shots.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_errors_name_the_files_and_numbers(tmp_path):
    _dataset(tmp_path)
    with pytest.raises(DataError, match=r"gallery size 4 exceeds the 3 distractors.*d\.npy"):
        run_evaluation(_cfg(tmp_path, gallery_sizes=[4]))
    np.save(tmp_path / "t5.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"dimensions differ.*dim 4.*t5\.npy\) has dim 5"):
        run_evaluation(_cfg(tmp_path, train_features=tmp_path / "t5.npy"))
    np.save(tmp_path / "p3.npy", np.eye(4, dtype=np.float32)[:3])
    with pytest.raises(DataError, match=r"p\.csv has 4 rows but probe features .*p3\.npy have 3"):
        run_evaluation(_cfg(tmp_path, probe_features=tmp_path / "p3.npy"))
    (tmp_path / "d2.txt").write_text("only/one.jpg\n")
    with pytest.raises(DataError, match=r"d2\.txt has 1 entries but .*d\.npy have 3 rows"):
        run_evaluation(_cfg(tmp_path, distractor_list=tmp_path / "d2.txt"))
    _csv(tmp_path / "bad.csv", [("path", "label"), ("x.png", "1")])
    with pytest.raises(DataError, match=r"bad\.csv, line 1.*identity"):
        run_evaluation(_cfg(tmp_path, probe_list=tmp_path / "bad.csv"))
