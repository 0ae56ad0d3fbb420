"""ONNX face models both ways, in the insightface model-zoo convention.

* :func:`export_onnx` writes a network's body (``net.body``: images -> ``v``; never the head) as
  one NCHW float RGB input of the model's size with a dynamic batch and one ``(N, d)`` output.
  Normalisation ``(x - 127.5) / 127.5`` is either left to the caller (``normalize="outside"``,
  what insightface's ``ArcFaceONNX`` assumes by default) or put into the graph as its first
  ``Sub`` and ``Mul`` nodes (``normalize="inside"``; the nodes are named ``Sub_0``/``Mul_1`` so
  that ``ArcFaceONNX``'s name check sees them and feeds raw pixels).
* :class:`OnnxEmbedder` runs such a model with onnxruntime (the CUDA provider when present) as a
  :class:`facelt.features.embed.ImageEmbedder`: input name and size read from the model, mean/std 127.5
  unless one of the graph's first 8 nodes is a Sub and one a Mul (then 0 and 1), RGB input.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch

from facelt.features.embed import FACE_MEAN, FACE_STD
from facelt.errors import CheckpointError, DataError

Normalize = Literal["outside", "inside"]
INPUT_NAME = "input.1"
OUTPUT_NAME = "embedding"
OPSET = 17


class _EmbeddingGraph(torch.nn.Module):
    """What is exported: optional in-graph normalisation, then the embedding network."""

    def __init__(self, body: torch.nn.Module, normalize_inside: bool) -> None:
        super().__init__()
        self.body = body
        self.normalize_inside = normalize_inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_inside:
            x = (x - FACE_MEAN) * (1.0 / FACE_STD)
        return self.body(x)


def export_onnx(net: torch.nn.Module, out: Union[str, os.PathLike], image_size: int = 112,
                channels: int = 3, normalize: Normalize = "outside", opset: int = OPSET) -> Path:
    """Export ``net``'s body (a facelt network's ``net.body``, or ``net`` itself when it is a
    module mapping images to embeddings) to ``out`` (written to a temporary name, then renamed);
    returns the path.  The network is exported in eval mode on the CPU."""
    import onnx

    from facelt.utils.io import atomic_path
    if normalize not in ("outside", "inside"):
        raise ValueError(f"normalize must be 'outside' or 'inside', got {normalize!r}")
    graph = _EmbeddingGraph(getattr(net, "body", net), normalize == "inside").cpu().eval()
    dummy = torch.full((2, channels, image_size, image_size), 127.0)
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # The TorchScript exporter: offline, needs only onnx (the dynamo one also pulls onnxscript).
        torch.onnx.export(graph, (dummy,), str(tmp), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "None"}, OUTPUT_NAME: {0: "None"}},
                          do_constant_folding=True)
        model = onnx.load(str(tmp))
        if normalize == "inside":
            _name_normalisation_nodes(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out


def _name_normalisation_nodes(model) -> None:
    """Name the first Sub and Mul ``Sub_0`` / ``Mul_1`` (insightface checks node names)."""
    names = {"Sub": "Sub_0", "Mul": "Mul_1"}
    for node in model.graph.node[:8]:
        if node.op_type in names:
            node.name = names.pop(node.op_type)
    if names:
        raise RuntimeError(f"in-graph normalisation: no {sorted(names)} node among the first 8")


def normalisation_in_graph(model) -> bool:
    """insightface's rule: a Sub and a Mul among the first 8 nodes (by name as ``ArcFaceONNX``
    checks, or by op type) mean the graph normalises its raw-pixel input itself."""
    sub = mul = False
    for node in model.graph.node[:8]:
        if node.name.startswith(("Sub", "_minus")) or node.op_type == "Sub":
            sub = True
        if node.name.startswith(("Mul", "_mul")) or node.op_type == "Mul":
            mul = True
    return sub and mul


def onnx_providers() -> list[str]:
    """onnxruntime execution providers: CUDA first when this onnxruntime has it."""
    import onnxruntime as ort
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


class OnnxEmbedder:
    """An ONNX recognition model as an image embedder (uint8 RGB ``(B, H, W, 3)`` -> ``(B, d)``)."""

    def __init__(self, path: Union[str, os.PathLike], providers: list[str] | None = None) -> None:
        import onnx
        import onnxruntime as ort
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"ONNX model {p}: not found")
        try:
            model = onnx.load(str(p))
        except Exception as exc:  # noqa: BLE001 -- unreadable model: the file's fault
            raise CheckpointError(f"ONNX model {p}: not a readable ONNX file ({exc})") from None
        self.path = p
        inputs = [i for i in model.graph.input
                  if i.name not in {t.name for t in model.graph.initializer}]
        if len(inputs) != 1:
            raise CheckpointError(f"ONNX model {p}: {len(inputs)} inputs; a recognition model has "
                                  "one (N, 3, H, W)")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
            raise CheckpointError(f"ONNX model {p}: input shape {[d.dim_value or d.dim_param for d in dims]}; "
                                  "expected (N, 3, H, W)")
        h = dims[2].dim_value if dims[2].HasField("dim_value") else 112
        w = dims[3].dim_value if dims[3].HasField("dim_value") else 112
        self.input_name = inputs[0].name
        self.input_size = (int(h), int(w))
        if normalisation_in_graph(model):
            self.mean, self.std = 0.0, 1.0
        else:
            self.mean, self.std = FACE_MEAN, FACE_STD
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(p), sess_options=opts,
                                            providers=providers or onnx_providers())
        if len(self.session.get_outputs()) < 1:
            raise CheckpointError(f"ONNX model {p}: no output")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] != self.input_size:
            raise DataError(f"ONNX model {self.path}: images of size {images.shape[1:3]}, "
                            f"expected {self.input_size}")
        x = images.transpose(0, 3, 1, 2).astype(np.float32)
        x = (x - np.float32(self.mean)) / np.float32(self.std)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(images), -1)


def compare_with_torch(path: Union[str, os.PathLike], net: torch.nn.Module, image_size: int = 112,
                       count: int = 8, seed: int = 0) -> float:
    """The smallest per-image cosine between onnxruntime's embeddings of the model at ``path`` and
    ``net``'s own (``(x - 127.5) / 127.5`` input) over ``count`` random uint8 images."""
    from facelt.features.embed import TorchEmbedder
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, image_size, image_size, 3), dtype=np.uint8)
    a = OnnxEmbedder(path, providers=["CPUExecutionProvider"])(images)
    b = TorchEmbedder(net.cpu(), "cpu", (image_size, image_size))(images)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.min())


def extract_onnx_features(model: Union[str, os.PathLike], out: Union[str, os.PathLike],
                          rec: str | None = None, list_file: str | None = None, root: str = ".",
                          images: str | None = None, batch_size: int = 256,
                          flip: bool = True) -> tuple[Path, int]:
    """``extract-features --onnx``: embed a rec / list / folder with an ONNX model into ``out``
    (flip-sum + L2, resumable) and write its row manifest ``out``'s ``.rows.txt``."""
    from facelt.features.embed import image_source
    src = image_source(rec, list_file, root, images)
    return extract_onnx_source_features(model, src, out, batch_size, flip), len(src.rows)


def extract_onnx_source_features(model: Union[str, os.PathLike, "OnnxEmbedder"], source,
                                 out: Union[str, os.PathLike], batch_size: int = 256,
                                 flip: bool = True) -> Path:
    """Embed the images of ``source`` (a :class:`facelt.features.embed.ImageSource`) with an ONNX model
    (a path or an :class:`OnnxEmbedder`) into ``out``: flip-sum + L2, resumable, reused when
    made from the same model file and rows; the row manifest ``out``'s ``.rows.txt`` is written
    beside it. Returns the feature file."""
    import hashlib
    import json

    from facelt.features.embed import embed_to_file
    from facelt.features.files import finished_with, write_manifest
    embedder = model if isinstance(model, OnnxEmbedder) else OnnxEmbedder(model)
    st = embedder.path.stat()
    h = hashlib.sha256(json.dumps([str(embedder.path.resolve()), st.st_size, st.st_mtime_ns,
                                   bool(flip)]).encode())
    for r in source.rows:
        h.update(r.encode() + b"\n")
    fp = h.hexdigest()
    path = Path(out)
    if not finished_with(path, fp):
        path = embed_to_file(embedder, source.batches(batch_size, f"features {path.name}"), path,
                             len(source.rows), normalize=True, flip=flip, fingerprint=fp)
    write_manifest(Path(f"{path.with_suffix('')}.rows.txt"), source.rows)
    return path
