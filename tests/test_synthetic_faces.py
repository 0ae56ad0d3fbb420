"""SYNTHETIC face identities (pipelines.synthetic_faces): images, long-tail law, rec output."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.synthetic_faces import (identity_seed, long_tail_counts, render_identity_images,
                                       synthetic_probes)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_images_are_112_bgr_uint8_and_deterministic() -> None:
    a = render_identity_images(identity_seed(0, 3), 4)
    b = render_identity_images(identity_seed(0, 3), 4)
    assert len(a) == 4
    for x, y in zip(a, b):
        assert x.shape == (112, 112, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, y)
    assert _mad(a[0], a[1]) > 1.0                          # images of one identity vary


def test_same_identity_closer_than_different_identities() -> None:
    ids, n = 8, 6
    imgs = [render_identity_images(identity_seed(0, i), n) for i in range(ids)]
    within = [_mad(imgs[i][a], imgs[i][b]) for i in range(ids) for a in range(n) for b in range(a + 1, n)]
    between = [_mad(imgs[i][a], imgs[j][a]) for i in range(ids) for j in range(i + 1, ids) for a in range(n)]
    assert np.mean(within) < 0.7 * np.mean(between)


def test_probes_are_new_images_of_the_identity() -> None:
    train = render_identity_images(identity_seed(0, 2), 4)
    probes, who = synthetic_probes([2, 5], images_per_identity=3, seed=0)
    assert probes.shape == (6, 112, 112, 3) and probes.dtype == np.uint8
    np.testing.assert_array_equal(who, [2, 2, 2, 5, 5, 5])
    other = render_identity_images(identity_seed(0, 5), 4)
    for probe in probes[:3]:
        assert all(_mad(probe, t) > 0.5 for t in train)    # not a copy of a training image
        assert np.mean([_mad(probe, t) for t in train]) < np.mean([_mad(probe, o) for o in other])


def test_probe_streams_are_other_new_images_of_the_same_identity() -> None:
    a, _ = synthetic_probes([2], images_per_identity=3, seed=0)             # stream 1
    b, _ = synthetic_probes([2], images_per_identity=3, seed=0, stream=2)
    train = render_identity_images(identity_seed(0, 2), 4)
    other = render_identity_images(identity_seed(0, 5), 4)
    assert all(_mad(x, y) > 0.5 for x in a for y in b)                       # other images ...
    for probe in b:                                                          # ... same identity
        assert np.mean([_mad(probe, t) for t in train]) < np.mean([_mad(probe, o) for o in other])
    with pytest.raises(ValueError):
        synthetic_probes([2], 1, seed=0, stream=0)                           # the training stream


def _pareto_survival(k: float, m: float, top: float, alpha: float) -> float:
    # Pareto(alpha, scale m) truncated to [m, top): P(X >= k) = ((m/k)^a - (m/top)^a) / (1 - (m/top)^a)
    return ((m / k) ** alpha - (m / top) ** alpha) / (1 - (m / top) ** alpha)


@pytest.mark.parametrize("n,alpha", [(500, 1.0), (3000, 0.6)])
def test_long_tail_counts_follow_the_truncated_pareto_law(n: int, alpha: float) -> None:
    counts = long_tail_counts(n, max_count=300, min_count=3, alpha=alpha, seed=7)
    assert counts.shape == (n,) and counts.min() >= 3 and counts.max() <= 300
    # stratified draws (one uniform in each [r/n, (r+1)/n)) put the empirical survival within 1/n
    # of the law; a count is floor(X) so P(count >= k) = P(X >= k), X on [3, 301)
    for k in (3, 4, 6, 10, 20, 50, 100, 200, 300):
        emp = (counts >= k).mean()
        assert abs(emp - _pareto_survival(k, 3, 301, alpha)) <= 1 / n + 1e-12
    assert not np.all(np.diff(counts) <= 0)                # seeded random order, not sorted
    np.testing.assert_array_equal(counts, long_tail_counts(n, 300, 3, alpha, seed=7))


def test_write_synthetic_rec_and_distractors(tmp_path) -> None:
    import json

    import cv2

    from facelt.data.recordio import RecordReader, read_insightface, unpack
    from pipelines.synthetic_faces import write_synthetic_distractors, write_synthetic_rec

    counts = [3, 1, 2]
    manifest = write_synthetic_rec(tmp_path / "train" / "train", counts, seed=9)
    index = read_insightface(tmp_path / "train" / "train")
    assert index.num_classes == 3 and tuple(index.image_size) == (112, 112)
    np.testing.assert_array_equal(index.labels, [0, 0, 0, 1, 2, 2])
    assert (tmp_path / "train" / "property").read_text().strip() == "3,112,112"
    saved = json.loads((tmp_path / "train" / "train.manifest.json").read_text())
    assert saved == manifest and saved["synthetic"] is True and saved["counts"] == counts
    with RecordReader(tmp_path / "train" / "train.rec") as reader:
        header, payload = unpack(reader.read(1))
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert payload[:2] == b"\xff\xd8" and img.shape == (112, 112, 3)   # a JPEG
    # the rec holds the rendered images (JPEG q95 loses a little of the noise): record 1 is
    # identity 0's first image, much closer to it than to that identity's second image
    first, second = render_identity_images(identity_seed(9, 0), 2)
    assert _mad(img, first) < 0.5 * _mad(img, second)

    d = write_synthetic_distractors(tmp_path / "dis" / "train", num_identities=4, seed=9)
    assert d["synthetic"] is True and d["role"] == "distractor" and d["num_images"] == 4
    dis = read_insightface(tmp_path / "dis" / "train")
    assert dis.num_classes == 4
    # distractor identities are not training identities: a distractor image is far from the
    # training identity with the same index
    with RecordReader(tmp_path / "dis" / "train.rec") as reader:
        dimg = cv2.imdecode(np.frombuffer(unpack(reader.read(1))[1], np.uint8), cv2.IMREAD_COLOR)
    assert _mad(dimg, first) > 10.0
    assert identity_seed(9, 0, "distractor") != identity_seed(9, 0, "train")
