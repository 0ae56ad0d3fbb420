"""A built-in, generated long-tailed open-set image dataset in the OLTR list format (no downloads).

Every image is SYNTHETIC (rendered by :mod:`pipelines.synthetic_faces`): ``num_classes`` known
identities with a long-tailed number of training images, balanced val and test splits of the same
identities (drawn from image streams disjoint from the training images), and an open split of
``open_classes`` identities never seen in training. Written as PNG files under ``OUT/images`` and
the four OLTR lists ``OUT/demo_{train,val,test,open}.txt`` (``relative/path label``, open label -1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facelt.data.lists import write_list
from facelt.utils.io import atomic_path, write_json
from facelt.utils.progress import progress
from pipelines.synthetic_faces import identity_seed, render_identity_images


@dataclass(frozen=True)
class DemoSpec:
    num_classes: int = 12
    open_classes: int = 4
    max_count: int = 150
    min_count: int = 4
    val_per_class: int = 5
    test_per_class: int = 20
    open_per_class: int = 20
    image_size: int = 32
    seed: int = 0


def demo_counts(spec: DemoSpec) -> np.ndarray:
    """Training images per class: a geometric decay from ``max_count`` (class 0) to ``min_count``."""
    k = spec.num_classes
    if k == 1:
        return np.array([spec.max_count])
    ratio = (spec.min_count / spec.max_count) ** (1.0 / (k - 1))
    return np.maximum(spec.min_count, np.round(spec.max_count * ratio ** np.arange(k))).astype(int)


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", img)
        if not ok:  # pragma: no cover
            raise RuntimeError(f"cannot encode {path}")
        tmp.write_bytes(buf.tobytes())


def make_demo_dataset(out: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> dict[str, Path]:
    """Write the dataset under ``out`` (skipping images already complete); return the list paths."""
    out = Path(out)
    counts = demo_counts(spec)
    plan: list[tuple[str, int, int, int]] = []  # split, class index (identity), label, n
    for c in range(spec.num_classes):
        plan += [("train", c, c, int(counts[c])), ("val", c, c, spec.val_per_class),
                 ("test", c, c, spec.test_per_class)]
    for j in range(spec.open_classes):
        plan.append(("open", spec.num_classes + j, -1, spec.open_per_class))
    lists: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in
                                                     ("train", "val", "test", "open")}
    streams = {"train": 11, "val": 12, "test": 13, "open": 13}
    total = sum(n for *_, n in plan)
    with progress(total=total, desc="demo images", unit="img") as bar:
        for split, ident, label, n in plan:
            sid = identity_seed(spec.seed, ident, "train")
            rng = np.random.Generator(np.random.PCG64([sid % 2**63, streams[split]]))
            rel_dir = Path("images") / split / f"id{ident:03d}"
            names = [rel_dir / f"{i:04d}.png" for i in range(n)]
            if all((out / p).is_file() for p in names):
                bar.update(n)
            else:
                for p, img in zip(names, render_identity_images(sid, n, size=spec.image_size, rng=rng)):
                    _write_png(out / p, img)
                    bar.update(1)
            lists[split][0].extend(str(p) for p in names)
            lists[split][1].extend([label] * n)
    paths = {}
    for split, (items, labels) in lists.items():
        paths[split] = out / f"demo_{split}.txt"
        write_list(paths[split], items, np.asarray(labels, dtype=np.int64))
    write_json(out / "manifest.json", {
        "synthetic": True,
        "description": "SYNTHETIC long-tailed open-set demo data rendered by pipelines.demo_data",
        "spec": spec.__dict__, "train_counts": counts.tolist()})
    return paths
