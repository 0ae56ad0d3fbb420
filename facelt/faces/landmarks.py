"""Where five-point face landmarks come from: a CSV table, MegaFace/FaceScrub JSON, or MTCNN.

Every source yields a float32 array of shape (5, 2), rows in the order of
:data:`facelt.faces.align.LANDMARK_NAMES` -- left eye, right eye, nose tip, left mouth corner, right
mouth corner, "left" meaning the image's left (the subject's right), (x, y) in pixels of the
original photo.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facelt.errors import DataError, FaceltError

CSV_HEADER = ["path"] + [f"{axis}{i}" for i in range(1, 6) for axis in ("x", "y")]

# iBUG 300-W 68-point scheme, 0-based as MegaFace/FaceScrub JSON keys "0".."67" use it:
# 36..41 outline the image-left eye, 42..47 the image-right eye, 30 is the nose tip,
# 48 and 54 are the left and right mouth corners.
IBUG68_LEFT_EYE = tuple(range(36, 42))
IBUG68_RIGHT_EYE = tuple(range(42, 48))
IBUG68_NOSE_TIP = 30
IBUG68_MOUTH_LEFT = 48
IBUG68_MOUTH_RIGHT = 54


def read_landmarks_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``path,x1,y1,...,x5,y5`` rows into ``{relative path: (5, 2) float32}``.

    The header line is required and must be exactly :data:`CSV_HEADER`.  Every malformed row
    (wrong column count, a non-number, NaN/inf, a repeated path) raises :class:`DataError`
    naming the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"landmarks file {p} does not exist")
    out: dict[str, np.ndarray] = {}
    with open(p, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{p}: empty file, expected the header {','.join(CSV_HEADER)}")
        if [h.strip() for h in header] != CSV_HEADER:
            raise DataError(f"{p}:1: header is {','.join(header)!r}, expected "
                            f"{','.join(CSV_HEADER)!r}")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(CSV_HEADER):
                raise DataError(f"{p}:{line}: {len(row)} columns, expected {len(CSV_HEADER)} "
                                f"({','.join(CSV_HEADER)})")
            rel = row[0].strip()
            if not rel:
                raise DataError(f"{p}:{line}: empty image path")
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                raise DataError(f"{p}:{line}: coordinates must be numbers, got {row[1:]}") from None
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"{p}:{line}: non-finite coordinate in {row[1:]}")
            if rel in out:
                raise DataError(f"{p}:{line}: image {rel!r} is listed twice")
            out[rel] = np.asarray(values, dtype=np.float32).reshape(5, 2)
    return out


def _point(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, dict) and "x" in value and "y" in value:
        x, y = value["x"], value["y"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        x, y = value
    else:
        raise DataError(f"{where}: a landmark must be {{\"x\": .., \"y\": ..}} or [x, y], "
                        f"got {value!r}")
    try:
        xf, yf = float(x), float(y)
    except (TypeError, ValueError):
        raise DataError(f"{where}: landmark coordinates must be numbers, got {value!r}") from None
    if not (math.isfinite(xf) and math.isfinite(yf)):
        raise DataError(f"{where}: non-finite landmark {value!r}")
    return xf, yf


def parse_megaface_record(record: Any, where: str) -> np.ndarray:
    """Five points from one MegaFace/FaceScrub JSON record (see :func:`read_megaface_json`)."""
    if isinstance(record, list) and len(record) == 1:
        record = record[0]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    marks = record.get("landmarks", record)
    if not isinstance(marks, dict):
        raise DataError(f"{where}: \"landmarks\" must be an object keyed \"0\", \"1\", ...")
    keys = {k for k in marks if str(k).isdigit()}
    if not keys:
        raise DataError(f"{where}: no \"landmarks\" entry (keys \"0\"..\"67\" or \"0\"..\"4\")")
    if keys == {str(i) for i in range(68)}:
        pts = {int(k): _point(marks[k], f"{where} landmark {k}") for k in keys}

        def mean(idx: tuple[int, ...]) -> tuple[float, float]:
            return (sum(pts[i][0] for i in idx) / len(idx), sum(pts[i][1] for i in idx) / len(idx))

        five = [mean(IBUG68_LEFT_EYE), mean(IBUG68_RIGHT_EYE), pts[IBUG68_NOSE_TIP],
                pts[IBUG68_MOUTH_LEFT], pts[IBUG68_MOUTH_RIGHT]]
    elif keys == {str(i) for i in range(5)}:
        five = [_point(marks[str(i)], f"{where} landmark {i}") for i in range(5)]
    else:
        raise DataError(
            f"{where}: {len(keys)} landmarks (keys {sorted(keys, key=int)[:8]}...), facelt reads "
            "the 68-point (\"0\"..\"67\") or the 5-point (\"0\"..\"4\") variant; align such "
            "images with a detector (facelt align --detector mtcnn) instead")
    return np.asarray(five, dtype=np.float32)


def _read_json(p: Path):
    """A landmarks JSON file, with an error naming it when missing or malformed."""
    if not p.is_file():
        raise DataError(f"landmarks file {p} does not exist")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from None


def read_megaface_json(path: str | os.PathLike) -> np.ndarray:
    """Five points from a MegaFace/FaceScrub per-image JSON (``<image>.json``).

    The file is an object with a ``"landmarks"`` object keyed by point index, each point
    ``{"x": .., "y": ..}`` (``[x, y]`` is accepted too):

    * 68 points, keys ``"0"``..``"67"`` (iBUG 300-W order, 0-based): left eye = mean of points
      36..41, right eye = mean of 42..47, nose = 30, left mouth = 48, right mouth = 54;
    * 5 points, keys ``"0"``..``"4"``: taken as left eye, right eye, nose, left mouth, right
      mouth (the MTCNN order).

    Any other count (e.g. the 3-point MegaFace distractor variant) raises :class:`DataError`.
    """
    p = Path(path)
    return parse_megaface_record(_read_json(p), str(p))


def read_landmarks_json(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A single JSON object ``{relative path: record}`` with MegaFace-style records."""
    p = Path(path)
    table = _read_json(p)
    if not isinstance(table, dict):
        raise DataError(f"{p}: expected an object mapping image paths to landmark records")
    return {str(rel): parse_megaface_record(rec, f"{p} [{rel!r}]") for rel, rec in table.items()}


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a landmarks table by extension: ``.csv`` or ``.json``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_landmarks_csv(path)
    if suffix == ".json":
        return read_landmarks_json(path)
    raise DataError(f"landmarks file {path}: unknown format {suffix!r}, expected .csv or .json")


class MTCNNDetector:
    """Five-point landmarks from facenet-pytorch's MTCNN (weights ship inside its wheel).

    ``weights_dir`` may name a folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt`` state
    dicts to use instead of the packaged ones.  Of several faces the largest box is kept.
    """

    def __init__(self, weights_dir: Optional[str | os.PathLike] = None, *,
                 min_face_size: int = 20, device: str = "cpu") -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            if exc.name not in (None, "facenet_pytorch"):
                # e.g. `requests`, which facenet-pytorch's __init__ imports (a --no-deps install)
                raise FaceltError(
                    f"facenet-pytorch is installed but cannot be imported: it needs the module "
                    f"{exc.name!r} (pip install {exc.name})") from None
            raise FaceltError(
                "the MTCNN detector needs the optional package facenet-pytorch: install it with "
                "`pip install --no-deps facenet-pytorch` (its wheel carries the weights; it also "
                "imports `requests`), or pass a landmarks file (--landmarks FILE.csv|.json)"
            ) from None
        import torch

        self._torch = torch
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise FaceltError(f"unknown torch device {device!r} for the detector "
                              "(e.g. cpu, cuda, cuda:1)") from None
        self._mtcnn = MTCNN(keep_all=True, select_largest=True, min_face_size=min_face_size,
                            device=dev)
        if weights_dir is not None:
            self._load_weights(Path(weights_dir))
        self._mtcnn.eval()

    def _load_weights(self, folder: Path) -> None:
        for name in ("pnet", "rnet", "onet"):
            f = folder / f"{name}.pt"
            if not f.is_file():
                raise DataError(f"MTCNN weights {f} not found (need pnet.pt, rnet.pt, onet.pt)")
            try:
                state = self._torch.load(f, map_location="cpu", weights_only=True)
                getattr(self._mtcnn, name).load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 -- any load failure is the file's fault
                raise DataError(f"MTCNN weights {f} could not be loaded: {exc}") from None

    def detect(self, image_bgr: np.ndarray) -> Optional[np.ndarray]:
        """(5, 2) float32 landmarks of the largest face in a BGR image, or None if none."""
        if image_bgr.ndim == 2:
            rgb = np.repeat(image_bgr[:, :, None], 3, axis=2)
        else:
            rgb = np.ascontiguousarray(image_bgr[:, :, 2::-1])
        boxes, _probs, points = self._mtcnn.detect(rgb, landmarks=True)
        if boxes is None or points is None or len(boxes) == 0:
            return None
        # select_largest=True sorts the faces by box area, largest first.
        return np.asarray(points[0], dtype=np.float32).reshape(5, 2)
