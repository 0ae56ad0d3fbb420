"""``facelt extract-features``: embeddings of a checkpoint over a rec, a list or image folders,
flip-summed and L2-normalised (the insightface convention) into a memory-mapped ``.npy`` with a
row manifest; resumable after a kill (rows already written are kept)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # torch is imported where it is used: `facelt verify --features` never loads it
    from torch.utils.data import Dataset

from facelt.errors import FaceltError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract-features", help="embed images with a checkpoint into a .npy",
                       description=__doc__)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint")
    model.add_argument("--onnx", help="ONNX recognition model (insightface convention, onnxruntime)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rec", help="insightface rec prefix (PREFIX.rec/.idx)")
    src.add_argument("--list", dest="list_file", help="OLTR list file (paths relative to --root)")
    src.add_argument("--images", help="folder of images (recursive)")
    p.add_argument("--root", default=".", help="image root for --list")
    p.add_argument("--out", required=True, help="output .npy (a .rows.txt manifest is written beside)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def dataset_for(cfg, rec: Optional[str] = None, list_file: Optional[str] = None,
                root: str = ".", images: Optional[str] = None) -> tuple[Dataset, list[str]]:
    """Test-transform dataset and row names for one of the three sources."""
    if rec:
        from facelt.data.rec_dataset import RecordDataset
        ds = RecordDataset(rec, train=False)
        return ds, [f"{rec}#{int(k)}" for k in ds.keys]
    from facelt.data.build import eval_transform
    tf = eval_transform(cfg.data)
    if list_file:
        from facelt.data.images import ListDataset
        from facelt.data.lists import check_files_exist, read_list
        lst = read_list(list_file)
        check_files_exist(lst, root)
        return ListDataset(lst, root, tf, channels=cfg.data.channels), list(lst.items)
    from facelt.data.images import FolderImages, find_images
    paths = find_images(images)
    if not paths:
        raise FaceltError(f"no images under {images}")
    return FolderImages(paths, tf, channels=cfg.data.channels), [str(p.relative_to(images)) for p in paths]


def extract_checkpoint_features(checkpoint: str | Path, dataset: Dataset, rows: list[str],
                                out: str | Path, batch_size: int = 256, flip: bool = True,
                                device: str = "auto", net=None) -> Path:
    """Embed ``dataset`` in order into ``out`` (resumable) and write ``out``'s row manifest."""
    from facelt.features import extract_features, finished_with, write_manifest
    from facelt.classify import net_from_checkpoint
    from facelt.data.build import make_loader
    from facelt.train.distributed import pick_device
    from facelt.utils.progress import image_batches
    import torch
    dev = pick_device(device)
    if net is None:
        net, _, _ = net_from_checkpoint(checkpoint, dev)
    net.eval()

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        return net.embed(x.to(dev)).float().cpu()

    def batches(first_row: int):
        from torch.utils.data import Subset
        sub = Subset(dataset, range(first_row, len(dataset)))
        loader = make_loader(sub, batch_size, 0)
        for x, _, _ in image_batches(loader, f"features {Path(out).name}"):
            yield x

    fp = source_fingerprint(checkpoint, rows, flip)
    if finished_with(out, fp):  # already made from this checkpoint and these rows
        return Path(out)
    with torch.no_grad():
        dim = int(embed(dataset[0][0].unsqueeze(0)).shape[1])
    path = extract_features(embed, batches, out, len(dataset), dim, flip=flip, resume=True,
                            fingerprint=fp)
    write_manifest(manifest_path(out), rows)
    return path


def manifest_path(features: str | Path) -> Path:
    """``F.npy`` -> ``F.rows.txt``: the row names of a feature file, one a line."""
    return Path(f"{Path(features).with_suffix('')}.rows.txt")


def source_fingerprint(checkpoint: str | Path, rows: list[str], flip: bool) -> str:
    """Names the checkpoint file (path, size, mtime) and the exact rows embedded."""
    import hashlib
    import json
    st = Path(checkpoint).stat()
    h = hashlib.sha256(json.dumps([str(Path(checkpoint).resolve()), st.st_size, st.st_mtime_ns,
                                   bool(flip)]).encode())
    for r in rows:
        h.update(r.encode() + b"\n")
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    if args.onnx:
        from facelt.onnx_io import extract_onnx_features
        path, rows = extract_onnx_features(args.onnx, args.out, args.rec, args.list_file, args.root,
                                           args.images, args.batch_size, not args.no_flip)
        print(f"{rows} rows -> {path}")
        return 0
    from facelt.classify import net_from_checkpoint
    from facelt.train.distributed import pick_device
    net, cfg, _ = net_from_checkpoint(args.checkpoint, pick_device(args.device))
    ds, rows = dataset_for(cfg, args.rec, args.list_file, args.root, args.images)
    path = extract_checkpoint_features(args.checkpoint, ds, rows, args.out, args.batch_size,
                                       not args.no_flip, args.device, net=net)
    print(f"{len(rows)} rows -> {path}")
    return 0
