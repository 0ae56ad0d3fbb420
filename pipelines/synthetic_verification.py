"""A SYNTHETIC face verification set in insightface's ``.bin`` format (like ``lfw.bin``).

:func:`write_synthetic_verification_bin` renders new images of SYNTHETIC identities
(:mod:`pipelines.synthetic_faces`, training-namespace indices: pass indices at or above the
training set's identity count for identities never seen in training) and pairs them:

* a positive pair: two different images of one identity;
* a negative pair: one image each of two different identities;
* positives and negatives alternate (pair ``2j`` positive, ``2j + 1`` negative), so each of the
  protocol's 10 folds (in file order) holds both kinds in equal numbers.

Images come from their own image stream (``stream``, never the training stream 0), JPEG-encoded
like insightface's sets, written by :func:`facelt.faces.verification.write_bin`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facelt.faces.verification import write_bin
from pipelines.synthetic_faces import synthetic_probes

#: the demo's verification images: a stream no other demo set uses
VERIFICATION_STREAM = 5


def write_synthetic_verification_bin(path: str | os.PathLike, identities: Sequence[int] | np.ndarray,
                                     num_pairs: int, seed: int, size: int = 112,
                                     images_per_identity: int = 4,
                                     stream: int = VERIFICATION_STREAM, quality: int = 95) -> dict:
    """Write ``num_pairs`` (even, >= 10) pairs of the SYNTHETIC ``identities`` (at least 2) to
    ``path``; returns a description (counts, identities, seed, stream)."""
    ids = np.asarray(identities, dtype=np.int64).reshape(-1)
    if len(np.unique(ids)) != len(ids) or len(ids) < 2:
        raise ValueError("need at least 2 distinct identities")
    if num_pairs < 10 or num_pairs % 2:
        raise ValueError("num_pairs must be even and >= 10 (the protocol has 10 folds)")
    if images_per_identity < 2:
        raise ValueError("images_per_identity must be >= 2 (a positive pair needs two images)")
    images, owner = synthetic_probes(ids, images_per_identity, seed=seed, size=size, stream=stream)
    k = images_per_identity
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 4242, int(stream)])))
    rows: list[int] = []
    issame: list[bool] = []
    for j in range(num_pairs // 2):
        a = j % len(ids)  # every identity gets positive pairs in turn
        i1, i2 = rng.choice(k, size=2, replace=False)
        rows += [a * k + int(i1), a * k + int(i2)]
        b1, b2 = rng.choice(len(ids), size=2, replace=False)
        rows += [int(b1) * k + int(rng.integers(k)), int(b2) * k + int(rng.integers(k))]
        issame += [True, False]
    encoded = []
    for r in rows:
        ok, buf = cv2.imencode(".jpg", images[r], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:  # pragma: no cover - OpenCV fails only on a broken install
            raise RuntimeError("OpenCV could not JPEG-encode an image")
        encoded.append(buf.tobytes())
    write_bin(path, encoded, issame)
    return {"synthetic": True, "path": str(Path(path)), "pairs": num_pairs,
            "positive": num_pairs // 2, "negative": num_pairs // 2,
            "identities": ids.tolist(), "images_per_identity": k, "seed": int(seed),
            "stream": int(stream), "image_size": int(size),
            "pair_identities": owner[np.asarray(rows)].reshape(-1, 2).tolist()}
