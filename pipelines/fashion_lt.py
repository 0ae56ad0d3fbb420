"""Fashion-MNIST-LT: a small REAL long-tailed open-set benchmark for checking the method on CPU.

Built from the Fashion-MNIST IDX files (Debian: ``apt-get install dataset-fashion-mnist`` puts them
in ``/usr/share/datasets/fashion-mnist``). Eight classes are known, two are open (never trained on):

* train: the known classes with long-tailed counts ``TRAIN_COUNTS`` (many > 100, medium 20..100,
  few < 20: 4 / 2 / 2 classes), assigned to classes by a seeded permutation,
  images drawn at random from the Fashion-MNIST train set;
* val: 20 unused training images a known class;
* test: ``test_per_class`` images a known class from the Fashion-MNIST test set (balanced);
* open: ``test_per_class`` images a class of the two open classes from the test set (label -1).

Images are written as 28x28 grayscale PNGs with the OLTR lists ``FashionLT_{train,val,test,open}.txt``.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from facelt.data.lists import write_list
from facelt.errors import DataError
from facelt.utils.io import atomic_path, write_json
from facelt.utils.progress import progress

CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle-boot"]
OPEN_CLASSES = (8, 9)
TRAIN_COUNTS = (2000, 800, 300, 120, 60, 30, 15, 8)
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array."""
    if not path.is_file():
        alt = path.with_suffix("") if path.suffix == ".gz" else Path(str(path) + ".gz")
        if alt.is_file():
            path = alt
        else:
            raise DataError(f"Fashion-MNIST file not found: {path} (apt-get install "
                            f"dataset-fashion-mnist, or pass --source DIR)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def _write_png(path: Path, img: np.ndarray) -> None:
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def prepare_fashion_lt(source: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                       test_per_class: int = 500, val_per_class: int = 20) -> dict:
    src, out = Path(source), Path(out)
    tr_x = read_idx(src / "train-images-idx3-ubyte.gz")
    tr_y = read_idx(src / "train-labels-idx1-ubyte.gz").astype(np.int64)
    te_x = read_idx(src / "t10k-images-idx3-ubyte.gz")
    te_y = read_idx(src / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    known = [c for c in range(10) if c not in OPEN_CLASSES]
    order = rng.permutation(len(known))  # which known class gets which count
    counts = {known[i]: TRAIN_COUNTS[j] for j, i in enumerate(order)}
    label_of = {c: i for i, c in enumerate(known)}  # dense labels 0..7 in class order
    rows: dict[str, list[tuple[np.ndarray, str, int]]] = {s: [] for s in ("train", "val", "test", "open")}
    for c in known:
        idx = rng.permutation(np.flatnonzero(tr_y == c))
        n = counts[c]
        for split, take in (("train", idx[:n]), ("val", idx[n:n + val_per_class])):
            rows[split] += [(tr_x[i], f"{split}/{CLASS_NAMES[c]}/{i:05d}.png", label_of[c]) for i in take]
        tidx = rng.permutation(np.flatnonzero(te_y == c))[:test_per_class]
        rows["test"] += [(te_x[i], f"test/{CLASS_NAMES[c]}/{i:05d}.png", label_of[c]) for i in tidx]
    for c in OPEN_CLASSES:
        tidx = rng.permutation(np.flatnonzero(te_y == c))[:test_per_class]
        rows["open"] += [(te_x[i], f"open/{CLASS_NAMES[c]}/{i:05d}.png", -1) for i in tidx]
    total = sum(len(v) for v in rows.values())
    with progress(total=total, desc="fashion-lt", unit="img") as bar:
        for split, items in rows.items():
            for img, rel, _ in items:
                _write_png(out / "images" / rel, img)
                bar.update(1)
            write_list(out / f"FashionLT_{split}.txt", [f"images/{r}" for _, r, _ in items],
                       np.array([lab for *_, lab in items], dtype=np.int64))
    names = [CLASS_NAMES[c] for c in known]
    with atomic_path(out / "class_names.txt") as tmp:
        tmp.write_text("\n".join(names) + "\n")
    manifest = {"source": str(src), "seed": seed, "known_classes": names,
                "open_classes": [CLASS_NAMES[c] for c in OPEN_CLASSES],
                "train_counts": {CLASS_NAMES[c]: counts[c] for c in known},
                "splits": {s: len(v) for s, v in rows.items()}}
    write_json(out / "manifest.json", manifest)
    return manifest
