"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` ...) and their protocol.

The file: a pickle of ``(bins, issame_list)``; ``bins`` holds ``2N`` encoded images, pair ``i`` is
``bins[2i]`` vs ``bins[2i+1]``; ``issame_list`` holds ``N`` booleans.  Images are JPEG/PNG bytes
(Python 2 ``str``, read as bytes) or ``cv2.imencode`` output (uint8 numpy arrays).  A ``.bin`` is a
pickle from the internet, so :func:`read_bin` unpickles it with allow-lists of opcodes, globals
and states (:mod:`facelt.faces.bin_pickle`): lists, tuples, bools, bytes/str and numpy's uint8/bool
array and scalar reconstruction, into inert placeholders.  Anything else (``os.system``, a call of
``numpy.ndarray``, a dtype state that is not uint8's ...) is refused before anything is called or
allocated.

The protocol is insightface's ``verification.py``:

* embeddings L2-normalised, squared L2 distance per pair;
* thresholds ``arange(0, 4, 0.01)``; 10 folds in file order without shuffling (sklearn's
  ``KFold``: the first ``N % 10`` folds are one pair larger);
* per fold: the threshold with the best accuracy on the 9 other folds (the first maximum), then
  the test fold's accuracy of ``dist < threshold``;
* accuracy = mean of the 10 fold accuracies, ``std`` = ``np.std`` of them, ``threshold`` = the
  mean best threshold;
* VAL at FAR 1e-3: per fold, the training folds' FAR curve over ``arange(0, 4, 0.001)`` gives the
  threshold where FAR reaches 1e-3 (linear interpolation between the two thresholds around the
  first crossing; where FAR equals 1e-3 exactly on a run of thresholds, the last of them, as
  scipy's ``interp1d(kind='slinear')`` in insightface's ``calculate_val`` returns; 0 when FAR never
  reaches it, as insightface), and the test fold's TAR and FAR at it; ``val`` / ``val_std`` /
  ``far`` are their mean / std / mean.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np

from facelt.errors import DataError, FaceltError
from facelt.faces.bin_pickle import UnsafePickleError, load_bin_pickle

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
NUM_FOLDS = 10
FAR_TARGET = 1e-3


def read_bin(path: Union[str, os.PathLike]) -> tuple[list[bytes], np.ndarray]:
    """``(encoded images, issame)`` of a ``.bin`` file: ``2N`` byte strings and ``N`` booleans.

    Raises :class:`DataError` naming the file when it is missing, not a pickle, not of that shape,
    or asks for anything outside the allow-list (:mod:`facelt.faces.bin_pickle`: nothing in it is
    executed, nothing it declares is allocated beyond the bytes the file holds).
    """
    from facelt.utils.limits import check_allocation
    p = Path(path)
    if not p.is_file():
        raise DataError(f"verification set {p}: not found")
    try:
        size = p.stat().st_size
        check_allocation(3 * size, f"verification set {p} ({size:,} bytes, read whole)")
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"verification set {p}: cannot be read ({exc.strerror or exc})") from None
    try:
        obj = load_bin_pickle(data)
    except UnsafePickleError as exc:
        raise DataError(f"verification set {p}: refused, unsafe pickle: {exc}") from None
    except DataError as exc:
        raise DataError(f"verification set {p}: {exc}") from None
    del data
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"verification set {p}: expected a pickled (bins, issame_list) pair, got "
                        f"{type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise DataError(f"verification set {p}: bins is a {type(bins).__name__}, expected a list")
    images: list[bytes] = []
    as_bytes: dict[int, bytes] = {}  # an array the pickle references many times is copied once
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray):
            if b.dtype != np.uint8:
                raise DataError(f"verification set {p}: image {i} is a {b.dtype} array, expected "
                                "uint8 encoded bytes")
            if id(b) not in as_bytes:
                as_bytes[id(b)] = b.tobytes()
            b = as_bytes[id(b)]
        elif isinstance(b, str):  # a py2 str read with a text encoding
            b = b.encode("latin1")
        elif isinstance(b, bytearray):
            b = bytes(b)
        if not isinstance(b, bytes):
            raise DataError(f"verification set {p}: image {i} is a {type(b).__name__}, expected "
                            "encoded image bytes")
        images.append(b)
    if isinstance(issame, np.ndarray):
        flags = issame.reshape(-1).astype(bool)
    elif isinstance(issame, (list, tuple)) and all(type(x) in (bool, int) for x in issame):
        flags = np.asarray([bool(x) for x in issame], dtype=bool)
    else:
        raise DataError(f"verification set {p}: issame_list must be a list of booleans")
    if len(images) != 2 * len(flags):
        raise DataError(f"verification set {p}: {len(images)} images for {len(flags)} pairs; "
                        f"expected 2 x {len(flags)} = {2 * len(flags)}")
    if len(flags) == 0:
        raise DataError(f"verification set {p}: no pairs")
    return images, flags


def write_bin(path: Union[str, os.PathLike], encoded: list[bytes], issame: Any) -> Path:
    """Write a verification set in insightface's format: a pickle of ``(bins, issame_list)`` with
    ``bins`` the ``2N`` encoded images as Python 3 bytes (pair ``i`` = ``2i``, ``2i+1``) and
    ``issame_list`` ``N`` bools (written to a temporary name, then renamed)."""
    from facelt.utils.io import atomic_path
    flags = [bool(x) for x in np.asarray(issame).reshape(-1)]
    bins = [bytes(b) for b in encoded]
    if len(bins) != 2 * len(flags) or not flags:
        raise DataError(f"verification set {path}: {len(bins)} images for {len(flags)} pairs; "
                        "expected 2 per pair and at least one pair")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(pickle.dumps((bins, flags), protocol=4))
    return out


def decode_images(encoded: list[bytes], where: str = "images",
                  size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Decode encoded images into one ``(N, H, W, 3)`` uint8 RGB array.

    Every image is resized to ``size`` (height, width) when given, else to the first image's size
    when they differ.  Each image's declared size is checked from its header before it is decoded
    (:mod:`facelt.data.decode`), and the whole array against the memory there is before it is
    allocated; an empty or undecodable image is a :class:`DataError` naming it.
    """
    from facelt.data.decode import imdecode
    from facelt.utils.limits import check_allocation
    from facelt.utils.progress import progress
    if not encoded:
        raise DataError(f"{where}: no images")
    first = imdecode(encoded[0], cv2.IMREAD_COLOR, f"{where}: image 0 of the set")
    h, w = (int(size[0]), int(size[1])) if size is not None else first.shape[:2]
    check_allocation(len(encoded) * h * w * 3,
                     f"{where}: {len(encoded):,} decoded images of {w}x{h} pixels")
    out = np.empty((len(encoded), h, w, 3), dtype=np.uint8)
    decoded: dict[int, int] = {}  # a payload object the file holds many times is decoded once
    for i, payload in enumerate(progress(encoded, desc=f"decode {where}", unit="img")):
        if id(payload) in decoded:
            out[i] = out[decoded[id(payload)]]
            continue
        img = first if i == 0 else imdecode(payload, cv2.IMREAD_COLOR,
                                            f"{where}: image {i} of the set")
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[i])
        decoded[id(payload)] = i
    del first
    return out


# ----------------------------------------------------------------------------------- protocol

def fold_bounds(n: int, num_folds: int = NUM_FOLDS) -> list[tuple[int, int]]:
    """``[start, stop)`` of each fold over ``n`` pairs in order; the first ``n % k`` one larger."""
    if n < num_folds:
        raise DataError(f"{n} pairs cannot be split into {num_folds} folds")
    sizes = np.full(num_folds, n // num_folds, dtype=np.int64)
    sizes[: n % num_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for s, b in zip(sizes, stops)]


def pair_distances(features: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the L2-normalised rows ``2i`` and ``2i+1`` (float32, as
    insightface computes it)."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) % 2:
        raise DataError(f"features of shape {x.shape}: expected (2N, d), two rows per pair")
    from facelt.features.files import l2_normalize
    x = l2_normalize(x.copy(), out=None)
    diff = x[0::2] - x[1::2]
    return np.sum(np.square(diff), axis=1, dtype=np.float32)


def _below_counts(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t: how many values are < t (values sorted ascending, float64)."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def accuracy_curve(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``dist < t`` for each threshold ``t`` (one sort, no pairs x thresholds matrix)."""
    d = np.asarray(dist, dtype=np.float64)
    pos = np.sort(d[issame])
    neg = np.sort(d[~issame])
    tp = _below_counts(pos, thresholds)
    tn = len(neg) - _below_counts(neg, thresholds)
    return (tp + tn) / float(len(d))


def tar_far(dist: np.ndarray, issame: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) of accepting pairs with ``dist < threshold``; NaN where a class is absent."""
    d = np.asarray(dist, dtype=np.float64)
    accept = d < threshold
    n_same, n_diff = int(issame.sum()), int((~issame).sum())
    ta = int(np.sum(accept & issame))
    fa = int(np.sum(accept & ~issame))
    return (ta / n_same if n_same else float("nan"), fa / n_diff if n_diff else float("nan"))


def threshold_at_far(dist: np.ndarray, issame: np.ndarray, far_target: float,
                     thresholds: np.ndarray = VAL_THRESHOLDS) -> float:
    """The distance threshold where the FAR of ``dist < t`` reaches ``far_target`` (linear
    interpolation between the thresholds around the first crossing; the last threshold of a run
    whose FAR equals ``far_target`` exactly, as insightface's ``interp1d`` gives); 0 when it never
    does."""
    d = np.asarray(dist, dtype=np.float64)
    neg = np.sort(d[~issame])
    if len(neg) == 0:
        return 0.0
    far = _below_counts(neg, thresholds) / float(len(neg))
    if far.max() < far_target:
        return 0.0
    j = int(np.argmax(far >= far_target))
    if far[j] == far_target:  # reached exactly: interp1d's value at a repeated x is its last y
        return float(thresholds[j + int(np.sum(far[j:] == far_target)) - 1])
    if j == 0:
        return float(thresholds[0])
    f0, f1, t0, t1 = far[j - 1], far[j], thresholds[j - 1], thresholds[j]
    return float(t0 + (far_target - f0) * (t1 - t0) / (f1 - f0))


def far_measurable(far: float, impostors: int) -> bool:
    """Whether ``impostors`` impostor pairs can measure a FAR of ``far``: one false accept is a
    rate of ``1 / impostors``, so a smaller FAR is not measurable (0 or 1 false accepts decide it)."""
    return impostors > 0 and far * impostors >= 1.0


def tar_text(tar: float, far_target: float, achieved: float, impostors: int) -> str:
    """``TAR@FAR=0.001 97.50% (achieved FAR 0.0010)``, or the same saying the FAR is not
    measurable from ``impostors`` impostor pairs."""
    text = f"TAR@FAR={far_target:g} {100 * tar:.2f}% (achieved FAR {100 * achieved:.2f}%)"
    if not far_measurable(far_target, impostors):
        text += (f" [FAR {far_target:g} not measurable: {impostors} impostor pairs, one false "
                 f"accept is {1 / max(impostors, 1):.2g}]")
    return text


def verification_metrics(features: np.ndarray, issame: np.ndarray, num_folds: int = NUM_FOLDS,
                         far_target: float = FAR_TARGET) -> dict:
    """insightface's verification protocol on ``(2N, d)`` features (rows ``2i``, ``2i+1`` a pair)."""
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    dist = pair_distances(features)
    if len(dist) != len(issame):
        raise DataError(f"{len(dist)} feature pairs for {len(issame)} labels")
    n = len(dist)
    accs, best, vals, fars = [], [], [], []
    impostors = n
    for a, b in fold_bounds(n, num_folds):
        train = np.ones(n, dtype=bool)
        train[a:b] = False
        curve = accuracy_curve(dist[train], issame[train], ACC_THRESHOLDS)
        t = float(ACC_THRESHOLDS[int(np.argmax(curve))])  # the first maximum
        best.append(t)
        accs.append(float(accuracy_curve(dist[a:b], issame[a:b], np.array([t]))[0]))
        impostors = min(impostors, int((~issame[train]).sum()))
        tv = threshold_at_far(dist[train], issame[train], far_target)
        v, f = tar_far(dist[a:b], issame[a:b], tv)
        vals.append(v)
        fars.append(f)
    return {
        "pairs": int(n),
        "accuracy": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "threshold": float(np.mean(best)),
        "fold_accuracies": accs,
        "fold_thresholds": best,
        "val": float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "far_target": float(far_target),
        "impostors": int(impostors),  # the fewest impostor pairs a threshold was chosen on
        "far_measurable": far_measurable(far_target, impostors),
    }


# ----------------------------------------------------------------------------------- evaluator

@dataclass
class VerificationSet:
    """One verification set, decoded once: ``images`` (2N, H, W, 3) uint8 RGB, ``issame`` (N,).

    Use :meth:`evaluate_model` during training (no re-decoding per call) and
    :meth:`evaluate_features` for precomputed rows in the file's image order.
    """

    name: str
    path: Path
    images: np.ndarray
    issame: np.ndarray = field(repr=False)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], image_size: Optional[int] = None,
             name: Optional[str] = None) -> "VerificationSet":
        """Read and decode a ``.bin``; ``image_size`` resizes every image once (square)."""
        p = Path(path)
        encoded, issame = read_bin(p)
        size = (int(image_size), int(image_size)) if image_size else None
        images = decode_images(encoded, where=f"verification set {p}", size=size)
        return cls(name or p.stem, p, images, issame)

    @classmethod
    def load_for_model(cls, path: Union[str, os.PathLike], input_size: tuple[int, int],
                       resize: bool = False, name: Optional[str] = None) -> "VerificationSet":
        """Read a ``.bin`` for a model taking ``input_size`` (height, width) images: its images
        must be that size (checked from the first image's header, before decoding:
        :func:`facelt.data.image_size.require_image_size`) unless ``resize``, which resizes
        every image once."""
        from facelt.data.decode import encoded_image_size
        from facelt.data.image_size import require_image_size
        p = Path(path)
        encoded, issame = read_bin(p)
        size = (int(input_size[0]), int(input_size[1]))
        if encoded and not resize:
            w, h = encoded_image_size(bytes(encoded[0]), f"verification set {p}, image 0")
            require_image_size((h, w), size, f"verification set {p}", "the model",
                               "evaluate a model of the set's size, or give --resize to "
                               "resize every image to the model's")
        images = decode_images(encoded, where=f"verification set {p}",
                               size=size if resize else None)
        return cls(name or p.stem, p, images, issame)

    @property
    def pairs(self) -> int:
        return int(len(self.issame))

    def evaluate_features(self, features: np.ndarray) -> dict:
        """The protocol on precomputed ``(2N, d)`` rows in the file's image order."""
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[0] != 2 * self.pairs:
            raise DataError(f"{self.name}: features of shape {feats.shape}; expected "
                            f"({2 * self.pairs}, d), two rows per pair in the .bin's order")
        from facelt.utils.finite import check_finite_rows
        check_finite_rows(feats, f"embeddings of {self.path}")
        return {"name": self.name, **verification_metrics(feats, self.issame)}

    def evaluate_model(self, model: Any, device: Any = "cpu", batch_size: int = 64,
                       flip: bool = True) -> dict:
        """Embed the images (flip-sum) with ``model`` and run the protocol; adds ``xnorm``.

        ``model`` is an image embedder (:mod:`facelt.features.embed`: a :class:`~facelt.features.embed.TorchEmbedder`,
        an :class:`~facelt.faces.onnx_io.OnnxEmbedder`, anything with ``input_size`` and a call on uint8
        RGB batches) or a face network (its ``net.body``; insightface's ``(x - 127.5) / 127.5`` input
        at the set's image size).
        """
        from facelt.features.embed import TorchEmbedder, embed_array
        embedder = model
        if not hasattr(model, "input_size"):
            embedder = TorchEmbedder(model, device, tuple(self.images.shape[1:3]))
        emb = embed_array(embedder, self.images, batch_size, flip, desc=f"embed {self.name}")
        return {**self.evaluate_features(emb.features), "xnorm": float(emb.xnorm)}


def verify_features_file(bin_path: Union[str, os.PathLike],
                         features_path: Union[str, os.PathLike]) -> dict:
    """The protocol on a precomputed feature file (2N rows in the ``.bin``'s image order); the
    ``.bin``'s images are not decoded."""
    from facelt.features.files import FeatureFile
    _, issame = read_bin(bin_path)
    ff = FeatureFile.open(features_path)
    if ff.rows != 2 * len(issame):
        raise FaceltError(f"features {ff.path}: {ff.rows} rows, but {bin_path} holds "
                          f"{len(issame)} pairs ({2 * len(issame)} images)")
    from facelt.utils.finite import check_finite_rows
    feats = ff.read(0, ff.rows)
    check_finite_rows(feats, ff.path)  # one NaN row would score as a coin flip
    return {"name": Path(bin_path).stem, **verification_metrics(feats, issame)}


def verification_report_files(out: Union[str, os.PathLike]) -> list[Path]:
    """The files :func:`write_verification_report` writes into folder ``out``."""
    return [Path(out) / "report.json", Path(out) / "report.md"]


def write_verification_report(results: list[dict], out: Union[str, os.PathLike]) -> None:
    """``report.json`` (the results) and ``report.md`` (a table a set) in ``out``."""
    from facelt.utils.io import write_json, write_text
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", results)
    lines = ["# Face verification (insightface protocol)", "",
             "10 folds in file order; best training-fold threshold on squared L2 distance of "
             "L2-normalised flip-summed embeddings; accuracy = mean +- std of the fold accuracies.",
             "", "| set | pairs | accuracy | std | threshold | XNorm | TAR@FAR=1e-3 | achieved FAR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        xn = f"{r['xnorm']:.4f}" if "xnorm" in r else "n/a"
        lines.append(f"| {r['name']} | {r['pairs']:,} | {100 * r['accuracy']:.2f}% | "
                     f"{100 * r['std']:.2f} | {r['threshold']:.3f} | {xn} | {100 * r['val']:.2f}% | "
                     f"{100 * r['far']:.2f}%{'' if r.get('far_measurable', True) else ' (not measurable)'} |")
    write_text(out / "report.md", "\n".join(lines) + "\n")
