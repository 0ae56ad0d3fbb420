"""The model flags shared by the face evaluation commands (``verify``, ``ijb``): a facelt
checkpoint, an ONNX model, or precomputed features; :func:`model_spec` turns them into the
library's :class:`~facelt.faces.face_model.FaceModelSpec`."""
from __future__ import annotations

import argparse

from facelt.cli.common import add_device_arg, positive_int


def add_model_args(p: argparse.ArgumentParser, features_help: str) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="facelt checkpoint (its net.embed; images presented as in "
                                        "its training)")
    g.add_argument("--onnx", help="ONNX recognition model (insightface convention; onnxruntime)")
    g.add_argument("--config", help="a recipe whose model.pretrained names the weights (e.g. an "
                                    "arcface_torch backbone.pth with model.pretrained_format: "
                                    "insightface): evaluate them without training")
    g.add_argument("--features", action="append", help=features_help)
    add_onnx_output_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--no-flip", action="store_true", help="embed only the image, not its mirror")
    add_device_arg(p)


def add_onnx_output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx-output", metavar="NAME",
                   help="with --onnx: the graph output that is the (N, d) embedding, when the "
                        "model has several (a quality score beside it ...)")


def check_onnx_output(args: argparse.Namespace) -> None:
    """``--onnx-output`` only with ``--onnx`` (:class:`~facelt.errors.ConfigError` otherwise)."""
    if getattr(args, "onnx_output", None) and not args.onnx:
        from facelt.errors import ConfigError
        raise ConfigError("--onnx-output names an output of the --onnx model: give --onnx too")


def model_spec(args: argparse.Namespace):
    """The :class:`~facelt.faces.face_model.FaceModelSpec` the flags name (no model with
    ``--features``)."""
    from facelt.faces.face_model import FaceModelSpec
    check_onnx_output(args)
    return FaceModelSpec(checkpoint=args.checkpoint, onnx=args.onnx, config=args.config,
                         device=args.device, flip=not args.no_flip, onnx_output=args.onnx_output)
