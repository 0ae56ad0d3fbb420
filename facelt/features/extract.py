"""Embeddings of a checkpoint over a rec, a list or an image folder, flip-summed and L2-normalised
(the insightface convention) into a memory-mapped ``.npy`` with a row manifest beside it
(``F.npy`` -> ``F.rows.txt``); resumable after a kill (rows already written are kept), and reused
when already made from the same checkpoint file, rows and image content (:func:`source_fingerprint`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset

from facelt.data.build import make_loader
from facelt.errors import FaceltError
from facelt.features.files import manifest_path
from facelt.models.checkpoint import net_from_checkpoint
from facelt.parallel.process import pick_device
from facelt.utils.progress import image_batches


def dataset_for(cfg, rec: Optional[str] = None, list_file: Optional[str] = None,
                root: str = ".", images: Optional[str] = None) -> tuple[Dataset, list[str]]:
    """Test-transform dataset and row names for one of the three sources."""
    if rec:
        from facelt.data.rec_dataset import RecordDataset
        ds = RecordDataset(rec, train=False, channels=cfg.data.channels)
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
                                device: str = "auto", net=None, dist=None) -> Path:
    """Embed ``dataset`` in order into ``out`` (resumable) and write ``out``'s row manifest.

    ``dist`` (a :class:`~facelt.parallel.process.DistInfo` of several processes): every rank
    embeds its share of the rows into the same file
    (:func:`facelt.features.distributed.extract_features_distributed`; collective)."""
    from facelt.features.files import extract_features, finished_with, write_manifest
    dev = dist.device if dist is not None else pick_device(device)
    if net is None:
        net, _, _ = net_from_checkpoint(checkpoint, dev)
    net.eval()
    body = net.body

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        return body(x.to(dev)).float().cpu()

    def batches(first_row: int):
        sub = Subset(dataset, range(first_row, len(dataset)))
        loader = make_loader(sub, batch_size, 0)
        for x, _, _ in image_batches(loader, f"features {Path(out).name}"):
            yield x

    fp = source_fingerprint(checkpoint, rows, flip, dataset)
    if finished_with(out, fp):  # already made from this checkpoint, these rows and these images
        return Path(out)
    with torch.no_grad():
        dim = int(embed(dataset[0][0].unsqueeze(0)).shape[1])
    if dist is not None and dist.distributed:
        from facelt.features.distributed import extract_features_distributed

        def share(start: int, stop: int):
            loader = make_loader(Subset(dataset, range(start, stop)), batch_size, 0)
            for x, _, _ in image_batches(loader, f"features {Path(out).name}",
                                         disable=not dist.is_primary):
                yield x

        path = extract_features_distributed(embed, share, out, len(dataset), dim, batch_size, dist,
                                            flip=flip, fingerprint=fp)
        if dist.is_primary:
            write_manifest(manifest_path(out), rows)
        return path
    path = extract_features(embed, batches, out, len(dataset), dim, flip=flip, resume=True,
                            fingerprint=fp)
    write_manifest(manifest_path(out), rows)
    return path


def source_fingerprint(checkpoint: str | Path, rows: list[str], flip: bool,
                       dataset: Optional[Dataset] = None) -> str:
    """Names the checkpoint file (path, size, mtime), the exact rows embedded and, with
    ``dataset``, the content of its image source (``derived_file_fingerprint``)."""
    from facelt.utils.fingerprint import derived_file_fingerprint
    files: tuple = ((), ())
    if dataset is not None:
        from facelt.data.build import dataset_source_files
        files = dataset_source_files(dataset)
    return derived_file_fingerprint([checkpoint], rows, [bool(flip)], *files)
