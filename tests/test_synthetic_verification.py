"""The demo's SYNTHETIC verification .bin: insightface's format, positives are two different
images of one identity, negatives two identities (checked by matching every decoded image to an
independently rendered one)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facelt.faces.verification import VerificationSet
from pipelines.synthetic_faces import synthetic_probes
from pipelines.synthetic_verification import VERIFICATION_STREAM, write_synthetic_verification_bin


def test_pairs_are_what_they_say(tmp_path):
    ids = np.array([30, 31, 32])
    path = tmp_path / "v.bin"
    write_synthetic_verification_bin(path, ids, 12, seed=1, size=32, images_per_identity=3)
    vs = VerificationSet.load(path)
    assert vs.pairs == 12 and vs.issame.tolist() == [True, False] * 6
    rendered, owner = synthetic_probes(ids, 3, seed=1, size=32, stream=VERIFICATION_STREAM)
    # the same images through the same JPEG codec (quality 95), as RGB
    coded = np.stack([cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
                                                cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for im in rendered])
    which = []
    for img in vs.images:  # every image of the set is exactly one of the rendered ones
        hits = np.flatnonzero((coded == img).all(axis=(1, 2, 3)))
        assert len(hits) == 1
        which.append(int(hits[0]))
    which = np.asarray(which).reshape(-1, 2)
    for (a, b), same in zip(which, vs.issame):
        assert a != b  # never an image paired with itself
        assert (owner[a] == owner[b]) == same


def test_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        write_synthetic_verification_bin("x.bin", [1, 2], 11, seed=0)
    with pytest.raises(ValueError, match="2 distinct"):
        write_synthetic_verification_bin("x.bin", [1, 1], 10, seed=0)
