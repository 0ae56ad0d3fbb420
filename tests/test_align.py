"""Face alignment: Umeyama similarity, the ArcFace template, landmark readers, ``facelt align``."""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelt.faces.align import (ARCFACE_DST_112, estimate_norm, estimate_similarity, norm_crop,
                                template)
from facelt.errors import DataError, FaceltError
from facelt.faces.landmarks import (MTCNNDetector, read_landmarks_csv, read_landmarks_json,
                              read_megaface_json)
from tests.conftest import interop_import

# insightface's arcface_dst, typed in from its face_align.py (an independent copy of the
# constants, so a typo in facelt.faces.align is caught).
INSIGHTFACE_ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                    [41.5493, 92.3655], [70.7299, 92.2041]])

BLOB_SIGMA = 2.0


def render_template(size: int = 112) -> np.ndarray:
    """A 3-channel test card: ch0 Gaussian blobs at the template points, ch1/ch2 smooth texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    blobs = np.zeros((size, size))
    for x, y in INSIGHTFACE_ARCFACE_DST * size / 112.0:
        blobs += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * BLOB_SIGMA ** 2))
    texture = 128 + 90 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
    ramp = 40 + 1.5 * xx + 0.5 * yy
    img = np.stack([255 * blobs, texture, ramp], axis=2)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def known_transform(angle_deg: float = 30.0, scale: float = 1.7,
                    shift: tuple[float, float] = (70.0, 20.0)) -> np.ndarray:
    """Template -> photo: rotate by angle, scale, then shift (a 2x3 matrix)."""
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def blob_centroids(channel: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of the blob in a window around each expected point."""
    out = []
    h, w = channel.shape
    for x0, y0 in near:
        xs = slice(max(int(round(x0)) - radius, 0), min(int(round(x0)) + radius + 1, w))
        ys = slice(max(int(round(y0)) - radius, 0), min(int(round(y0)) + radius + 1, h))
        win = channel[ys, xs].astype(np.float64)
        yy, xx = np.mgrid[ys, xs]
        out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
    return np.array(out)


@pytest.fixture(scope="module")
def photo():
    """The template card warped into a 250x250 'photo' by the known transform."""
    card = render_template()
    fwd = known_transform()
    img = cv2.warpAffine(card, fwd, (250, 250), flags=cv2.INTER_LINEAR, borderValue=0)
    lmk = INSIGHTFACE_ARCFACE_DST @ fwd[:, :2].T + fwd[:, 2]
    return card, fwd, img, lmk


# ----------------------------------------------------------------------------- geometry


def test_template_constants_match_insightface():
    np.testing.assert_allclose(ARCFACE_DST_112, INSIGHTFACE_ARCFACE_DST, atol=1e-4)
    np.testing.assert_allclose(template(112), INSIGHTFACE_ARCFACE_DST, atol=1e-4)
    # insightface's rule: 224 doubles the template; 128 keeps the scale and shifts x by 8.
    np.testing.assert_allclose(template(224), 2 * INSIGHTFACE_ARCFACE_DST, atol=1e-4)
    np.testing.assert_allclose(template(128), INSIGHTFACE_ARCFACE_DST + [8.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(template(256), 2 * INSIGHTFACE_ARCFACE_DST + [16.0, 0.0], atol=1e-4)
    for bad in (0, 100, 160):
        with pytest.raises(FaceltError, match="multiple of 112"):
            template(bad)


def test_estimated_matrix_is_inverse_of_known_transform(photo):
    _card, fwd, _img, lmk = photo
    inv = cv2.invertAffineTransform(fwd)
    np.testing.assert_allclose(estimate_norm(lmk, 112), inv, atol=1e-5)
    # Hand values: the inverse of s*R(30deg) is R(-30deg)/s.
    m = estimate_norm(lmk, 112)
    assert m[0, 0] == pytest.approx(math.cos(math.radians(30)) / 1.7, abs=1e-6)
    assert m[0, 1] == pytest.approx(math.sin(math.radians(30)) / 1.7, abs=1e-6)


def test_exact_similarity_recovered_from_hand_points():
    # Unit square -> rotated 90 degrees, scaled 2, shifted (3, -1).
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    dst = np.array([[3, -1], [3, 1], [1, 1], [1, -1]], dtype=float)
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m, [[0, -2, 3], [2, 0, -1]], atol=1e-12)


def test_reflection_is_never_produced():
    # dst is src mirrored in the x axis.  Hand result: with src covariance diag(2, 0.5) the
    # best proper rotation is the identity, scale (2 - 0.5) / (2 + 0.5) = 0.6, no shift.
    src = np.array([[2, 0], [-2, 0], [0, 1], [0, -1]], dtype=float)
    dst = src * [1, -1]
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m, [[0.6, 0, 0], [0, 0.6, 0]], atol=1e-12)
    # The mirrored ArcFace template and random point sets: det(sR) > 0 always.
    mirrored = INSIGHTFACE_ARCFACE_DST * [-1, 1] + [112, 0]
    assert np.linalg.det(estimate_norm(mirrored)[:, :2]) > 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        pts = rng.normal(size=(5, 2)) * 30 + 100
        assert np.linalg.det(estimate_norm(pts)[:, :2]) > 0


def test_degenerate_and_malformed_landmarks_raise():
    with pytest.raises(FaceltError, match="coincide"):
        estimate_norm(np.full((5, 2), 7.0))
    with pytest.raises(FaceltError, match="5 landmarks"):
        estimate_norm(np.zeros((4, 2)) + np.arange(4)[:, None])
    with pytest.raises(FaceltError, match="non-finite"):
        estimate_norm(np.where(np.eye(5, 2) > 0, np.nan, 1.0) + np.arange(5)[:, None])


# ----------------------------------------------------------------------------- crops


def test_norm_crop_brings_back_the_template(photo):
    card, fwd, img, lmk = photo
    crop = norm_crop(img, lmk, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    cents = blob_centroids(crop[:, :, 0], INSIGHTFACE_ARCFACE_DST)
    assert np.abs(cents - INSIGHTFACE_ARCFACE_DST).max() < 1.0
    # Compare where the card was fully inside the photo (the rotated card is wider than 250).
    yy, xx = np.mgrid[0:112, 0:112].astype(float)
    px = fwd[0, 0] * xx + fwd[0, 1] * yy + fwd[0, 2]
    py = fwd[1, 0] * xx + fwd[1, 1] * yy + fwd[1, 2]
    inside = (px > 2) & (px < 247) & (py > 2) & (py < 247)
    inside[:2], inside[-2:], inside[:, :2], inside[:, -2:] = False, False, False, False
    assert inside.sum() > 0.7 * 112 * 112
    diff = np.abs(crop.astype(int) - card.astype(int))[inside]
    assert diff.mean() < 0.5, diff.mean()  # a 1-px shift gives ~2.2 here
    assert diff.max() <= 20, diff.max()  # blob peaks lose a little to two bilinear passes


def test_norm_crop_128_shifts_the_face_by_8(photo):
    _card, _fwd, img, lmk = photo
    crop = norm_crop(img, lmk, 128)
    assert crop.shape == (128, 128, 3)
    expect = INSIGHTFACE_ARCFACE_DST + [8.0, 0.0]
    assert np.abs(blob_centroids(crop[:, :, 0], expect) - expect).max() < 1.0


def test_norm_crop_border_is_black_and_grey_images_work():
    img = np.full((40, 40), 200, np.uint8)  # the crop reaches past the photo
    lmk = INSIGHTFACE_ARCFACE_DST * 0.5 + 2  # half size: photo x,y in [0,40) -> crop [-4,76)
    crop = norm_crop(img, lmk, 112)
    assert crop.shape == (112, 112)
    assert crop[-1, -1] == 0 and crop[56, 56] == 200


def test_matches_insightface_norm_crop_when_installed(photo):
    fa = interop_import("insightface.utils.face_align",
                        reason="insightface is not installed (optional comparison)")
    _card, _fwd, img, lmk = photo
    for size in (112, 128):
        ours = norm_crop(img, lmk.astype(np.float32), size).astype(int)
        theirs = fa.norm_crop(img, lmk.astype(np.float32), image_size=size).astype(int)
        assert np.abs(ours - theirs).max() <= 1


def test_matches_skimage_similarity_when_installed(photo):
    """insightface's recipe rebuilt from its parts: skimage's Umeyama + cv2.warpAffine."""
    transform = interop_import("skimage.transform",
                               reason="scikit-image is not installed (optional comparison)")
    _card, _fwd, img, lmk = photo
    rng = np.random.default_rng(1)
    for trial in range(20):
        pts = (lmk + rng.normal(scale=3.0, size=lmk.shape)).astype(np.float32)
        if trial == 0:
            pts = (INSIGHTFACE_ARCFACE_DST * [-1, 1] + [200, 30]).astype(np.float32)  # mirrored
        for size in (112, 128):
            ratio = size / 112.0 if size % 112 == 0 else size / 128.0
            dst = INSIGHTFACE_ARCFACE_DST.astype(np.float32) * ratio
            dst[:, 0] += 0.0 if size % 112 == 0 else 8.0 * ratio
            tform = transform.SimilarityTransform()
            with warnings.catch_warnings():  # estimate() is deprecated in scikit-image 0.26
                warnings.simplefilter("ignore", FutureWarning)
                assert tform.estimate(pts, dst)
            ref_m = tform.params[0:2, :]
            # recent scikit-image keeps float32 inputs in float32: agree to float32 precision
            np.testing.assert_allclose(estimate_norm(pts, size), ref_m, rtol=1e-5, atol=1e-4)
            ref = cv2.warpAffine(img, ref_m, (size, size), borderValue=0.0)
            assert np.abs(norm_crop(img, pts, size).astype(int) - ref.astype(int)).max() <= 1


def test_estimate_norm_maps_the_landmarks_onto_the_template(photo):
    _card, fwd, _img, lmk = photo
    m = estimate_norm(lmk)
    back = lmk @ m[:, :2].T + m[:, 2]           # the 2x3 matrix applied to the landmarks
    np.testing.assert_allclose(back, INSIGHTFACE_ARCFACE_DST, atol=1e-5)


# ----------------------------------------------------------------------------- landmark files


CSV_HEADER = "path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n"


def test_read_landmarks_csv(tmp_path):
    f = tmp_path / "lm.csv"
    f.write_text(CSV_HEADER + "a/1.jpg,1,2,3,4,5,6,7,8,9,10\n\n"
                 "\"b,c/2.png\",1.5,2,3,4,5,6,7,8,9,10\n")
    table = read_landmarks_csv(f)
    assert sorted(table) == ["a/1.jpg", "b,c/2.png"]
    np.testing.assert_array_equal(table["a/1.jpg"], [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    assert table["b,c/2.png"].dtype == np.float32 and table["b,c/2.png"][0, 0] == 1.5


@pytest.mark.parametrize("body, match", [
    ("path,x,y\n", r"lm\.csv:1: header"),
    (CSV_HEADER + "a.jpg,1,2,3\n", r"lm\.csv:2: 4 columns, expected 11"),
    (CSV_HEADER + "a.jpg,1,2,3,4,5,6,7,8,9,10\nb.jpg,1,2,3,4,five,6,7,8,9,10\n",
     r"lm\.csv:3: coordinates must be numbers"),
    (CSV_HEADER + "a.jpg,1,2,3,4,5,6,7,8,9,nan\n", r"lm\.csv:2: non-finite"),
    (CSV_HEADER + "a.jpg,1,2,3,4,5,6,7,8,9,10\na.jpg,1,2,3,4,5,6,7,8,9,10\n",
     r"lm\.csv:3: image 'a.jpg' is listed twice"),
    ("", r"empty file"),
])
def test_read_landmarks_csv_errors(tmp_path, body, match):
    f = tmp_path / "lm.csv"
    f.write_text(body)
    with pytest.raises(DataError, match=match):
        read_landmarks_csv(f)


def test_read_landmarks_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_landmarks_csv(tmp_path / "nope.csv")


def test_read_megaface_json_68_points(tmp_path):
    pts = {str(i): {"x": float(i), "y": float(2 * i)} for i in range(68)}
    f = tmp_path / "img.jpg.json"
    f.write_text(json.dumps({"bounding_box": {"x": 0, "y": 0, "width": 9, "height": 9},
                             "landmarks": pts}))
    five = read_megaface_json(f)
    # Hand values: eyes are means of points 36..41 (38.5) and 42..47 (44.5); nose 30;
    # mouth corners 48 and 54.
    np.testing.assert_allclose(five, [[38.5, 77], [44.5, 89], [30, 60], [48, 96], [54, 108]])


def test_read_megaface_json_5_points_and_errors(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"landmarks": {str(i): [10 * i, i] for i in range(5)}}))
    np.testing.assert_allclose(read_megaface_json(f), [[0, 0], [10, 1], [20, 2], [30, 3], [40, 4]])
    f.write_text(json.dumps({"landmarks": {str(i): {"x": 1, "y": 2} for i in range(3)}}))
    with pytest.raises(DataError, match=r"a\.json: 3 landmarks"):
        read_megaface_json(f)
    f.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_megaface_json(f)
    f.write_text(json.dumps({"landmarks": {str(i): {"x": "left"} for i in range(5)}}))
    with pytest.raises(DataError, match="landmark 0"):
        read_megaface_json(f)


def test_read_landmarks_json_table(tmp_path):
    f = tmp_path / "t.json"
    rec = {"landmarks": {str(i): {"x": i, "y": i} for i in range(5)}}
    f.write_text(json.dumps({"x/1.jpg": rec}))
    assert read_landmarks_json(f)["x/1.jpg"].shape == (5, 2)


def test_mtcnn_detector_without_facenet_pytorch_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import now fails
    with pytest.raises(FaceltError, match="pip install --no-deps facenet-pytorch"):
        MTCNNDetector()


def test_mtcnn_on_a_real_photo_when_installed():
    """Optional: facenet-pytorch's MTCNN on scikit-image's astronaut portrait (a real face)."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is not installed (optional)")
    data = pytest.importorskip("skimage.data", reason="scikit-image (for its sample photo) "
                               "is not installed")
    bgr = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    pts = MTCNNDetector().detect(bgr)
    assert pts is not None and pts.shape == (5, 2)
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = pts
    assert lx < nx < rx and mlx < mrx           # image-left before image-right
    assert max(ly, ry) < ny < min(mly, mry)     # eyes above the nose above the mouth
    assert MTCNNDetector().detect(np.zeros((200, 200, 3), np.uint8)) is None


# ----------------------------------------------------------------------------- CLI


def _cli_args(images: Path, out: Path, **kw) -> argparse.Namespace:
    from facelt.cli import align as cli_align
    parser = argparse.ArgumentParser()
    cli_align.register(parser.add_subparsers())
    argv = ["align", "--images", str(images), "--out", str(out)]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


def _photo_set(root: Path, photo) -> None:
    _card, _fwd, img, _lmk = photo
    (root / "id1").mkdir(parents=True)
    (root / "id2" / "deep").mkdir(parents=True)
    cv2.imwrite(str(root / "id1" / "a.png"), img)
    cv2.imwrite(str(root / "id2" / "deep" / "b.jpg"), img)
    cv2.imwrite(str(root / "id2" / "c.png"), img)  # not in the landmark table
    (root / "id2" / "notes.txt").write_text("not an image")


def test_cli_aligns_keeps_paths_lists_failures_and_resumes(tmp_path, photo, capsys):
    from facelt.cli import align as cli_align
    images, out = tmp_path / "photos", tmp_path / "aligned"
    _photo_set(images, photo)
    lmk = photo[3]
    row = ",".join(f"{v:.6f}" for v in lmk.ravel())
    table = tmp_path / "lm.csv"
    table.write_text(CSV_HEADER + f"id1/a.png,{row}\nid2/deep/b.jpg,{row}\n")

    assert cli_align.run(_cli_args(images, out, landmarks=table)) == 0
    a = cv2.imread(str(out / "id1" / "a.png"))
    b = cv2.imread(str(out / "id2" / "deep" / "b.jpg"))
    assert a.shape == b.shape == (112, 112, 3)
    assert not (out / "id2" / "c.png").exists()
    for crop in (a, b):  # the lossless PNG and the JPEG both put the blobs on the template
        cents = blob_centroids(crop[:, :, 0], INSIGHTFACE_ARCFACE_DST)
        assert np.abs(cents - INSIGHTFACE_ARCFACE_DST).max() < 1.0
    failures = (out / "failures.txt").read_text().splitlines()
    assert failures == ["id2/c.png\tno landmarks in the table"]
    assert not list(out.rglob("*.tmp"))
    first = capsys.readouterr().out
    assert "aligned 2" in first and "failed 1 of 3" in first

    # Rerun: complete outputs are skipped (not rewritten); a removed one is redone.
    mtime = (out / "id1" / "a.png").stat().st_mtime_ns
    (out / "id2" / "deep" / "b.jpg").unlink()
    assert cli_align.run(_cli_args(images, out, landmarks=table)) == 0
    assert (out / "id1" / "a.png").stat().st_mtime_ns == mtime
    assert (out / "id2" / "deep" / "b.jpg").is_file()
    assert "aligned 1, already done 1" in capsys.readouterr().out


def test_cli_sidecar_json_and_size_128(tmp_path, photo):
    from facelt.cli import align as cli_align
    images, out = tmp_path / "photos", tmp_path / "aligned"
    _photo_set(images, photo)
    lmk = photo[3]
    side = {"landmarks": {str(i): {"x": float(x), "y": float(y)} for i, (x, y) in enumerate(lmk)}}
    (images / "id1" / "a.png.json").write_text(json.dumps(side))
    (images / "id2" / "c.png.json").write_text("{broken")
    assert cli_align.run(_cli_args(images, out, sidecar_json=True, size=128)) == 0
    crop = cv2.imread(str(out / "id1" / "a.png"))
    expect = INSIGHTFACE_ARCFACE_DST + [8.0, 0.0]
    assert np.abs(blob_centroids(crop[:, :, 0], expect) - expect).max() < 1.0
    failures = dict(line.split("\t", 1)
                    for line in (out / "failures.txt").read_text().splitlines())
    assert set(failures) == {"id2/c.png", "id2/deep/b.jpg"}
    assert "not valid JSON" in failures["id2/c.png"]
    assert "no landmark file b.jpg.json" in failures["id2/deep/b.jpg"]


def test_cli_without_landmarks_needs_the_detector(tmp_path, photo, monkeypatch):
    from facelt.cli import align as cli_align
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    images = tmp_path / "photos"
    _photo_set(images, photo)
    with pytest.raises(FaceltError, match="facenet-pytorch"):
        cli_align.run(_cli_args(images, tmp_path / "out"))
    with pytest.raises(FaceltError, match="multiple of 112"):
        cli_align.run(_cli_args(images, tmp_path / "out", landmarks=tmp_path / "x.csv", size=100))
