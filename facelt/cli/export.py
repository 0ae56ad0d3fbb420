"""``facelt export``: a checkpoint's embedding network (no classifier) as an ONNX model in the
insightface model-zoo convention (one NCHW float RGB input, dynamic batch, one (N, d) output)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint's embedding network to ONNX",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, help="facelt checkpoint to export")
    p.add_argument("--out", required=True, help="output .onnx")
    p.add_argument("--normalize", choices=["outside", "inside"], default="outside",
                   help="outside: feed (x - 127.5) / 127.5 (insightface's default); inside: the "
                        "graph starts with Sub/Mul nodes and takes raw 0..255 pixels")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing onnxruntime's embeddings with facelt's on random images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from facelt.errors import FaceltError
    from facelt.faces.onnx_io import export_checked_onnx
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.utils.io import ensure_writable_file
    from facelt.utils.outputs import refuse_output_over_inputs
    refuse_output_over_inputs(args.out, [args.checkpoint], "--out")
    ensure_writable_file(args.out, "--out")  # an existing folder, a read-only place: before work
    net, cfg, _ = net_from_checkpoint(args.checkpoint, torch.device("cpu"))
    if cfg.data.format != "rec":
        raise FaceltError(f"{args.checkpoint} was trained on list data (data.format: list, its own "
                          "mean/std and crop); ONNX export follows the face convention of rec-trained "
                          "models ((x - 127.5) / 127.5 at data.image_size)")
    path, cos = export_checked_onnx(net, args.out, cfg.data.image_size, cfg.data.channels,
                                    args.normalize, check=not args.no_check)
    msg = f"{path}: input (N, {cfg.data.channels}, {cfg.data.image_size}, {cfg.data.image_size})"
    if cos is not None:
        msg += f"; onnxruntime vs facelt: min cosine {cos:.6f} over 8 random images"
    print(msg)
    from facelt.faces.insightface_route import insightface_route_warning
    warning = insightface_route_warning(cfg.data.image_size, cfg.data.channels)
    if warning:
        import sys
        print(f"warning: {warning}", file=sys.stderr)
    return 0
