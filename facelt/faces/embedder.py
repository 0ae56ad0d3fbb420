"""``facelt.load_embedder(path)``: a face model (a facelt checkpoint or an ONNX recognition model)
as a Python object whose ``embed(images)`` returns L2-normalised float32 features, through the
one embedding routine every face protocol uses (:mod:`facelt.features.embed`: resize to the
model's input, flip-sum, then L2)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from facelt.errors import FaceltError

__all__ = ["FaceEmbedder", "load_embedder"]


class FaceEmbedder:
    """``embed(images)``: ``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8 RGB face crops ->
    ``(N, d)`` float32 rows of unit L2 norm (``embed(x) + embed(mirror(x))`` with ``flip``, as
    insightface evaluates). Images of another size are resized to ``input_size``."""

    def __init__(self, embedder, path: Path, flip: bool = True, batch_size: int = 64) -> None:
        self.embedder, self.path, self.flip, self.batch_size = embedder, path, flip, batch_size
        self.input_size: tuple[int, int] = tuple(embedder.input_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        from facelt.features.embed import embed_array
        from facelt.features.files import l2_normalize
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        feats = embed_array(self.embedder, images, self.batch_size, self.flip,
                            desc=f"embed {self.path.name}").features
        return l2_normalize(feats, out=feats)

    def __repr__(self) -> str:
        return f"FaceEmbedder({str(self.path)!r}, input_size={self.input_size}, flip={self.flip})"


def load_embedder(path: Union[str, os.PathLike], device: str = "auto", flip: bool = True,
                  batch_size: int = 64) -> FaceEmbedder:
    """The face model at ``path``: an ONNX file (``.onnx``: onnxruntime, insightface's
    ``(x - 127.5) / 127.5`` convention) or a facelt checkpoint (``.pt``: its images presented as
    its test images were); ``device`` (auto / cpu / cuda) for a checkpoint."""
    from facelt.faces.face_model import FaceModelSpec, face_embedder
    p = Path(path)
    if not p.is_file():
        raise FaceltError(f"load_embedder: {p} is not a file (expected a facelt checkpoint or an "
                          f"ONNX model)")
    spec = (FaceModelSpec(onnx=str(p), flip=flip) if p.suffix.lower() == ".onnx"
            else FaceModelSpec(checkpoint=str(p), device=device, flip=flip))
    return FaceEmbedder(face_embedder(spec), p, flip, batch_size)
