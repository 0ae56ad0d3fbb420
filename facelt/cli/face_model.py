"""The model flags shared by the face evaluation commands (``verify``, ``ijb``): a facelt
checkpoint, an ONNX model, or precomputed features."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Optional

from facelt.errors import FaceltError


def add_model_args(p: argparse.ArgumentParser, features_help: str) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="facelt checkpoint (its net.embed; images presented as in "
                                        "its training)")
    g.add_argument("--onnx", help="ONNX recognition model (insightface convention; onnxruntime)")
    g.add_argument("--features", action="append", help=features_help)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-flip", action="store_true", help="embed only the image, not its mirror")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def embedder_from_args(args: argparse.Namespace):
    """The image embedder the flags name (None with ``--features``)."""
    if args.onnx:
        from facelt.onnx_io import OnnxEmbedder
        return OnnxEmbedder(args.onnx)
    if args.checkpoint:
        from facelt.classify import net_from_checkpoint
        from facelt.embed import embedder_for_checkpoint
        from facelt.train.distributed import pick_device
        dev = pick_device(args.device)
        net, cfg, _ = net_from_checkpoint(args.checkpoint, dev)
        return embedder_for_checkpoint(net, cfg, dev)
    return None


def model_fingerprint(args: argparse.Namespace, rows: list[str], extra: Optional[dict] = None) -> str:
    """Names the model file (path, size, mtime), the flags that change features and the rows."""
    model = Path(args.onnx or args.checkpoint)
    if not model.is_file():
        raise FaceltError(f"model {model}: not found")
    st = model.stat()
    h = hashlib.sha256(json.dumps([str(model.resolve()), st.st_size, st.st_mtime_ns,
                                   not args.no_flip, extra or {}]).encode())
    for r in rows:
        h.update(r.encode() + b"\n")
    return h.hexdigest()
