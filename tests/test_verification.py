"""insightface verification .bin files: the three pickle flavours, the refused pickle, and the
10-fold protocol on a 20-pair case worked by hand."""
from __future__ import annotations

import json
import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from facelt.cli import main
from facelt.errors import DataError
from facelt.faces.verification import VerificationSet, fold_bounds, read_bin, verification_metrics

# ------------------------------------------------------------------ the hand-worked 20-pair case
# Pairs alternate genuine (even) / impostor (odd).  Squared distances after L2 normalisation:
# genuine 0.3055 except pair 0 (1.7055) and pair 18 (0.7055); impostor 1.5055 except pair 5
# (0.1055).  All sit 0.0005 off the 0.01 / 0.001 threshold grids.
DIST = np.array([1.7055 if i == 0 else 0.7055 if i == 18 else 0.3055 if i % 2 == 0 else
                 0.1055 if i == 5 else 1.5055 for i in range(20)])
ISSAME = np.array([i % 2 == 0 for i in range(20)])


def features_for(dist: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Two 2-d rows per pair whose normalised squared distance is ``dist`` (c = 1 - d / 2)."""
    rows = []
    for d in dist:
        c = 1.0 - d / 2.0
        rows += [[scale, 0.0], [scale * 0.5 * c, scale * 0.5 * np.sqrt(1 - c * c)]]
    return np.asarray(rows, dtype=np.float32)


def test_twenty_pairs_by_hand():
    # Training folds (18 pairs) by hand, accuracy of dist < t as t grows:
    #  fold 0 (test pairs 0, 1):  best region (0.7055, 1.5055] -> t = 0.71; pair 0 (genuine,
    #    1.7055) rejected -> 1/2.
    #  fold 2 (test 4, 5): best (0.7055, 1.5055] -> 0.71; pair 5 (impostor 0.1055) accepted -> 1/2.
    #  fold 9 (test 18, 19): training has no 0.7055 pair, best region (0.3055, 1.5055]; its FIRST
    #    maximum is 0.31, so pair 18 (genuine 0.7055) is rejected -> 1/2 (the last maximum, 1.50,
    #    would accept it).
    #  folds 1, 3..8: best 0.71, both test pairs right -> 1.
    accs = [0.5, 1, 0.5, 1, 1, 1, 1, 1, 1, 0.5]
    m = verification_metrics(features_for(DIST), ISSAME)
    assert m["pairs"] == 20
    assert m["fold_accuracies"] == pytest.approx(accs)
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["std"] == pytest.approx(np.sqrt((3 * 0.35 ** 2 + 7 * 0.15 ** 2) / 10))  # np.std, ddof 0
    assert m["fold_thresholds"] == pytest.approx([0.71] * 9 + [0.31])
    assert m["threshold"] == pytest.approx(0.67)
    # VAL at FAR 1e-3: training FAR reaches 1e-3 at the first accepted impostor.  Folds holding
    # pair 5 in training: threshold 0.105 + 0.001 * 1e-3 / (1/9) = 0.105009; no test pair is
    # below it -> TAR 0, FAR 0.  Fold 2: the impostors are all at 1.5055 -> 1.505009; its
    # genuine 0.3055 and impostor 0.1055 are both accepted -> TAR 1, FAR 1.
    assert m["val"] == pytest.approx(0.1)
    assert m["val_std"] == pytest.approx(0.3)
    assert m["far"] == pytest.approx(0.1)


def test_folds_in_order_the_first_ones_larger():
    assert fold_bounds(23) == [(0, 3), (3, 6), (6, 9)] + [(9 + 2 * k, 11 + 2 * k) for k in range(7)]
    assert fold_bounds(20)[-1] == (18, 20)
    with pytest.raises(DataError, match="10 folds"):
        fold_bounds(9)


# ------------------------------------------------------------------------------ bin flavours

def _images(n: int) -> list[np.ndarray]:
    """``n`` distinct 8x6 RGB images: left half colour (r, g, b), right half another."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = np.empty((8, 6, 3), dtype=np.uint8)
        img[:, :3] = rng.integers(0, 256, 3)
        img[:, 3:] = rng.integers(0, 256, 3)
        out.append(img)
    return out


def _png(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # lossless
    assert ok
    return buf  # uint8 (n, 1), what cv2.imencode packers pickled


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for a (list of str, list of bool) tuple:
    BINSTRING for py2 str, NEWTRUE/NEWFALSE, TUPLE2."""
    out = bytearray(b"\x80\x02]q\x00(")
    for b in bins:
        out += b"T" + struct.pack("<i", len(b)) + b
    out += b"e]q\x01("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    out += b"e\x86q\x02."
    return bytes(out)


@pytest.fixture(scope="module")
def pairs_data():
    imgs = _images(40)
    return imgs, [bool(s) for s in ISSAME]


@pytest.mark.parametrize("flavour", ["py2_str", "numpy_p2", "numpy_p4", "numpy_p5", "bytes_p2",
                                     "bytes_p4"])
def test_every_flavour_loads(flavour, pairs_data, tmp_path):
    imgs, issame = pairs_data
    encoded = [_png(x) for x in imgs]
    path = tmp_path / f"{flavour}.bin"
    if flavour == "py2_str":
        path.write_bytes(_py2_pickle([e.tobytes() for e in encoded], issame))
    elif flavour.startswith("numpy"):
        path.write_bytes(pickle.dumps((encoded, issame), protocol=int(flavour[-1])))
    else:
        path.write_bytes(pickle.dumps(([e.tobytes() for e in encoded], issame),
                                      protocol=int(flavour[-1])))
    bins, same = read_bin(path)
    assert [b for b in bins] == [e.tobytes() for e in encoded]
    assert same.tolist() == issame
    vs = VerificationSet.load(path)
    assert vs.pairs == 20 and vs.images.shape == (40, 8, 6, 3)
    np.testing.assert_array_equal(vs.images, np.stack(imgs))  # decoded once, RGB
    assert VerificationSet.load(path, image_size=16).images.shape == (40, 16, 16, 3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(marker), b"x"], [True]), protocol=2))
    with pytest.raises(DataError, match=r"evil\.bin.*refused.*(posix|os)\.system"):
        read_bin(path)
    assert not marker.exists()
    # numpy's object arrays are refused too (their reconstruction could hold anything)
    obj = tmp_path / "object.bin"
    obj.write_bytes(pickle.dumps(([np.array([b"x"], dtype=object), b"y"], [True]), protocol=4))
    with pytest.raises(DataError, match="object.bin.*refused"):
        read_bin(obj)
    assert main(["verify", "--bin", str(path), "--features", str(path)]) == 2


def test_malformed_bins_are_named(tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True, False])))
    with pytest.raises(DataError, match=r"short\.bin: 3 images for 2 pairs"):
        read_bin(p)
    q = tmp_path / "junk.bin"
    q.write_bytes(pickle.dumps(([b"not an image", b"x"], [True])))
    with pytest.raises(DataError, match=r"junk\.bin: image 0 .* not an image"):
        VerificationSet.load(q)


# ------------------------------------------------------------------------- model evaluation

class HalvesEmbedder:
    """Embedding of an image = (mean R of the left half, mean R of the right half, mean G)."""

    input_size = (8, 6)

    def __call__(self, images):
        x = images.astype(np.float32)
        return np.stack([x[:, :, :3, 0].mean((1, 2)), x[:, :, 3:, 0].mean((1, 2)),
                         x[:, :, :, 1].mean((1, 2))], axis=1)


def test_evaluate_model_embeds_image_plus_mirror(pairs_data, tmp_path):
    imgs, issame = pairs_data
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps(([_png(x) for x in imgs], issame)))
    vs = VerificationSet.load(path)
    res = vs.evaluate_model(HalvesEmbedder(), batch_size=7)
    # by hand: left colour (r1, g1, .), right (r2, g2, .): embed = (r1, r2, (g1+g2)/2), its mirror
    # (r2, r1, same), the sum (r1+r2, r1+r2, g1+g2)
    exp, norms = [], []
    for x in imgs:
        r1, r2 = float(x[0, 0, 0]), float(x[0, 5, 0])
        g = (float(x[0, 0, 1]) + float(x[0, 5, 1])) / 2
        exp.append([r1 + r2, r1 + r2, 2 * g])
        norms += [np.sqrt(r1 ** 2 + r2 ** 2 + g ** 2)] * 2
    want = verification_metrics(np.asarray(exp, np.float32), np.asarray(issame))
    assert res["accuracy"] == pytest.approx(want["accuracy"])
    assert res["threshold"] == pytest.approx(want["threshold"])
    assert res["xnorm"] == pytest.approx(np.mean(norms), rel=1e-5)


def test_cli_verify_from_features(tmp_path, capsys):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([b"x"] * 40, [bool(s) for s in ISSAME])))  # images unused
    feats = tmp_path / "f.npy"
    np.save(feats, features_for(DIST))
    assert main(["verify", "--bin", str(path), "--features", str(feats), "--json",
                 "--out", str(tmp_path / "rep")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["pairs"] == 20 and got["accuracy"] == pytest.approx(0.85)
    assert got["threshold"] == pytest.approx(0.67) and got["std"] == pytest.approx(0.2291287847)
    assert (tmp_path / "rep" / "report.md").is_file()
    assert main(["verify", "--bin", str(path), "--bin", str(path), "--features", str(feats),
                 "--features", str(feats), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert isinstance(both, list) and len(both) == 2
    np.save(feats, features_for(DIST)[:38])
    assert main(["verify", "--bin", str(path), "--features", str(feats)]) == 2
    assert "38 rows" in capsys.readouterr().err


@pytest.mark.parametrize("n", [300, 305])
def test_matches_a_plain_transcription_of_the_protocol(n):
    """insightface's calculate_roc written out with loops (np.less per threshold, sklearn KFold's
    fold sizes), against the sorted-count implementation, on random features."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2 * n, 8)).astype(np.float32)
    same = rng.random(n) < 0.5
    x[1::2][same] = x[0::2][same] + 0.8 * rng.standard_normal((int(same.sum()), 8)).astype(np.float32)
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.sum(np.square(e[0::2] - e[1::2]), 1)
    thresholds = np.arange(0, 4, 0.01)
    sizes = [n // 10 + (1 if k < n % 10 else 0) for k in range(10)]
    bounds = np.cumsum([0] + sizes)
    accs, best = [], []
    for k in range(10):
        test = np.arange(bounds[k], bounds[k + 1])
        train = np.setdiff1d(np.arange(n), test)

        def acc(t, idx):
            pred = np.less(dist[idx], t)
            return np.sum(pred == same[idx]) / len(idx)
        tr = [acc(t, train) for t in thresholds]
        b = thresholds[int(np.argmax(tr))]
        best.append(b)
        accs.append(acc(b, test))
    m = verification_metrics(x, same)
    assert m["fold_accuracies"] == pytest.approx(accs)
    assert m["fold_thresholds"] == pytest.approx(best)
    assert m["accuracy"] == pytest.approx(np.mean(accs)) and m["std"] == pytest.approx(np.std(accs))
