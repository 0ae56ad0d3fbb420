"""MegaFace formats: devkit .bin files, stacked feature files, resumable extraction, noise lists."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from eval_megaface.devkit import bins_to_npy, image_path_of_bin, npy_to_bins, read_bin, write_bin
from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
from facelt.features.files import (FeatureFile, extract_features, finalize_feature_memmap,
                                    partial_path, read_manifest, write_feature_memmap)
from eval_megaface.noise import noise_mask, read_noise_list
from facelt.errors import DataError

NOISES = Path(__file__).resolve().parent / "data" / "megaface"  # copied from the public test data


# ----------------------------------------------------------------------------------- devkit .bin

def test_hand_built_bin_2x3_is_parsed(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(struct.pack("<4i", 2, 3, 12, 5) + struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    got = read_bin(p)
    assert got.dtype == np.float32
    assert got.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_bin_with_padded_stride_and_wrong_type(tmp_path):
    p = tmp_path / "pad.bin"  # rows of 2 floats stored with a 12-byte stride (one float of padding)
    p.write_bytes(struct.pack("<4i", 2, 2, 12, 5) + struct.pack("<6f", 1, 2, -9, 3, 4, -9))
    assert read_bin(p).tolist() == [[1, 2], [3, 4]]
    q = tmp_path / "u8.bin"
    q.write_bytes(struct.pack("<4i", 1, 4, 4, 0) + bytes(4))
    with pytest.raises(DataError, match=r"u8\.bin: matrix type 0, expected 5"):
        read_bin(q)
    r = tmp_path / "short.bin"
    r.write_bytes(struct.pack("<4i", 3, 1, 4, 5) + struct.pack("<2f", 1, 2))
    with pytest.raises(DataError, match="short.bin"):
        read_bin(r)


def test_write_bin_uses_the_insightface_header(tmp_path):
    v = np.array([0.25, -1.5, 3.0], np.float32)
    p = tmp_path / "a" / "x.jpg_facelt.bin"
    write_bin(p, v)
    raw = p.read_bytes()
    assert struct.unpack("<4i", raw[:16]) == (3, 1, 4, 5)  # rows = d, cols = 1, stride 4, CV_32F
    assert struct.unpack("<3f", raw[16:]) == (0.25, -1.5, 3.0)
    assert read_bin(p).reshape(-1).tolist() == v.tolist()


def test_bin_folder_npy_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    items = ["375/37531198@N00/4174611825_0.jpg", "375/37531198@N00/4174611825_1.jpg",
             "Aaron_Eckhart/Aaron_Eckhart_136.png", "b/img.jpeg", "c/d/e.png"]
    (tmp_path / "f.txt").write_text("\n".join(items) + "\n")
    assert npy_to_bins(tmp_path / "f.npy", tmp_path / "f.txt", tmp_path / "bins", algo="r100") == 5
    assert (tmp_path / "bins" / "Aaron_Eckhart" / "Aaron_Eckhart_136.png_r100.bin").is_file()
    assert bins_to_npy(tmp_path / "bins", tmp_path / "g.npy", tmp_path / "g.txt") == 5
    back = np.load(tmp_path / "g.npy")
    names = read_manifest(tmp_path / "g.txt")
    assert sorted(names) == sorted(items)
    for name, row in zip(names, back):
        assert np.array_equal(row, feats[items.index(name)])
    assert image_path_of_bin("a/b.JPG_my_algo.bin") == "a/b.JPG"


def _tree_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("entry, why", [("../escaped.png", r"'\.\.' would write outside"),
                                        ("a/../../escaped.png", r"'\.\.' would write outside"),
                                        ("/tmp/abs.png", "absolute"),
                                        ("link/x.png", "through a symbolic link")])
def test_npy2bin_keeps_every_write_inside_its_destination(tmp_path, entry, why):
    """A hostile manifest entry is refused naming the manifest, row and entry, before any .bin
    is written (the good first row is not written either)."""
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    if entry.startswith("/"):
        entry = str(tmp_path / "abs.png")
    (tmp_path / "f.txt").write_text(f"ok/first.png\n{entry}\n")
    (tmp_path / "bins").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "bins" / "link").symlink_to(tmp_path / "outside")
    before = _tree_snapshot(tmp_path)
    with pytest.raises(DataError, match=rf"f\.txt, row 1 \({re.escape(repr(entry))}\).*{why}"):
        npy_to_bins(tmp_path / "f.npy", tmp_path / "f.txt", tmp_path / "bins")
    assert _tree_snapshot(tmp_path) == before


def test_npy2bin_refuses_a_row_written_twice_or_onto_an_input(tmp_path):
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    (tmp_path / "f.txt").write_text("a/x.png\na//x.png\n")  # the same file
    with pytest.raises(DataError, match=r"row 1 \('a//x.png'\): the same file as row 0"):
        npy_to_bins(tmp_path / "f.npy", tmp_path / "f.txt", tmp_path / "bins")
    # the destination is the manifest's folder and a row names the manifest itself
    (tmp_path / "m_facelt.bin").write_text("a/x.png\nm\n")
    with pytest.raises(DataError, match=r"row 1 \('m'\).*is the input"):
        npy_to_bins(tmp_path / "f.npy", tmp_path / "m_facelt.bin", tmp_path)
    assert (tmp_path / "m_facelt.bin").read_text() == "a/x.png\nm\n"
    assert not (tmp_path / "bins").exists() and not (tmp_path / "a").exists()


def test_bin2npy_refuses_outputs_that_are_inputs_or_each_other(tmp_path):
    write_bin(tmp_path / "bins" / "a.png_x.bin", np.ones(3, np.float32))
    np.save(tmp_path / "keep.npy", np.full((1, 3), 7, np.float32))
    keep = (tmp_path / "keep.npy").read_bytes()
    with pytest.raises(DataError, match=r"--manifest .*keep\.npy and .*same file"):
        bins_to_npy(tmp_path / "bins", tmp_path / "keep.npy", tmp_path / "keep.npy")
    assert (tmp_path / "keep.npy").read_bytes() == keep
    src = (tmp_path / "bins" / "a.png_x.bin").read_bytes()
    with pytest.raises(DataError, match=r"--manifest .*a\.png_x\.bin is the input"):
        bins_to_npy(tmp_path / "bins", tmp_path / "o.npy", tmp_path / "bins" / "a.png_x.bin")
    with pytest.raises(DataError, match=r"the \.npy .*a\.png_x\.bin is the input"):
        bins_to_npy(tmp_path / "bins", tmp_path / "bins" / "a.png_x.bin", tmp_path / "m.txt")
    assert (tmp_path / "bins" / "a.png_x.bin").read_bytes() == src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bins", "keep.npy"]


# -------------------------------------------------------------------------------- feature files

def test_one_pass_norms_check_finiteness_and_normalise(tmp_path):
    """The chunk reader's norms refuse NaN / inf rows by the file's row numbers and normalise a
    finite row whose squares overflow float32 (3e20, 4e20: norm 5e20) like any other."""
    from facelt.features.files import iter_row_chunks
    a = np.array([[3, 4], [0, 0], [3e20, 4e20], [-6, 8]], np.float32)
    np.save(tmp_path / "ok.npy", a)
    got = np.concatenate([b.copy() for _, b in iter_row_chunks(FeatureFile.open(tmp_path / "ok.npy"),
                                                               np.arange(4), 3, normalize=True)])
    np.testing.assert_allclose(got, [[0.6, 0.8], [0, 0], [0.6, 0.8], [-0.6, 0.8]], rtol=1e-6)
    raw = [b.copy() for _, b in iter_row_chunks(FeatureFile.open(tmp_path / "ok.npy"), [3, 2], 5)]
    assert np.array_equal(raw[0], a[[2, 3]])  # not normalised: as stored
    for bad, kind in ((np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")):
        b = a.copy()
        b[3, 1] = bad
        np.save(tmp_path / "bad.npy", b)
        ff = FeatureFile.open(tmp_path / "bad.npy")
        with pytest.raises(DataError, match=rf"bad\.npy: row\(s\) 3 hold {kind}"):
            list(iter_row_chunks(ff, np.arange(4), 2, normalize=True))
        with pytest.raises(DataError, match=rf"bad\.npy: row\(s\) 3 hold {kind}"):
            list(iter_row_chunks(ff, [1, 3], 8))


def test_feature_file_validation_and_reads(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "ok.npy", a)
    ff = FeatureFile.open(tmp_path / "ok.npy")
    assert (ff.rows, ff.dim) == (10, 4)
    assert np.array_equal(ff.read(3, 6), a[3:6])
    assert np.array_equal(ff.read_rows(np.array([0, 1, 2, 7, 9])), a[[0, 1, 2, 7, 9]])
    assert np.array_equal(ff.memmap(), a)
    np.save(tmp_path / "f64.npy", a.astype(np.float64))
    with pytest.raises(DataError, match=r"f64\.npy: dtype float64"):
        FeatureFile.open(tmp_path / "f64.npy")
    np.save(tmp_path / "v.npy", a.reshape(-1))
    with pytest.raises(DataError, match=r"v\.npy: shape \(40,\)"):
        FeatureFile.open(tmp_path / "v.npy")
    raw = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-8])
    with pytest.raises(DataError, match="truncated"):
        FeatureFile.open(tmp_path / "cut.npy")


def test_write_feature_memmap_is_invisible_until_finalized(tmp_path):
    out = tmp_path / "feat.npy"
    mm = write_feature_memmap(out, 3, 2)
    mm[:] = [[1, 2], [3, 4], [5, 6]]
    assert not out.exists() and partial_path(out).exists()
    finalize_feature_memmap(mm, out)
    assert not partial_path(out).exists()
    assert FeatureFile.open(out).read(0, 3).tolist() == [[1, 2], [3, 4], [5, 6]]


def _expected_rows(images: np.ndarray, w: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1) @ w
    flipped = images[..., ::-1].reshape(len(images), -1) @ w
    s = flat + flipped
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def test_extract_features_flip_normalise_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((10, 1, 2, 3)).astype(np.float32)  # N, C, H, W
    w = rng.standard_normal((6, 4)).astype(np.float32)
    calls = []

    def embed(x):
        calls.append(len(x))
        return x.reshape(len(x), -1) @ w

    def batches(start=0):
        for a in range(start, 10, 3):
            yield images[a:a + 3]

    def dying():
        for i, b in enumerate(batches()):
            if i == 2:
                raise KeyboardInterrupt  # the run is killed after two batches
            yield b

    out = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        extract_features(embed, dying(), out, num_rows=10, dim=4)
    assert not out.exists()
    assert '"rows_done": 6' in (tmp_path / "f.npy.progress.json").read_text()
    calls.clear()
    extract_features(embed, batches, out, num_rows=10, dim=4)  # callable: starts at row 6
    assert calls == [3, 3, 1, 1]  # only rows 6..9 embedded, each batch plus its flip
    np.testing.assert_allclose(np.load(out), _expected_rows(images, w), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "f.npy.progress.json").exists() and not partial_path(out).exists()

    plain = tmp_path / "plain.npy"
    extract_features(embed, batches(), plain, num_rows=10, dim=4, flip=False, normalize=False)
    np.testing.assert_allclose(np.load(plain), images.reshape(10, -1) @ w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- noise lists



def test_shared_noise_lists_read():
    fs = read_noise_list(NOISES / "facescrub_noises.txt")
    mf = read_noise_list(NOISES / "megaface_noises.txt")
    assert len(fs) == 605 and len(mf) == 719
    assert fs[0] == "Aaron_Eckhart_136.png" and mf[0] == "375/37531198@N00/4174611825_0.jpg"
    assert not any(x.startswith("#") for x in fs + mf)


def test_refined_protocol_drops_exactly_the_listed_rows(tmp_path):
    # probes: a clean and a noisy image of two identities (Aaron_Eckhart_136/221 are listed noise)
    probe_paths = ["Aaron_Eckhart/Aaron_Eckhart_1.png", "Aaron_Eckhart/Aaron_Eckhart_136.png",
                   "Aaron_Eckhart/Aaron_Eckhart_2.png", "Aaron_Eckhart/Aaron_Eckhart_221.png",
                   "Zed/Zed_1.png", "Zed/Zed_2.png"]
    assert noise_mask(probe_paths, read_noise_list(NOISES / "facescrub_noises.txt")).tolist() == \
        [False, True, False, True, False, False]
    dist_paths = ["FlickrFinal2/375/37531198@N00/4174611825_0.jpg", "375/37531198@N00/4174611825_9.jpg",
                  "925/92596048@N00/3910487430_2.jpg", "5/37531198@N00/4174611825_0.jpg"]
    assert noise_mask(dist_paths, read_noise_list(NOISES / "megaface_noises.txt")).tolist() == \
        [True, False, True, False]

    # end to end: Aaron's images are e1, Zed's e2/e3; the noisy distractors are e1 (they would tie
    # with Aaron's genuine pairs), the clean ones far away.
    e = np.eye(4, dtype=np.float32)
    np.save(tmp_path / "p.npy", np.stack([e[0], e[0], e[0], e[0], e[1], e[2]]))
    (tmp_path / "p.csv").write_text("path,identity\n" + "".join(
        f"{p},{p.split('/')[0]}\n" for p in probe_paths))
    np.save(tmp_path / "d.npy", np.stack([e[0], e[3], e[0], e[3]]))
    (tmp_path / "d.txt").write_text("\n".join(dist_paths) + "\n")
    cfg = dict(probe_features=tmp_path / "p.npy", probe_list=tmp_path / "p.csv",
               distractor_features=tmp_path / "d.npy", distractor_list=tmp_path / "d.txt")
    raw = run_evaluation(MegaFaceEvalConfig(gallery_sizes=[4], **cfg))
    assert raw["trials"] == 4 * 3 + 2 and raw["rank1"] == 0.0  # every Aaron pair ties a distractor
    refined = run_evaluation(MegaFaceEvalConfig(gallery_sizes=[2], noise_dir=NOISES, **cfg))
    assert refined["meta"]["probes_removed"] == 2 and refined["meta"]["distractors_removed"] == 2
    assert refined["trials"] == 2 + 2 and refined["rank1"] == 0.5  # Aaron's 2 clean: hits; Zed: 0
    with pytest.raises(DataError, match="gallery size 3 exceeds the 2 distractors .* removing 2 noisy"):
        run_evaluation(MegaFaceEvalConfig(gallery_sizes=[3], noise_dir=NOISES, **cfg))
