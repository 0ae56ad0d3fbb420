"""The model a face evaluation embeds with (``facelt verify``, ``facelt ijb``): a facelt
checkpoint, an ONNX recognition model, or a recipe whose ``model.pretrained`` names the weights
(:class:`FaceModelSpec`), and a fingerprint of it for resumable feature files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from facelt.errors import FaceltError

__all__ = ["FaceModelSpec", "face_embedder", "model_fingerprint"]


@dataclass(frozen=True)
class FaceModelSpec:
    """One of ``checkpoint`` / ``onnx`` / ``config`` (a recipe: its ``model.pretrained`` weights,
    evaluated without training); ``device`` (auto / cpu / cuda) for the torch models; ``flip``:
    embed each image and its mirror; ``onnx_output``: the embedding output of an ONNX model with
    several."""

    checkpoint: Optional[str] = None
    onnx: Optional[str] = None
    config: Optional[str] = None
    device: str = "auto"
    flip: bool = True
    onnx_output: Optional[str] = None  # the embedding among an ONNX model's outputs

    @property
    def path(self) -> Path:
        """The model file: the ONNX file, the checkpoint or the recipe."""
        named = self.onnx or self.checkpoint or self.config
        if named is None:
            raise FaceltError("no model given: name a checkpoint, an ONNX file or a recipe")
        return Path(named)


def face_embedder(spec: FaceModelSpec):
    """The image embedder of ``spec`` (an ONNX or a torch embedder), or None when it names no
    model (the caller evaluates precomputed features)."""
    if spec.onnx:
        from facelt.faces.onnx_io import OnnxEmbedder
        return OnnxEmbedder(spec.onnx, output=spec.onnx_output)
    if spec.checkpoint:
        from facelt.features.embed import embedder_for_checkpoint
        from facelt.models.checkpoint import net_from_checkpoint
        from facelt.parallel.process import pick_device
        dev = pick_device(spec.device)
        net, cfg, _ = net_from_checkpoint(spec.checkpoint, dev)
        return embedder_for_checkpoint(net, cfg, dev)
    if spec.config:
        from facelt.config import load_config
        from facelt.features.embed import embedder_for_checkpoint
        from facelt.models.build import net_from_config
        from facelt.parallel.process import pick_device
        cfg = load_config(spec.config)
        dev = pick_device(spec.device)
        return embedder_for_checkpoint(net_from_config(cfg).to(dev), cfg, dev)
    return None


def model_fingerprint(spec: FaceModelSpec, rows: list[str], extra: Optional[dict] = None,
                      data_files: Sequence[Path] = ()) -> str:
    """Names the model file (path, size, mtime; a recipe's weights file too), the settings that
    change features (``flip``, ``extra``), the rows and, with ``data_files``, the images' content
    (:func:`facelt.utils.fingerprint.derived_file_fingerprint`)."""
    from facelt.utils.fingerprint import derived_file_fingerprint
    model = spec.path
    if not model.is_file():
        raise FaceltError(f"model {model}: not found")
    files = [model]
    if spec.config:  # the recipe and the weights it names
        from facelt.config import load_config
        files.append(Path(load_config(spec.config).model.pretrained))
    extra = dict(extra or {})
    if spec.onnx_output:
        extra["onnx_output"] = spec.onnx_output
    return derived_file_fingerprint(files, rows, [spec.flip, extra], data_files)
