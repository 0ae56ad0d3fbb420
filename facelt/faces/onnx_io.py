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
  The graph is checked against that convention before any work (:func:`check_recognition_graph`:
  one float32 ``(N, 3, H, W)`` input of at most :data:`MAX_INPUT_SIDE` a side, one float ``(N, d)``
  output or the one named by ``output``, only operators onnxruntime has); a fixed batch size is
  run in chunks of it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional, Union

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


#: the largest input side a recognition model may declare (the model zoo's is 112 x 112)
MAX_INPUT_SIDE = 1024
#: the side used when a model leaves its input size open (the model zoo's)
DEFAULT_INPUT_SIDE = 112
#: operator domains onnxruntime provides without a custom-op library
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class RecognitionGraph:
    """What :func:`check_recognition_graph` found: the input's name and ``(H, W)``, its fixed
    batch size (None: dynamic), the embedding output's name and width (None: not declared)."""

    input_name: str
    input_size: tuple[int, int]
    batch: Optional[int]
    output_name: str
    dim: Optional[int]


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def _dims(value_info) -> Optional[list]:
    """The declared dims of a tensor value (int, a symbolic name, or None), None without a shape."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _shown(dims: Optional[list]) -> str:
    if dims is None:
        return "no declared shape"
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def _custom_nodes(graph, functions: set[tuple[str, str]]) -> Iterator[tuple[str, str, str]]:
    """``(node name, op type, domain)`` of every node, subgraphs included, whose operator
    onnxruntime does not provide (a custom-op domain that no model-local function defines)."""
    from onnx import AttributeProto
    for node in graph.node:
        if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in functions:
            yield node.name or "(unnamed)", node.op_type, node.domain
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _custom_nodes(attr.g, functions)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _custom_nodes(g, functions)


def _input_of(model, where: str) -> tuple[str, tuple[int, int], Optional[int]]:
    from onnx import TensorProto
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise CheckpointError(f"{where}: {len(inputs)} inputs ({names or 'none'}); a recognition "
                              "model has one, float32 (N, 3, H, W)")
    inp = inputs[0]
    if not inp.type.HasField("tensor_type"):
        raise CheckpointError(f"{where}: input {inp.name!r} is not a tensor; expected float32 "
                              "(N, 3, H, W)")
    elem = inp.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:
        raise CheckpointError(f"{where}: input {inp.name!r} is {_type_name(elem)}; the model-zoo "
                              "convention is float32 (N, 3, H, W) RGB, (x - 127.5) / 127.5 or "
                              "normalised in the graph (re-export it with a float input)")
    dims = _dims(inp)
    if dims is None:
        raise CheckpointError(f"{where}: input {inp.name!r} has no declared shape; expected "
                              "(N, 3, H, W)")
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise CheckpointError(f"{where}: input {inp.name!r} of shape {_shown(dims)}; expected "
                              "(N, 3, H, W): one batch of RGB images, channels first")
    n, _, h, w = dims
    side = [d if isinstance(d, int) and d > 0 else DEFAULT_INPUT_SIDE for d in (h, w)]
    if max(side) > MAX_INPUT_SIDE:
        raise CheckpointError(f"{where}: input {inp.name!r} declares {side[0]}x{side[1]} pixels; "
                              "a recognition model takes face crops (112x112 in the model zoo), "
                              f"at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}: refused before "
                              "allocating a batch of them")
    batch = n if isinstance(n, int) and n > 0 else None
    if batch is not None:  # a fixed batch is run in chunks of it, the last padded: it must fit
        from facelt.utils.limits import check_allocation
        check_allocation(batch * 3 * side[0] * side[1] * 4,
                         f"{where}: input {inp.name!r} declares a fixed batch of {batch:,}, "
                         "which", error=CheckpointError)
    return inp.name, (int(side[0]), int(side[1])), batch


def _output_of(model, where: str, output: Optional[str]) -> tuple[str, Optional[int]]:
    from onnx import TensorProto
    outs = list(model.graph.output)
    listed = ", ".join(f"{o.name} {_shown(_dims(o))}" for o in outs)
    if output is not None:
        found = [o for o in outs if o.name == output]
        if not found:
            raise CheckpointError(f"{where}: no output {output!r} (its outputs: "
                                  f"{', '.join(o.name for o in outs) or 'none'})")
        out = found[0]
    elif len(outs) != 1:
        raise CheckpointError(f"{where}: {len(outs)} outputs ({listed or 'none'}); a recognition "
                              "model has one (N, d) embedding: give --onnx-output NAME to say "
                              "which it is")
    else:
        out = outs[0]
    if not out.type.HasField("tensor_type"):
        raise CheckpointError(f"{where}: output {out.name!r} is not a tensor; an embedding is "
                              "float (N, d)")
    elem = out.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                    TensorProto.BFLOAT16):
        raise CheckpointError(f"{where}: output {out.name!r} is {_type_name(elem)}; an embedding "
                              "is float (N, d)")
    dims = _dims(out)
    if dims is not None:
        if len(dims) == 0:
            raise CheckpointError(f"{where}: output {out.name!r} is a scalar; an embedding is "
                                  "(N, d), one row an image")
        if len(dims) != 2:
            raise CheckpointError(f"{where}: output {out.name!r} is {len(dims)}-D {_shown(dims)}; "
                                  "an embedding is (N, d), one row an image")
        if dims[1] == 1:
            raise CheckpointError(f"{where}: output {out.name!r} is (N, 1): a score, not an "
                                  "embedding (N, d)" + (" (give --onnx-output NAME for the "
                                                        "embedding)" if len(outs) > 1 else ""))
    dim = dims[1] if dims is not None and isinstance(dims[1], int) and dims[1] > 0 else None
    return out.name, dim


def check_recognition_graph(model, where: str, output: Optional[str] = None) -> RecognitionGraph:
    """Check an ONNX graph against the model-zoo convention before any work: standard operators
    only (or model-local functions), one float32 ``(N, 3, H, W)`` input of at most
    :data:`MAX_INPUT_SIDE` a side (an open size is :data:`DEFAULT_INPUT_SIDE`), and one float
    ``(N, d)`` output with ``d > 1`` -- or the output named ``output`` among several.
    :class:`CheckpointError` naming ``where`` and what is wrong otherwise."""
    functions = {(f.domain, f.name) for f in model.functions}
    custom = list(_custom_nodes(model.graph, functions))
    if custom:
        name, op, domain = custom[0]
        raise CheckpointError(f"{where}: node {name} uses operator {op} of domain {domain!r}, "
                              f"which onnxruntime does not provide ({len(custom)} such node(s); "
                              "a custom-op library is not loaded)")
    input_name, size, batch = _input_of(model, where)
    output_name, dim = _output_of(model, where, output)
    return RecognitionGraph(input_name, size, batch, output_name, dim)


class OnnxEmbedder:
    """An ONNX recognition model as an image embedder (uint8 RGB ``(B, H, W, 3)`` -> ``(B, d)``).

    The graph is checked first (:func:`check_recognition_graph`); ``output`` names the
    embedding among several outputs. A model with a fixed batch size runs in chunks of it.
    """

    def __init__(self, path: Union[str, os.PathLike], providers: list[str] | None = None,
                 output: Optional[str] = None) -> None:
        import onnx
        import onnxruntime as ort
        p = Path(path)
        where = f"ONNX model {p}"
        if not p.is_file():
            raise CheckpointError(f"{where}: not found")
        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 -- unreadable model: the file's fault
            raise CheckpointError(f"{where}: not a readable ONNX file ({exc})") from None
        self.path = p
        graph = check_recognition_graph(model, where, output)
        self.input_name, self.input_size = graph.input_name, graph.input_size
        self.batch, self.output_name = graph.batch, graph.output_name
        if normalisation_in_graph(model):
            self.mean, self.std = 0.0, 1.0
        else:
            self.mean, self.std = FACE_MEAN, FACE_STD
        del model
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(p), sess_options=opts,
                                                providers=providers or onnx_providers())
        except Exception as exc:  # noqa: BLE001 -- onnxruntime refuses the model: its fault
            raise CheckpointError(f"{where}: onnxruntime cannot load it "
                                  f"({_first_line(exc)})") from None

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:  # noqa: BLE001 -- the model fails on a valid batch: its fault
            raise CheckpointError(f"ONNX model {self.path}: onnxruntime failed on a batch of "
                                  f"shape {x.shape} ({_first_line(exc)})") from None
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != len(x) or out.shape[1] < 2:
            raise CheckpointError(f"ONNX model {self.path}: output {self.output_name!r} has shape "
                                  f"{out.shape} for a batch of {len(x)}; an embedding is "
                                  f"({len(x)}, d) with d > 1")
        return out.astype(np.float32, copy=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] != self.input_size:
            raise DataError(f"ONNX model {self.path}: images of size {images.shape[1:3]}, "
                            f"expected {self.input_size}")
        x = images.transpose(0, 3, 1, 2).astype(np.float32)
        x = np.ascontiguousarray((x - np.float32(self.mean)) / np.float32(self.std))
        if self.batch is None:
            return self._run(x)
        rows = []
        for a in range(0, len(x), self.batch):  # a fixed batch size: chunks of it, the last padded
            chunk = x[a:a + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n,) + chunk.shape[1:],
                                                        np.float32)])
            rows.append(self._run(chunk)[:n])
        return np.concatenate(rows)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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


#: the smallest cosine between onnxruntime's and facelt's embeddings an export may show
MIN_EXPORT_COSINE = 0.999


def export_checked_onnx(net: torch.nn.Module, out: Union[str, os.PathLike], image_size: int = 112,
                        channels: int = 3, normalize: Normalize = "outside", check: bool = True
                        ) -> tuple[Path, Optional[float]]:
    """``facelt export``: :func:`export_onnx` to a temporary name, then (``check``) the
    :func:`compare_with_torch` parity check, then the rename onto ``out``; returns ``(out, min
    cosine or None)``.  A min cosine that is not above :data:`MIN_EXPORT_COSINE` (NaN included)
    is a :class:`~facelt.errors.FaceltError` and ``out``'s previous file, if any, is kept."""
    from facelt.errors import FaceltError
    from facelt.utils.io import atomic_path
    out = Path(out)
    cos = None
    with atomic_path(out) as tmp:
        export_onnx(net, tmp, image_size=image_size, channels=channels, normalize=normalize)
        if check:
            cos = compare_with_torch(tmp, net, image_size)
            if not cos > MIN_EXPORT_COSINE:  # NaN compares false
                raise FaceltError(f"{out}: onnxruntime's embeddings differ from facelt's (min "
                                  f"cosine {cos:.6f} over 8 random images, expected > "
                                  f"{MIN_EXPORT_COSINE}); nothing was written (--no-check skips "
                                  "the comparison)")
    return out, cos


def extract_onnx_features(model: Union[str, os.PathLike], out: Union[str, os.PathLike],
                          rec: str | None = None, list_file: str | None = None, root: str = ".",
                          images: str | None = None, batch_size: int = 256,
                          flip: bool = True, output: Optional[str] = None) -> tuple[Path, int]:
    """``extract-features --onnx``: embed a rec / list / folder with an ONNX model into ``out``
    (flip-sum + L2, resumable) and write its row manifest ``out``'s ``.rows.txt``. ``output``
    names the embedding among several outputs; the graph is checked before the images are
    listed."""
    from facelt.features.embed import image_source
    embedder = OnnxEmbedder(model, output=output)
    if rec:  # the one image-size rule, before any image is embedded
        from facelt.data.image_size import rec_image_size, require_image_size
        require_image_size(rec_image_size(rec), embedder.input_size, str(rec),
                           f"the ONNX model {model}",
                           "embed with a model of the rec's image size, or repack the rec")
    src = image_source(rec, list_file, root, images)
    return extract_onnx_source_features(embedder, src, out, batch_size, flip), len(src.rows)


def extract_onnx_source_features(model: Union[str, os.PathLike, "OnnxEmbedder"], source,
                                 out: Union[str, os.PathLike], batch_size: int = 256,
                                 flip: bool = True) -> Path:
    """Embed the images of ``source`` (a :class:`facelt.features.embed.ImageSource`) with an ONNX model
    (a path or an :class:`OnnxEmbedder`) into ``out``: flip-sum + L2, resumable, reused only when
    made from the same model file, settings, rows and image content; the row manifest ``out``'s
    ``.rows.txt`` is written beside it. Returns the feature file."""
    from facelt.features.embed import embed_to_file
    from facelt.features.files import finished_with, manifest_path, write_manifest
    from facelt.utils.fingerprint import derived_file_fingerprint
    embedder = model if isinstance(model, OnnxEmbedder) else OnnxEmbedder(model)
    # the model file, the settings, the rows and the images' content: other pixels re-extract
    fp = derived_file_fingerprint([embedder.path], source.rows, [bool(flip), embedder.output_name],
                                  source.data_files, source.index_files)
    path = Path(out)
    if not finished_with(path, fp):
        path = embed_to_file(embedder, source.batches(batch_size, f"features {path.name}"), path,
                             len(source.rows), normalize=True, flip=flip, fingerprint=fp)
    write_manifest(manifest_path(path), source.rows)
    return path
