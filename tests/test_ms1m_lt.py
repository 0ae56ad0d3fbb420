"""MS1M-LT sampling rule (pipelines.ms1m_lt) against hand-derived facts and MXNet-written files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from facelt.data.recordio import RecordReader, read_insightface, unpack
from facelt.errors import ConfigError, DataError
from pipelines.ms1m_lt import (expected_ms1m_lt_size, keep_probabilities, prepare_ms1m_lt,
                               read_source_identities, sample_ms1m_lt, solve_c)
from pipelines.synthetic_faces import write_synthetic_rec

DATA = Path(__file__).resolve().parent / "data"  # public test vectors, copied into the repo


# --- C solves sum_i min(c_i, c_i^2 / C) = T --------------------------------------------------------

def test_c_hand_example_no_clipping() -> None:
    # counts (2, 4, 10), target 8.  Try C >= 10 (nobody clipped at p = 1):
    #   (2^2 + 4^2 + 10^2) / C = 120 / C = 8  ->  C = 15, and 15 >= 10 holds.
    #   p = (2/15, 4/15, 10/15); expected kept 4/15 + 16/15 + 100/15 = 120/15 = 8.
    p, big_c = keep_probabilities([2, 4, 10], 8)
    assert big_c == pytest.approx(15.0)
    np.testing.assert_allclose(p, [2 / 15, 4 / 15, 10 / 15])


def test_c_hand_example_with_clipping() -> None:
    # counts (2, 4, 10), target 13.  C >= 10 would give 120 / C <= 12 < 13, so C < 10 and the
    # 10-image identity is clipped at p = 1:  10 + (4 + 16) / C = 13  ->  C = 20/3 (in [4, 10)).
    #   p = (0.3, 0.6, 1); expected kept 0.6 + 2.4 + 10 = 13.
    p, big_c = keep_probabilities([2, 4, 10], 13)
    assert big_c == pytest.approx(20 / 3)
    np.testing.assert_allclose(p, [0.3, 0.6, 1.0])


def test_c_keep_everything_and_reject_impossible_target() -> None:
    p, _ = keep_probabilities([2, 4, 10], 16)      # the whole source: p = 1 everywhere
    np.testing.assert_array_equal(p, [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="source size"):
        solve_c([2, 4, 10], 17)


def _geometric_counts() -> np.ndarray:
    # 2,000 identities with Geometric(0.05) counts on {1, 2, ...} (mean 20): a known law.
    return np.random.Generator(np.random.PCG64(1234)).geometric(0.05, 2000).astype(np.int64)


@pytest.mark.parametrize("target", [150, 10_000, 25_000, 39_000])
def test_c_solves_the_equation(target: int) -> None:
    c = _geometric_counts()
    big_c = solve_c(c, target)
    assert np.minimum(c, c * c / big_c).sum() == pytest.approx(target, rel=1e-12)


# --- sampling statistics ---------------------------------------------------------------------------

def test_kept_per_identity_mean_matches_c_squared_over_c() -> None:
    # Identity i keeps K_i ~ Binomial(c_i, p_i) images, p_i = min(1, c_i / C):
    #   E K_i = c_i p_i (= c_i^2 / C when not clipped),  Var K_i = c_i p_i (1 - p_i).
    # Over S independent seeds the mean of K_i has variance c_i p_i (1 - p_i) / S, so
    #   z_i = (mean_i - c_i p_i) / sqrt(c_i p_i (1 - p_i) / S)  is about N(0, 1).
    # Bounds: every |z_i| < 5.5 (Bonferroni over 2,000 identities: false alarm < 1e-4), and
    # the mean of z_i^2 (E = 1, Var about 2 + the binomial excess kurtosis, < 3 here) within
    # 6 * sqrt(3 / n) of 1: a 5 % error in C moves it by about 2 and is caught.
    c = _geometric_counts()
    target, seeds = 10_000, 200
    big_c = solve_c(c, target)
    p = np.minimum(1.0, c / big_c)
    kept = np.stack([sample_ms1m_lt(c, target, seed).kept_counts for seed in range(seeds)])
    mean = kept.mean(axis=0)
    var = c * p * (1 - p)
    clipped = p >= 1.0
    assert clipped.any() and (~clipped).any()
    assert (kept[:, clipped] == c[clipped]).all()          # p = 1: every image kept, every seed
    z = (mean[~clipped] - (c * c / big_c)[~clipped]) / np.sqrt(var[~clipped] / seeds)
    assert np.abs(z).max() < 5.5
    assert abs((z ** 2).mean() - 1.0) < 6 * np.sqrt(3 / z.size)


def test_total_within_three_sigma_and_dropped_identities() -> None:
    c = _geometric_counts()
    target = 10_000
    big_c = solve_c(c, target)
    p = np.minimum(1.0, c / big_c)
    sigma = np.sqrt((c * p * (1 - p)).sum())               # the total is a sum of Bernoullis
    sample = sample_ms1m_lt(c, target, seed=0)
    assert abs(int(sample.keep.sum()) - target) < 3 * sigma
    assert sample.keep.size == c.sum()
    # an identity vanishes with probability (1 - p)^c; dropped ones get no new label
    dropped = sample.kept_counts == 0
    q = (1 - p) ** c
    assert abs(dropped.sum() - q.sum()) < 4 * np.sqrt((q * (1 - q)).sum())
    np.testing.assert_array_equal(sample.source_labels, np.flatnonzero(~dropped))
    # the mask and the per-identity counts agree, identity by identity
    for i in (0, 7, 1999):
        assert sample.kept_indices(i).size == sample.kept_counts[i]
        assert (sample.kept_indices(i) < c[i]).all()


def test_expected_size_matches_hand_formulas() -> None:
    # counts (2, 4, 10), target 13: p = (0.3, 0.6, 1) (see the hand example above).
    e = expected_ms1m_lt_size([2, 4, 10], 13)
    assert e.images == pytest.approx(13.0)
    assert e.images_std == pytest.approx(np.sqrt(2 * .3 * .7 + 4 * .6 * .4 + 0.0))
    # survival 1 - (1-p)^c: 1 - 0.7^2 = 0.51, 1 - 0.4^4 = 0.9744, 1
    assert e.identities == pytest.approx(0.51 + 0.9744 + 1.0)
    assert e.C == pytest.approx(20 / 3)


def test_same_seed_same_draw_other_seed_other_draw() -> None:
    c = _geometric_counts()
    a, b, d = (sample_ms1m_lt(c, 10_000, s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.keep, b.keep)
    assert not np.array_equal(a.keep, d.keep)


# --- prepare_ms1m_lt on real rec files -------------------------------------------------------------

def _images(prefix: Path) -> list[tuple[int, float, int, bytes]]:
    """(key, label, header id, payload) of every image record of an insightface rec."""
    index = read_insightface(prefix)
    with RecordReader(str(prefix) + ".rec") as reader:
        out = []
        for key in index.keys.tolist():
            header, payload = unpack(reader.read(key))
            out.append((key, header.label, header.id, payload))
    return out


def _check_against_mxnet_file(out: Path, manifest: dict, expected: dict) -> None:
    # every output image's bytes are one source image's bytes (sha256 from the MXNet-written
    # expected.json), its label is the dense new label of that image's source identity
    by_sha = {r["payload_sha256"]: int(k) for k, r in expected["records"].items() if r["flag"] == 0}
    src_label = {int(k): int(r["label"]) for k, r in expected["records"].items() if r["flag"] == 0}
    images = _images(out / "train")
    source_keys, labels = [], []
    for key, label, hid, payload in images:
        src_key = by_sha[hashlib.sha256(payload).hexdigest()]
        assert hid == key
        assert manifest["identities"]["source_label"][int(label)] == src_label[src_key]
        source_keys.append(src_key)
        labels.append(int(label))
    assert source_keys == sorted(source_keys)                    # source order kept
    k = len(manifest["identities"]["count"])
    assert sorted(set(labels)) == list(range(k))                 # dense 0..K'-1
    assert np.bincount(labels).tolist() == manifest["identities"]["count"]
    assert (out / "property").read_text().strip() == f"{k},112,112"
    assert manifest["totals"]["images"] == len(images)


def test_prepare_from_mxnet_written_rec(tmp_path: Path) -> None:
    faces = DATA / "recordio" / "faces"
    expected = json.loads((DATA / "recordio" / "expected.json").read_text())["faces"]
    src = read_source_identities(faces)
    # identity records of faces.rec (MXNet-written): [1,4), [4,8), [8,12), [12,13)
    np.testing.assert_array_equal(src.counts, [3, 4, 4, 1])
    np.testing.assert_array_equal(src.starts, [1, 4, 8, 12])
    seen_drop = False
    for seed in range(6):
        out = tmp_path / f"lt{seed}"
        manifest = prepare_ms1m_lt(faces, out, seed=seed, target_images=6)
        # counts (3,4,4,1), T = 6: 120 -> no clipping, C = (9 + 16 + 16 + 1) / 6 = 7
        assert manifest["C"] == pytest.approx(7.0)
        _check_against_mxnet_file(out, manifest, expected)
        seen_drop |= manifest["totals"]["dropped_identities"] > 0
        assert json.loads((out / "manifest.json").read_text()) == manifest
    # the 1-image identity survives a seed with probability p = 1/7, so some seed drops it
    # (P(never dropped in 6 seeds) = 7^-6): the relabelling after a drop was exercised
    assert seen_drop


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    # 40 SYNTHETIC identities with a known long tail: 1..40 images (820 images)
    counts = np.arange(1, 41)[::-1].copy()
    folder = tmp_path_factory.mktemp("src")
    write_synthetic_rec(folder / "train", counts, seed=3, quality=80)
    return folder / "train", counts


def test_prepare_synthetic_source_round_trip(synthetic_source, tmp_path: Path) -> None:
    prefix, counts = synthetic_source
    manifest = prepare_ms1m_lt(prefix, tmp_path / "a", seed=1, target_images=200)
    src = {key: (label, payload) for key, label, _, payload in _images(prefix)}
    by_payload = {payload: key for key, (label, payload) in src.items()}
    out = _images(tmp_path / "a" / "train")
    names = manifest["identities"]["source_label"]
    for key, label, _, payload in out:
        assert src[by_payload[payload]][0] == names[int(label)]  # byte-identical, right identity
    # manifest: totals, dense labels, histogram, source summary (counts 40..1 by construction)
    assert manifest["totals"]["images"] == len(out)
    assert manifest["totals"]["identities"] == len(names) == read_insightface(tmp_path / "a" / "train").num_classes
    assert manifest["totals"]["dropped_identities"] == 40 - len(names)
    assert sum(manifest["histogram"]["identities"]) == len(names)
    assert manifest["source"]["counts"] == {"identities": 40, "images": 820, "min": 1, "max": 40,
                                            "mean": 20.5, "median": 20.5}
    idx_sha = hashlib.sha256(Path(str(prefix) + ".idx").read_bytes()).hexdigest()
    assert manifest["source"]["idx_sha256"] == idx_sha
    assert names == sorted(names) and all(0 <= n < 40 for n in names)


def test_prepare_is_deterministic_per_seed(synthetic_source, tmp_path: Path) -> None:
    prefix, _ = synthetic_source
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        prepare_ms1m_lt(prefix, tmp_path / name, seed=seed, target_images=200)
    files = ("train.rec", "train.idx", "property", "manifest.json")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "train.rec").read_bytes() != (tmp_path / "c" / "train.rec").read_bytes()


def test_prepare_refuses_the_source_folder(synthetic_source) -> None:
    prefix, _ = synthetic_source
    with pytest.raises(DataError, match="source's folder"):
        prepare_ms1m_lt(prefix, prefix.parent, seed=0, target_images=100)


def test_prepare_rejects_a_target_above_the_source(synthetic_source, tmp_path: Path) -> None:
    prefix, _ = synthetic_source
    with pytest.raises(DataError, match=r"\(0, 820\]"):
        prepare_ms1m_lt(prefix, tmp_path / "x", seed=0, target_images=821)
    assert not (tmp_path / "x" / "train.rec").exists()


def test_interrupted_prepare_resumes_to_identical_files(synthetic_source, tmp_path: Path,
                                                        monkeypatch) -> None:
    """A build that dies mid-way (after its last saved state, with more records written since)
    continues from the saved state and ends byte-identical to an uninterrupted build."""
    import pipelines.ms1m_lt as m
    from facelt.data.recordio import RecordReader as Reader
    prefix, _ = synthetic_source
    prepare_ms1m_lt(prefix, tmp_path / "full", seed=3, target_images=300)
    monkeypatch.setattr(m, "SAVE_EVERY", 40)
    real = Reader.read_unpacked
    calls = {"n": 0}

    def dying(self, key):
        calls["n"] += 1
        if calls["n"] == 137:  # 3 saved states (40, 80, 120) and 16 records after the last
            raise KeyboardInterrupt
        return real(self, key)

    monkeypatch.setattr(Reader, "read_unpacked", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_ms1m_lt(prefix, tmp_path / "cut", seed=3, target_images=300)
    assert not (tmp_path / "cut" / "train.rec").exists()          # nothing under the final names
    assert (tmp_path / "cut" / "train.rec.partial").exists()
    saved = json.loads((tmp_path / "cut" / m.PROGRESS_NAME).read_text())
    assert saved["images_done"] == 120
    monkeypatch.setattr(Reader, "read_unpacked", real)
    calls["n"] = 0
    counted = {"n": 0}

    def counting(self, key):
        counted["n"] += 1
        return real(self, key)

    monkeypatch.setattr(Reader, "read_unpacked", counting)
    prepare_ms1m_lt(prefix, tmp_path / "cut", seed=3, target_images=300)
    total = json.loads((tmp_path / "full" / "manifest.json").read_text())["totals"]["images"]
    assert counted["n"] == total - 120                               # only the rest was read
    for f in ("train.rec", "train.idx", "property", "manifest.json"):
        assert (tmp_path / "full" / f).read_bytes() == (tmp_path / "cut" / f).read_bytes(), f
    assert not (tmp_path / "cut" / m.PROGRESS_NAME).exists()
    assert not (tmp_path / "cut" / "train.rec.partial").exists()
    with pytest.raises(DataError, match="other settings"):            # a different build there
        (tmp_path / "cut" / m.PROGRESS_NAME).write_text(json.dumps({"settings": {}, "writer": {},
                                                                     "images_done": 1}))
        prepare_ms1m_lt(prefix, tmp_path / "cut", seed=4, target_images=300)


def test_prepare_carries_the_verification_sets(tmp_path: Path) -> None:
    """issue 21: after prepare, the README's eval.verification=[lfw, ...] finds the .bin files
    that sat beside the source's train.rec (hard-linked on one file system)."""
    from facelt.config import load_config
    from facelt.faces.verify_callback import resolve_verification_sets
    from pipelines.synthetic_verification import write_synthetic_verification_bin
    src = tmp_path / "faces_emore"
    write_synthetic_rec(src / "train", np.array([6, 5, 4, 3]), seed=2, quality=80, size=32)
    for name in ("lfw", "cfp_fp"):
        write_synthetic_verification_bin(src / f"{name}.bin", np.arange(10, 14), 10, seed=1,
                                         size=32)
    out = tmp_path / "ms1m_lt"
    manifest = prepare_ms1m_lt(src / "train", out, seed=0, target_images=10)
    assert manifest["verification_sets"] == ["cfp_fp.bin", "lfw.bin"]
    for name in ("lfw", "cfp_fp"):
        assert (out / f"{name}.bin").read_bytes() == (src / f"{name}.bin").read_bytes()
        assert (out / f"{name}.bin").stat().st_ino == (src / f"{name}.bin").stat().st_ino
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "ms1m_lt.yaml",
                      [f"data.root={out}", "eval.verification=[lfw,cfp_fp]"])
    assert resolve_verification_sets(cfg) == [out / "lfw.bin", out / "cfp_fp.bin"]
    prepare_ms1m_lt(src / "train", out, seed=0, target_images=10)  # a rerun keeps them
    assert (out / "lfw.bin").read_bytes() == (src / "lfw.bin").read_bytes()
