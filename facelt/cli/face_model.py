"""The model flags shared by the face evaluation commands (``verify``, ``ijb``): a facelt
checkpoint, an ONNX model, or precomputed features."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Optional

from facelt.cli.common import add_device_arg
from facelt.errors import FaceltError


def add_model_args(p: argparse.ArgumentParser, features_help: str) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="facelt checkpoint (its net.embed; images presented as in "
                                        "its training)")
    g.add_argument("--onnx", help="ONNX recognition model (insightface convention; onnxruntime)")
    g.add_argument("--config", help="a recipe whose model.pretrained names the weights (e.g. an "
                                    "arcface_torch backbone.pth with model.pretrained_format: "
                                    "insightface): evaluate them without training")
    g.add_argument("--features", action="append", help=features_help)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--no-flip", action="store_true", help="embed only the image, not its mirror")
    add_device_arg(p)


def embedder_from_args(args: argparse.Namespace):
    """The image embedder the flags name (None with ``--features``)."""
    if args.onnx:
        from facelt.faces.onnx_io import OnnxEmbedder
        return OnnxEmbedder(args.onnx)
    if args.checkpoint:
        from facelt.openset.classify import net_from_checkpoint
        from facelt.features.embed import embedder_for_checkpoint
        from facelt.parallel.process import pick_device
        dev = pick_device(args.device)
        net, cfg, _ = net_from_checkpoint(args.checkpoint, dev)
        return embedder_for_checkpoint(net, cfg, dev)
    if args.config:
        from facelt.config import load_config
        from facelt.features.embed import embedder_for_checkpoint
        from facelt.models.build import net_from_config
        from facelt.parallel.process import pick_device
        cfg = load_config(args.config)
        dev = pick_device(args.device)
        return embedder_for_checkpoint(net_from_config(cfg).to(dev), cfg, dev)
    return None


def model_fingerprint(args: argparse.Namespace, rows: list[str], extra: Optional[dict] = None) -> str:
    """Names the model file (path, size, mtime), the flags that change features and the rows."""
    model = Path(args.onnx or args.checkpoint or args.config)
    if not model.is_file():
        raise FaceltError(f"model {model}: not found")
    files = [model]
    if args.config:  # the recipe and the weights it names
        from facelt.config import load_config
        files.append(Path(load_config(args.config).model.pretrained))
    stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    h = hashlib.sha256(json.dumps([stamp, not args.no_flip, extra or {}]).encode())
    for r in rows:
        h.update(r.encode() + b"\n")
    return h.hexdigest()
