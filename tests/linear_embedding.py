"""insightface's embedding convention written out for a linear model (test helper).

``(x - 127.5) / 127.5`` on uint8 RGB, NCHW flattened, ``@ weights``, the mirrored image's
embedding added (flip-sum), L2-normalised: what facelt must compute from a hand-built ONNX graph
of one MatMul."""
from __future__ import annotations

import numpy as np


def linear_flip_sum(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The L2-normalised flip-sum of ``images`` (N, H, W, 3 uint8) under ``weights`` (3HW, d)."""
    def emb(x):
        t = (x.astype(np.float32) - 127.5) / 127.5
        return t.transpose(0, 3, 1, 2).reshape(len(x), -1) @ weights
    e = emb(images) + emb(images[:, :, ::-1])
    return e / np.linalg.norm(e, axis=1, keepdims=True)
