"""``facelt extract-features``: embeddings of a checkpoint over a rec, a list or image folders,
flip-summed and L2-normalised (the insightface convention) into a memory-mapped ``.npy`` with a
row manifest; resumable after a kill (rows already written are kept)."""
from __future__ import annotations

import argparse
import sys

from facelt.cli.common import add_device_arg, positive_int
from facelt.cli.face_model import add_onnx_output_arg, check_onnx_output
from facelt.utils.io import ensure_writable_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract-features", help="embed images with a checkpoint into a .npy",
                       description=__doc__)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="facelt checkpoint (its embedding network)")
    model.add_argument("--onnx", help="ONNX recognition model (insightface convention, onnxruntime)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rec", help="insightface rec prefix (PREFIX.rec/.idx)")
    src.add_argument("--list", dest="list_file", help="OLTR list file (paths relative to --root)")
    src.add_argument("--images", help="folder of images (recursive)")
    p.add_argument("--data-root", "--root", dest="root", default=".",
                   help="image root for --list (the name train and classify use)")
    p.add_argument("--out", required=True, help="output .npy (a .rows.txt manifest is written beside)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    add_onnx_output_arg(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def refuse_out_over_sources(args: argparse.Namespace) -> None:
    """``--out`` (and the manifest, source record, partial and progress files beside it) may be
    none of the command's inputs: the model file, the rec's files or the list."""
    from facelt.data.recordio import insightface_paths
    from facelt.features.files import feature_file_outputs
    from facelt.utils.outputs import refuse_output_over_inputs
    rec = list(insightface_paths(args.rec)) if args.rec else []
    refuse_output_over_inputs(args.out, [args.checkpoint, args.onnx, args.list_file, *rec],
                              "--out", written=feature_file_outputs(args.out)[1:])


def run(args: argparse.Namespace) -> int:
    check_onnx_output(args)
    refuse_out_over_sources(args)
    ensure_writable_file(args.out, "--out")
    if args.onnx:
        import os
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from facelt.errors import ConfigError
            raise ConfigError("extract-features --onnx runs in one process; under torchrun give "
                              "--checkpoint (the rows are then split over the processes)")
        from facelt.faces.onnx_io import extract_onnx_features
        path, rows = extract_onnx_features(args.onnx, args.out, args.rec, args.list_file, args.root,
                                           args.images, args.batch_size, not args.no_flip,
                                           args.onnx_output)
        print(f"{rows} rows -> {path}")
        return 0
    from facelt.features.extract import dataset_for, extract_checkpoint_features
    from facelt.parallel import process as D
    from facelt.models.checkpoint import net_from_checkpoint
    dist = D.setup(args.device)  # under torchrun: every process embeds its share of the rows
    try:
        net, cfg, _ = net_from_checkpoint(args.checkpoint, dist.device)
        if args.rec:  # the one image-size rule, before any image is embedded
            from facelt.data.image_size import check_rec_image_size
            check_rec_image_size(args.rec, cfg.data.image_size,
                                 f"the checkpoint {args.checkpoint} (data.image_size)")
        ds, rows = dataset_for(cfg, args.rec, args.list_file, args.root, args.images)
        path = extract_checkpoint_features(args.checkpoint, ds, rows, args.out, args.batch_size,
                                           not args.no_flip, args.device, net=net, dist=dist)
    finally:
        D.teardown(after_error=sys.exc_info()[0] is not None)
    if dist.is_primary:
        print(f"{len(rows)} rows -> {path}")
    return 0
