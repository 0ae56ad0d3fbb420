"""Embeddings of a split collected once per checkpoint (memory-mapped), and logits recomputed from
them through the head chunk by chunk (never an ``N x K`` array at identity scale)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from facelt.data.build import make_loader
from facelt.utils.progress import progress

CHUNK_ROWS = 1024


@dataclass
class Collected:
    """Per-image embeddings ``(N, d)`` float32 (array or memmap), labels, and optionally logits."""

    features: np.ndarray
    labels: np.ndarray
    logits: Optional[np.ndarray] = None


@torch.no_grad()
def collect_logits(net: torch.nn.Module, dataset: Dataset, device: torch.device, batch: int = 256,
                   num_workers: int = 0, keep_logits: bool = False,
                   folder: Optional[Path] = None, name: str = "split") -> Collected:
    """Stream ``dataset`` through ``net`` in order; keep the embeddings (memory-mapped into
    ``folder/<name>_features.npy`` when given) and, with ``keep_logits``, the logits too (``N x K``:
    only for small K -- otherwise use :func:`chunk_logits` on the embeddings)."""
    was_training = net.training
    net.eval()
    n = len(dataset)
    loader = make_loader(dataset, batch, num_workers)
    feats: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    labels = np.zeros(n, dtype=np.int64)
    pos = 0
    for x, y, _ in progress(loader, desc=f"features {name}", unit="batch"):
        out = net(x.to(device, non_blocking=True))
        f = out["features"].float().cpu().numpy()
        if feats is None:
            shape = (n, f.shape[1])
            feats = (np.lib.format.open_memmap(Path(folder) / f"{name}_features.npy", "w+",
                                               np.float32, shape) if folder else
                     np.zeros(shape, np.float32))
            if keep_logits:
                logits = np.zeros((n, out["logits"].shape[1]), np.float32)
        b = f.shape[0]
        feats[pos:pos + b] = f
        if logits is not None:
            logits[pos:pos + b] = out["logits"].float().cpu().numpy()
        labels[pos:pos + b] = np.asarray(y)
        pos += b
    net.train(was_training)
    if feats is None:
        feats = np.zeros((0, 0), np.float32)
    return Collected(feats, labels, logits)


@torch.no_grad()
def chunk_logits(net: torch.nn.Module, features: np.ndarray, device: torch.device,
                 rows: int = CHUNK_ROWS) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``(rows slice, embeddings, logits float64)`` per chunk: logits = ``net.head(v)``."""
    net.eval()
    for s in range(0, len(features), rows):
        f = np.asarray(features[s:s + rows], dtype=np.float32)
        lg, _ = net.head(torch.from_numpy(f).to(device))
        yield slice(s, s + len(f)), f, lg.double().cpu().numpy()
