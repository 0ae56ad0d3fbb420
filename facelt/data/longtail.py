"""Long-tailed benchmark splits in the OLTR list format: describe, locate, validate, build.

Two jobs for benchmarks built from a dataset of class folders; the benchmark parameters live in
``pipelines/`` and nothing here knows a benchmark by name.

**Describe / locate / validate.**  :class:`BenchmarkSpec` names a benchmark's list files, class
count and input format; :func:`resolve_split_paths` says where they are expected;
:func:`validate_split_paths` reads every list, checks labels, and checks that every listed image
exists, raising ONE :class:`~facelt.errors.DataError` with the count and the first missing paths.

**Build** (Liu et al., CVPR 2019: a subset "following the Pareto distribution" with power alpha,
between a maximum and a minimum number of images a class).  The per-class
count curve of :func:`pareto_counts`, exactly:

1. Pareto(alpha, x_m = 1) quantiles on the even grid ``u_i = i / K`` (``i = 0..K-1``; ``u = 1``,
   where the quantile is infinite, is left out): ``x_i = (1 - u_i) ** (-1 / alpha)``, so
   ``x`` runs from 1 to ``K ** (1 / alpha)``.
2. Normalise to ``z_i = (x_i - 1) / (K ** (1/alpha) - 1)`` in ``[0, 1]``.
3. ``n_i = min + (max - min) * z_i ** p``.  With no target total ``p = 1`` (a plain linear rescale
   of the Pareto quantiles into ``[min, max]``).  With a target total ``T`` (the paper publishes
   one), ``p`` is the unique exponent with ``sum_i n_i = T`` (the sum falls strictly as ``p``
   grows), found by bisection to 1e-12.
4. Integers by largest remainder, so the total is exactly ``T`` (or the rounded real sum), the
   largest count exactly ``max`` and the smallest exactly ``min``.  Sorted, largest first.

The curve has no randomness: the seed only picks which images fill it.  With a target total,
``p`` measures how far the curve departs from the plain Pareto rescale (``p = 1``); the
benchmark pipelines document their ``p`` and how the result compares with the released lists.

Counts go to classes in the benchmark's class order, largest first (``order="descending"``), or in
a seeded random permutation (``order="shuffled"``).  Images: within each class the files are
sorted by name, then one ``numpy.random.Generator(PCG64(seed))``, walking the classes in order,
draws a permutation of each class's files that are not reserved; the first ``n_i`` are train, the
next ``n_val`` are val.  Same tree + same seed -> the same lists, byte for byte, on any file
system.  Released splits are NOT reproduced image for image (their authors' draw is unknown);
only the published statistics are targeted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Sequence

import numpy as np

from facelt.data.lists import OPEN_LABEL, ImageList, labels_outside, read_list, resolve_list_file, write_list
from facelt.data.shots import shot_counts
from facelt.errors import ConfigError, DataError
from facelt.utils.io import write_json

if TYPE_CHECKING:
    from facelt.config import DataConfig
from facelt.utils.progress import progress

#: File extensions counted as images when a class folder is listed (compared lower-case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm",
                                              ".tif", ".tiff"})
SPLITS: tuple[str, ...] = ("train", "val", "test", "open")


# --------------------------------------------------------------------------------------------
# Benchmark description, paths and validation
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongTailRecipe:
    """Parameters of the Pareto long-tail builder (see the module docstring)."""

    max_count: int
    min_count: int
    alpha: float = 6.0
    total: Optional[int] = None
    n_val: int = 20
    order: str = "descending"


@dataclass(frozen=True)
class BenchmarkSpec:
    """An OLTR-format benchmark: list files, classes and input format.

    ``list_files`` maps ``train/val/test/open`` to file names inside the splits folder; known
    splits hold paths relative to the data root (``<split>/<class folder>/<file>``), the open
    list holds paths relative to ``open_dir`` (default: ``<splits>/<open_dir_name>``, the OLTR
    reference layout).  ``class_names_from`` is the split whose paths give label -> folder name.
    """

    name: str
    num_classes: int
    list_files: Mapping[str, str]
    open_dir_name: str
    image_size: int = 224
    color: str = "RGB"
    class_names_from: str = "test"
    class_name_source: str = ""
    recipe: Optional[LongTailRecipe] = None
    rebuild_hint: str = ""


def spec_from_config(data: "DataConfig", name: str, open_dir_name: str, **details) -> BenchmarkSpec:
    """A benchmark's spec from its recipe's ``data`` section (list file names, class count, image
    size and colour are the recipe's, said once); ``details`` are the remaining BenchmarkSpec fields."""
    files = {split: getattr(data, split) for split in SPLITS}
    absent = [f"data.{split}" for split, f in files.items() if not f]
    if absent or data.num_classes <= 0:
        raise ConfigError(f"{name}: the recipe must name every list file and data.num_classes "
                          f"(missing: {', '.join(absent) or 'data.num_classes'})")
    return BenchmarkSpec(name=name, num_classes=data.num_classes,
                         list_files={split: Path(f).name for split, f in files.items()},
                         open_dir_name=open_dir_name, image_size=data.image_size,
                         color="RGB" if data.channels == 3 else "L", **details)


def resolve_split_paths(spec: BenchmarkSpec, data_root: str | os.PathLike,
                        splits_dir: str | os.PathLike,
                        open_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where the lists and images of ``spec`` are expected; checks nothing.

    Returns ``train/val/test/open`` (list files), ``root`` (image root of the known splits) and
    ``open_root`` (image root of the open list).
    """
    splits = Path(splits_dir)
    out = {split: resolve_list_file(splits / spec.list_files[split]) for split in SPLITS}
    out["root"] = Path(data_root)
    out["open_root"] = Path(open_root) if open_root is not None else splits / spec.open_dir_name
    return out


def _check_labels(spec: BenchmarkSpec, split: str, lst: ImageList) -> None:
    labels = lst.labels
    bad = labels_outside(labels, spec.num_classes, open_set=split == "open")
    want = (f"label {OPEN_LABEL} (open set)" if split == "open"
            else f"a label in 0..{spec.num_classes - 1}")
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{lst.line_of(i)}: {lst.items[i]!r} has label {int(labels[i])}; every "
                        f"{spec.name} {split} image needs {want} ({bad.size} such lines)")
    if len(lst) == 0:
        raise DataError(f"{lst.path}: the {spec.name} {split} list is empty")


def validate_split_paths(spec: BenchmarkSpec, paths: Mapping[str, Path],
                         splits: Sequence[str] = SPLITS,
                         max_report: int = 10) -> dict[str, ImageList]:
    """Read and check the lists of ``splits``; every listed image must exist.

    Raises one :class:`DataError` naming every missing list file, or one naming the number of
    missing images and the first ``max_report`` of them (with list file and line).  Returns the
    lists read, by split.
    """
    absent = [f"{split}: {paths[split]}" for split in splits if not Path(paths[split]).is_file()]
    if absent:
        hint = ""
        if "train" in splits and not Path(paths["train"]).is_file() and spec.rebuild_hint:
            hint = "\n" + spec.rebuild_hint
        raise DataError(f"{spec.name}: {len(absent)} list file(s) missing:\n  "
                        + "\n  ".join(absent) + hint)
    lists = {split: read_list(paths[split]) for split in splits}
    for split, lst in lists.items():
        _check_labels(spec, split, lst)
    shown: list[str] = []
    n_missing = n_total = 0
    for split, lst in lists.items():
        root = Path(paths["open_root" if split == "open" else "root"])
        n_total += len(lst)
        for i, item in enumerate(progress(lst.items, desc=f"checking {split} images", unit="img")):
            if not os.path.isfile(os.path.join(root, item)):
                n_missing += 1
                if len(shown) < max_report:
                    shown.append(f"{root / item} ({lst.line_of(i)})")
    if n_missing:
        roots = sorted({Path(paths["open_root" if s == "open" else "root"]) for s in lists})
        bad_roots = "".join(f"\n  (image root {r} is not a folder)"
                            for r in roots if not r.is_dir())
        more = f"\n  ... and {n_missing - len(shown)} more" if n_missing > len(shown) else ""
        raise DataError(f"{spec.name}: {n_missing} of {n_total} listed images are missing; first "
                        f"{len(shown)}:{bad_roots}\n  " + "\n  ".join(shown) + more)
    return lists


def class_names_from_list(lst: ImageList, num_classes: int) -> list[str]:
    """Label -> class folder name, read from paths ``<split>/<folder>/<file>`` of a known list.

    Every label in ``0..num_classes-1`` must appear and map to exactly one folder.
    """
    names: dict[int, str] = {}
    for i, (item, label) in enumerate(zip(lst.items, lst.labels.tolist())):
        parts = item.split("/")
        if len(parts) < 3:
            raise DataError(f"{lst.line_of(i)}: {item!r} is not '<split>/<class folder>/<file>'")
        folder = "/".join(parts[1:-1])
        seen = names.setdefault(label, folder)
        if seen != folder:
            raise DataError(f"{lst.line_of(i)}: label {label} is folder {folder!r} here but "
                            f"{seen!r} earlier in {lst.path}")
    absent = [k for k in range(num_classes) if k not in names]
    if absent or len(names) != num_classes:
        raise DataError(f"{lst.path}: expected labels 0..{num_classes - 1}, each once as a folder; "
                        f"{len(absent)} labels absent (first: {absent[:5]}), {len(names)} seen")
    return [names[k] for k in range(num_classes)]


# --------------------------------------------------------------------------------------------
# The Pareto count curve
# --------------------------------------------------------------------------------------------

def _pareto_shape(num_classes: int, alpha: float) -> np.ndarray:
    """Steps 1-2: normalised Pareto(alpha) quantiles on u = i/K, largest first, in [0, 1]."""
    u = np.arange(num_classes, dtype=np.float64) / num_classes
    x = (1.0 - u) ** (-1.0 / alpha)
    z = (x - 1.0) / (x[-1] - 1.0)
    return z[::-1].copy()


def _largest_remainder(real: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``: floors, +1 to the largest fractional parts (ends fixed)."""
    base = np.floor(real + 1e-9).astype(np.int64)
    short = int(total - base.sum())
    if not 0 <= short <= len(real) - 2:
        raise ValueError(f"cannot round {real.sum():.3f} to {total} with the ends fixed")
    if short:
        frac = real - base
        frac[0] = frac[-1] = -1.0                 # the max and min stay exact
        order = np.argsort(-frac, kind="stable")  # ties go to the earlier (larger) class
        base[order[:short]] += 1
    return np.sort(base)[::-1]


def _curve(z: np.ndarray, max_count: int, min_count: int, p: float) -> np.ndarray:
    return min_count + float(max_count - min_count) * z ** p


def pareto_exponent(num_classes: int, max_count: int, min_count: int, alpha: float,
                    total: Optional[int]) -> float:
    """The shape exponent ``p`` of step 3: 1 without a target, else the one hitting ``total``."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not (1 <= min_count < max_count):
        raise ValueError(f"need 1 <= min_count < max_count, got {min_count}..{max_count}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if total is None:
        return 1.0
    lo_total = max_count + min_count * (num_classes - 1)
    hi_total = max_count * (num_classes - 1) + min_count
    if not lo_total < total < hi_total:
        raise ValueError(f"total {total} is not reachable for {num_classes} classes of "
                         f"{min_count}..{max_count} images "
                         f"(exclusive range {lo_total}..{hi_total})")
    z = _pareto_shape(num_classes, alpha)
    lo, hi = 0.0, 1.0
    while _curve(z, max_count, min_count, hi).sum() > total:  # the sum falls as p grows
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if _curve(z, max_count, min_count, mid).sum() > total:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def pareto_counts(num_classes: int, max_count: int, min_count: int, alpha: float = 6.0,
                  total: Optional[int] = None) -> np.ndarray:
    """Images per class, largest first: the Pareto(alpha) curve of the module docstring.

    ``counts[0] == max_count``, ``counts[-1] == min_count`` and, when ``total`` is given,
    ``counts.sum() == total``.
    """
    p = pareto_exponent(num_classes, max_count, min_count, alpha, total)
    real = _curve(_pareto_shape(num_classes, alpha), max_count, min_count, p)
    return _largest_remainder(real, int(total) if total is not None else int(round(real.sum())))


# --------------------------------------------------------------------------------------------
# Listing class folders and drawing the split
# --------------------------------------------------------------------------------------------

def scan_class_folders(root: str | os.PathLike,
                       extensions: frozenset[str] = IMAGE_EXTENSIONS) -> dict[str, list[str]]:
    """``{class folder: sorted image file names}`` for the sub-folders of ``root`` (os.scandir).

    Hidden entries (starting with '.') and files of other extensions are skipped; classes come
    back in sorted folder-name order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"class-folder root {root} does not exist or is not a folder; expected "
                        f"one sub-folder of images per class")
    with os.scandir(root) as it:
        folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    index: dict[str, list[str]] = {}
    for name in progress(folders, desc=f"listing {root.name}", unit="class"):
        with os.scandir(root / name) as it:
            files = [e.name for e in it
                     if not e.name.startswith(".")
                     and os.path.splitext(e.name)[1].lower() in extensions and e.is_file()]
        files.sort()
        index[name] = files
    if not index:
        raise DataError(f"{root} holds no class sub-folders; expected <root>/<class>/<image>")
    return index


@dataclass
class LongTailDraw:
    """A drawn split: class order and, per split, relative paths (``<class>/<file>``) and labels."""

    classes: list[str]
    counts: np.ndarray
    train: list[str]
    train_labels: np.ndarray
    val: list[str]
    val_labels: np.ndarray
    seed: int
    order: str
    exponent: float = 1.0


def draw_longtail(index: Mapping[str, Sequence[str]], class_order: Sequence[str],
                  recipe: LongTailRecipe, seed: int = 0,
                  reserved: Optional[Mapping[str, Iterable[str]]] = None) -> LongTailDraw:
    """Draw train (Pareto counts) and val (``recipe.n_val`` a class) from ``index``.

    ``index`` maps class folder -> image file names (sorted here, so listing order never matters);
    ``class_order`` gives label order; ``reserved`` maps class folder -> file names that must not
    be drawn (e.g. a public val list's images).  A class with fewer free images than its count
    plus ``n_val`` is an error naming it.
    """
    classes = list(class_order)
    absent = [c for c in classes if c not in index]
    if absent:
        raise DataError(f"{len(absent)} of {len(classes)} classes have no folder in the source "
                        f"(first: {absent[:5]}); expected one folder per class")
    if len(set(classes)) != len(classes):
        raise DataError("class order lists a class twice")
    if recipe.order not in ("descending", "shuffled"):
        raise ValueError(f"order must be 'descending' or 'shuffled', got {recipe.order!r}")
    counts = pareto_counts(len(classes), recipe.max_count, recipe.min_count, recipe.alpha,
                           recipe.total)
    rng = np.random.Generator(np.random.PCG64(seed))
    if recipe.order == "shuffled":
        counts = counts[rng.permutation(len(classes))]
    reserved = reserved or {}
    short: list[str] = []
    train: list[str] = []
    val: list[str] = []
    train_labels: list[np.ndarray] = []
    val_labels: list[np.ndarray] = []
    for label, name in enumerate(progress(classes, desc="drawing long tail", unit="class")):
        files = sorted(index[name])
        taken = set(reserved.get(name, ()))
        if taken:
            files = [f for f in files if f not in taken]
        need = int(counts[label]) + recipe.n_val
        if len(files) < need:
            short.append(f"{name} (label {label}): {len(files)} free images, needs {need}")
            continue
        perm = rng.permutation(len(files))
        n = int(counts[label])
        train.extend(f"{name}/{files[j]}" for j in perm[:n])
        val.extend(f"{name}/{files[j]}" for j in perm[n:need])
        train_labels.append(np.full(n, label, dtype=np.int64))
        val_labels.append(np.full(recipe.n_val, label, dtype=np.int64))
    if short:
        raise DataError(f"{len(short)} classes have too few images for the long-tail draw "
                        f"(count + {recipe.n_val} val):\n  " + "\n  ".join(short[:10]))
    exponent = pareto_exponent(len(classes), recipe.max_count, recipe.min_count, recipe.alpha,
                               recipe.total)
    empty = np.zeros(0, dtype=np.int64)
    return LongTailDraw(classes=classes, counts=counts, train=train,
                        train_labels=np.concatenate(train_labels) if train_labels else empty,
                        val=val, val_labels=np.concatenate(val_labels) if val_labels else empty,
                        seed=seed, order=recipe.order, exponent=exponent)


def reserved_from_list(lst: ImageList) -> dict[str, set[str]]:
    """``{class folder: file names}`` of a list's ``<split>/<class>/<file>`` paths."""
    out: dict[str, set[str]] = {}
    for item in lst.items:
        parts = item.split("/")
        if len(parts) >= 3:
            out.setdefault("/".join(parts[1:-1]), set()).add(parts[-1])
    return out


def write_longtail(draw: LongTailDraw, out_dir: str | os.PathLike, prefix: str,
                   train_name: str, val_name: Optional[str],
                   manifest: Mapping[str, object]) -> dict[str, Path]:
    """Write ``train_name`` / ``val_name`` (paths ``<prefix>/<class>/<file>``) and manifest.json.

    ``val_name=None`` writes no val list.  Each file goes to a temporary name, then is renamed.
    """
    out = Path(out_dir)
    pre = prefix.strip("/") + "/" if prefix.strip("/") else ""
    train_path = out / train_name
    write_list(train_path, [pre + p for p in draw.train], draw.train_labels)
    written = {"train": train_path}
    if val_name is not None:
        written["val"] = out / val_name
        write_list(written["val"], [pre + p for p in draw.val], draw.val_labels)
    counts = draw.counts.tolist()
    info = {
        **manifest,
        "seed": draw.seed,
        "order": draw.order,
        "shape_exponent_p": draw.exponent,
        "num_classes": len(draw.classes),
        "train_images": len(draw.train),
        "val_images": len(draw.val) if val_name is not None else 0,
        "max_per_class": int(max(counts)),
        "min_per_class": int(min(counts)),
        "shots": shot_counts(counts),
        "classes": [{"label": k, "folder": c, "train": int(n)}
                    for k, (c, n) in enumerate(zip(draw.classes, counts))],
        "files": {k: v.name for k, v in written.items()},
    }
    written["manifest"] = out / "manifest.json"
    write_json(written["manifest"], info)
    return written


def prepare_longtail(spec: BenchmarkSpec, source_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     class_order: Optional[Sequence[str]] = None, seed: int = 0,
                     prefix: str = "train", recipe: Optional[LongTailRecipe] = None,
                     reserve: Sequence[str | os.PathLike] = (),
                     index: Optional[Mapping[str, Sequence[str]]] = None,
                     notes: Sequence[str] = ()) -> dict[str, Path]:
    """List ``source_dir`` (or use ``index``), draw ``spec``'s long tail, write lists + manifest.

    ``class_order`` defaults to the sorted folder names; ``reserve`` names list files whose
    ``<split>/<class>/<file>`` images are never drawn.  Returns the written paths.
    """
    recipe = recipe or spec.recipe
    if recipe is None:
        raise ValueError(f"{spec.name} has no long-tail recipe")
    if index is None:
        index = scan_class_folders(source_dir)
    order = list(class_order) if class_order is not None else sorted(index)
    if len(order) != spec.num_classes:
        raise DataError(f"{spec.name} has {spec.num_classes} classes but {len(order)} were given "
                        f"(class folders of {source_dir}); expected the full class-folder set")
    reserved: dict[str, set[str]] = {}
    for lst_path in reserve:
        for cls, names in reserved_from_list(read_list(lst_path)).items():
            reserved.setdefault(cls, set()).update(names)
    draw = draw_longtail(index, order, recipe, seed=seed, reserved=reserved)
    val_name: Optional[str] = spec.list_files["val"]
    notes = list(notes)
    if any(Path(p).resolve() == (Path(out_dir) / val_name).resolve() for p in reserve):
        notes.append(f"{val_name} in {out_dir} is the reserved public list: kept, not overwritten")
        val_name = None
    manifest = {
        "benchmark": spec.name,
        "split": "rebuilt: a new draw, not the official split (not comparable with published "
                 "numbers)",
        "source": str(source_dir),
        "path_prefix": prefix,
        "rule": (f"Pareto(alpha={recipe.alpha}) quantiles at u=i/K, rescaled to "
                 f"[{recipe.min_count}, {recipe.max_count}] as min+(max-min)*z**p, p fitted to the "
                 f"total; largest-remainder rounding; see facelt.data.longtail"),
        "alpha": recipe.alpha,
        "target_total": recipe.total,
        "n_val_per_class": recipe.n_val,
        "reserved_lists": [str(p) for p in reserve],
        "notes": list(notes),
    }
    return write_longtail(draw, out_dir, prefix, spec.list_files["train"], val_name, manifest)
