"""IJB-B / IJB-C 1:1 template verification in insightface's layout (``eval_ijbc.py``).

Layout under ``IJB_ROOT`` (``<t>`` is ``ijbc`` or ``ijbb``, lower case as insightface ships it;
upper case accepted too)::

    meta/<t>_name_5pts_score.txt      image x1 y1 ... x5 y5 score   (one line an image: the row order)
    meta/<t>_face_tid_mid.txt         image template_id media_id    (same images)
    meta/<t>_template_pair_label.txt  template1 template2 label     (1 = same identity)
    loose_crop/<image>                the photos; aligned with the 5 points to the 112x112 template

The protocol (insightface's defaults):

* image feature = ``embed(x) + embed(mirror(x))``, **not** normalised (its norm is a quality
  signal), times the detector score; ``normalize_images`` L2-normalises it first,
  ``detector_score=False`` drops the weighting;
* media feature = mean of the media's image features; template feature = sum of its media
  features, L2-normalised; pair score = cosine of the two templates;
* TAR at FAR f, by a named rule (``tar_rule``, ``facelt ijb --tar-rule``): ``strict`` (default)
  = the highest TPR over score thresholds (accept ``score >= t``) whose FPR <= f; 0 when none
  (tied scores are accepted or rejected together).  ``insightface`` = the rule of the published
  tables (``recognition/arcface_torch/eval_ijbc.py``): scikit-learn's ``roc_curve`` (intermediate
  points dropped, :func:`sklearn_kept_points`), then the TPR of the point whose FPR is *nearest*
  f (``argmin |fpr - f|``; of equal distances the point later in roc_curve's order, the higher
  one), which can lie above f.

Pairs stream through memory in blocks (IJB-C has 15.7M); the scores (float64) are kept, one sort
gives the ROC.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from facelt.errors import DataError, FaceltError

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
TAR_RULES = {
    "strict": "strict: the highest TPR over thresholds whose FPR <= FAR (0 when none)",
    "insightface": ("insightface: the TPR of the ROC point whose FPR is nearest FAR (scikit-learn "
                    "roc_curve, intermediate points dropped), as insightface's eval_ijbc.py "
                    "prints it; that point can lie above FAR"),
}
TARGETS = ("IJBB", "IJBC")
PAIR_BLOCK = 1 << 20
SCORE_BLOCK = 1 << 13


def far_key(far: float) -> str:
    """The JSON key of a FAR: ``1e-06``, ``1e-05``, ``0.0001``, ``0.001``, ``0.01``, ``0.1``."""
    return repr(float(far))


@dataclass(frozen=True)
class IJBPaths:
    faces: Path       # <t>_face_tid_mid.txt
    pairs: Optional[Path]  # <t>_template_pair_label.txt (None when not asked for: 1:N only)
    landmarks: Path   # <t>_name_5pts_score.txt
    images: Path      # loose_crop/


def check_target(target: str) -> str:
    """``target`` upper-cased; :class:`DataError` unless it is IJBB or IJBC."""
    t = target.upper()
    if t not in TARGETS:
        raise DataError(f"IJB target {target!r}: expected one of {TARGETS}")
    return t


def find_meta_file(root: Union[str, os.PathLike], target: str, suffix: str) -> Path:
    """``root/meta/<t>_<suffix>`` (``<t>`` lower case as insightface ships it, upper case accepted);
    :class:`DataError` naming the expected path when neither is there."""
    t = check_target(target)
    meta = Path(root) / "meta"
    options = [meta / f"{t.lower()}_{suffix}", meta / f"{t}_{suffix}"]
    hit = next((p for p in options if p.is_file()), None)
    if hit is None:
        raise DataError(f"IJB root {root}: {options[0]} not found (insightface layout: "
                        f"meta/{t.lower()}_{suffix})")
    return hit


def ijb_paths(root: Union[str, os.PathLike], target: str, pairs: bool = True) -> IJBPaths:
    """The meta files and image folder of ``target`` under ``root``; :class:`DataError` naming the
    first missing file.  ``pairs=False``: the 1:1 pair file is not looked for (``paths.pairs`` None)."""
    root = Path(root)
    faces = find_meta_file(root, target, "face_tid_mid.txt")
    pair_file = find_meta_file(root, target, "template_pair_label.txt") if pairs else None
    landmarks = find_meta_file(root, target, "name_5pts_score.txt")
    return IJBPaths(faces, pair_file, landmarks, root / "loose_crop")


@dataclass
class IJBMeta:
    """Per-image metadata in the 5-points file's row order."""

    names: list[str]
    landmarks: np.ndarray  # (N, 5, 2) float32
    scores: np.ndarray     # (N,) float32 detector scores
    templates: np.ndarray  # (N,) int64
    medias: np.ndarray     # (N,) int64

    def __len__(self) -> int:
        return len(self.names)


def text_lines(path: Union[str, os.PathLike]) -> list[str]:
    """The lines of a UTF-8 text file; :class:`DataError` naming it (and the line) when it is
    missing or not UTF-8."""
    from facelt.utils.text import decode_utf8
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    return decode_utf8(raw, str(p)).splitlines()


def read_landmarks(path: Union[str, os.PathLike]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``<t>_name_5pts_score.txt``: names, (N, 5, 2) landmarks, (N,) detector scores."""
    names, rows, line_nos = [], [], []
    for ln, line in enumerate(text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        line_nos.append(ln)
        if len(parts) != 12:
            raise DataError(f"{path} line {ln}: {len(parts)} fields; expected 12 (image, ten "
                            "landmark coordinates, detector score)")
        try:
            rows.append([float(x) for x in parts[1:]])
        except ValueError:
            raise DataError(f"{path} line {ln}: landmarks and score must be numbers") from None
        names.append(parts[0])
    if not names:
        raise DataError(f"{path}: no images")
    arr = np.asarray(rows, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1) | (arr[:, 10] < 0))
    if len(bad):
        lines = ", ".join(str(line_nos[i]) for i in bad[:5])
        raise DataError(f"{path}: line(s) {lines}{' ...' if len(bad) > 5 else ''}: landmarks must "
                        "be finite and the detector score a finite number >= 0 (NaN, inf or a "
                        "negative value given)")
    arr = arr.astype(np.float32)
    return names, arr[:, :10].reshape(-1, 5, 2), arr[:, 10]


def read_faces(path: Union[str, os.PathLike]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``<t>_face_tid_mid.txt``: names, template ids, media ids."""
    names, tids, mids = [], [], []
    for ln, line in enumerate(text_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"{path} line {ln}: {len(parts)} fields; expected 3 (image, "
                            "template id, media id)")
        try:
            tids.append(int(parts[1]))
            mids.append(int(parts[2]))
        except ValueError:
            raise DataError(f"{path} line {ln}: template and media ids must be integers") from None
        if not -2 ** 63 <= tids[-1] < 2 ** 63 or not -2 ** 63 <= mids[-1] < 2 ** 63:
            raise DataError(f"{path} line {ln}: template and media ids must fit in 64 bits")
        names.append(parts[0])
    return names, np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


def read_meta(paths: IJBPaths) -> IJBMeta:
    """Both per-image files joined by image name, in the 5-points file's order."""
    names, lmk, scores = read_landmarks(paths.landmarks)
    fnames, tids, mids = read_faces(paths.faces)
    if fnames != names:
        pos = {n: i for i, n in enumerate(fnames)}
        if len(pos) != len(fnames):
            raise DataError(f"{paths.faces}: an image is listed twice")
        missing = [n for n in names if n not in pos]
        if missing or len(fnames) != len(names):
            raise DataError(f"{paths.faces} and {paths.landmarks} list different images "
                            f"({len(fnames)} vs {len(names)}; e.g. {missing[:3]} have no template)")
        idx = np.asarray([pos[n] for n in names], dtype=np.int64)
        tids, mids = tids[idx], mids[idx]
    return IJBMeta(names, lmk, scores, tids, mids)


def parse_int_lines(buf: bytes, cols: int, where: str, first_line: int = 1) -> np.ndarray:
    """Whitespace-separated non-negative integers, ``cols`` a line (blank lines skipped), parsed
    vectorised from raw bytes; :class:`DataError` naming ``where`` and the line otherwise."""
    a = np.frombuffer(buf, dtype=np.uint8)
    digit = (a >= 48) & (a <= 57)
    newline = np.flatnonzero(a == 10)

    def line_of(pos: int) -> int:
        return first_line + int(np.searchsorted(newline, pos))

    bad = ~(digit | (a == 32) | (a == 9) | (a == 13) | (a == 10))
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(f"{where}: line {line_of(pos)}: expected {cols} integers, found "
                        f"{bytes(a[max(0, pos - 20):pos + 20])!r}")
    edges = np.diff(np.r_[np.int8(0), digit.astype(np.int8), np.int8(0)])
    starts = np.flatnonzero(edges == 1)
    lengths = np.flatnonzero(edges == -1) - starts
    if len(starts) and lengths.max() > 18:
        raise DataError(f"{where}: line {line_of(int(starts[np.argmax(lengths)]))}: number too long")
    lines = np.searchsorted(newline, starts)
    per_line = np.bincount(lines, minlength=len(newline) + 1)
    wrong = (per_line != 0) & (per_line != cols)
    if wrong.any():
        k = int(np.argmax(wrong))
        raise DataError(f"{where}: line {first_line + k}: {per_line[k]} fields; expected {cols} "
                        "integers")
    values = np.zeros(len(starts), dtype=np.int64)
    for j in range(int(lengths.max()) if len(starts) else 0):
        m = lengths > j
        values[m] = values[m] * 10 + (a[starts[m] + j].astype(np.int64) - 48)
    return values.reshape(-1, cols)


def iter_pairs(path: Union[str, os.PathLike], block: int = PAIR_BLOCK
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(t1, t2, label)`` int64 arrays of about ``block`` pairs at a time, in file order."""
    chunk = max(64, block * 16)
    line = 1
    rest = b""
    with open(path, "rb") as fh:
        while True:
            data = fh.read(chunk)
            buf = rest + data
            if not data:
                if not buf.strip():
                    return
                buf += b"\n"
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                rest = buf
                continue
            buf, rest = buf[:cut], buf[cut:]
            vals = parse_int_lines(buf, 3, f"{path} (pairs)", line)
            labels = vals[:, 2]
            if len(vals) and not ((labels == 0) | (labels == 1)).all():
                k = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
                nonblank = [i for i, ln in enumerate(buf.split(b"\n")) if ln.strip()]
                raise DataError(f"{path}: pair line {line + nonblank[k]}: label {labels[k]}; "
                                "expected 0 or 1")
            line += buf.count(b"\n")
            if len(vals):
                yield vals[:, 0], vals[:, 1], labels


# ------------------------------------------------------------------------------ aggregation

def template_features(features: np.ndarray, meta: IJBMeta, detector_score: bool = True,
                      normalize_images: bool = False, block_rows: int = 1 << 14,
                      where: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(template_ids, feats)``: sorted unique template ids and their L2-normalised features.

    ``features`` are the raw flip-summed image features in the 5-points order (an array, a
    memmap or a :class:`~facelt.features.files.FeatureFile`; read ``block_rows`` at a time).  Media feature = mean of its image features
    (after the optional normalisation and detector-score weighting), template = sum of its media.
    """
    from facelt.features.files import FeatureFile
    n = len(meta)
    shape = (features.rows, features.dim) if isinstance(features, FeatureFile) else features.shape
    if len(shape) != 2 or shape[0] != n:
        raise DataError(f"IJB features of shape {shape}: expected ({n}, d), one row per "
                        "line of the 5-points file, in its order")

    if where is None:
        where = f"features {features.path}" if isinstance(features, FeatureFile) else "the image features"

    def read(rows_sorted: np.ndarray) -> np.ndarray:
        if isinstance(features, FeatureFile):  # positional reads: no mapped pages kept
            x = features.read_rows(rows_sorted)
        else:
            x = np.asarray(features[rows_sorted])
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if len(bad):  # one NaN row would silently lower TAR
            rows = rows_sorted[bad]
            kind = "NaN" if np.isnan(x[bad]).any() else "inf"
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            r = int(rows[0])
            raise DataError(f"{where}: row {r} (image {meta.names[r]}, template "
                            f"{int(meta.templates[r])}) holds non-finite values ({kind}){more}; "
                            "features must be finite (re-extract them)")
        return x

    order = np.lexsort((meta.medias, meta.templates))
    t_sorted, m_sorted = meta.templates[order], meta.medias[order]
    new_media = np.ones(n, dtype=bool)
    new_media[1:] = (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])
    media_starts = np.flatnonzero(new_media)
    media_tids = t_sorted[media_starts]
    tids, media_tpl = np.unique(media_tids, return_inverse=True)
    out = np.zeros((len(tids), shape[1]), dtype=np.float64)
    media_ends = np.append(media_starts[1:], n)
    g = 0
    while g < len(media_starts):
        # a block of whole media groups holding about block_rows images
        h = int(np.searchsorted(media_starts, media_starts[g] + block_rows, side="left"))
        h = max(h, g + 1)
        a, b = int(media_starts[g]), int(media_ends[h - 1])
        rows = order[a:b]
        x = read(np.sort(rows)).astype(np.float64)
        x = x[np.argsort(np.argsort(rows))]  # back to the grouped order
        if normalize_images:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            x /= norms
        if detector_score:
            x *= meta.scores[rows].astype(np.float64)[:, None]
        local = media_starts[g:h] - a
        sums = np.add.reduceat(x, local, axis=0)
        counts = (media_ends[g:h] - media_starts[g:h]).astype(np.float64)
        means = sums / counts[:, None]
        tpl = media_tpl[g:h]
        starts = np.flatnonzero(np.r_[True, tpl[1:] != tpl[:-1]])
        out[tpl[starts]] += np.add.reduceat(means, starts, axis=0)
        g = h
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return tids, out / norms


def pair_scores(tids: np.ndarray, tfeats: np.ndarray, pairs_path: Union[str, os.PathLike],
                block: int = PAIR_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores (float64) and labels (uint8) of every pair in the pair file, streamed."""
    from facelt.utils.progress import progress
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    size = os.path.getsize(pairs_path)
    with progress(total=size, desc="IJB pairs", unit="B", unit_scale=True) as bar:
        for t1, t2, lab in iter_pairs(pairs_path, block):
            i1 = _template_rows(tids, t1, pairs_path)
            i2 = _template_rows(tids, t2, pairs_path)
            s = np.empty(len(t1), dtype=np.float64)
            for a in range(0, len(t1), SCORE_BLOCK):
                f1 = tfeats[i1[a:a + SCORE_BLOCK]]
                f2 = tfeats[i2[a:a + SCORE_BLOCK]]
                s[a:a + SCORE_BLOCK] = np.einsum("ij,ij->i", f1, f2)
            scores.append(s)
            labels.append(lab.astype(np.uint8))
            bar.update(min(size - bar.n, len(t1) * 16))
    if not scores:
        raise DataError(f"{pairs_path}: no pairs")
    return np.concatenate(scores), np.concatenate(labels)


def _template_rows(tids: np.ndarray, t: np.ndarray, where) -> np.ndarray:
    idx = np.searchsorted(tids, t)
    idx[idx >= len(tids)] = 0
    bad = tids[idx] != t
    if bad.any():
        raise DataError(f"{where}: template {int(t[np.flatnonzero(bad)[0]])} has no images in the "
                        "face_tid_mid file")
    return idx


# ------------------------------------------------------------------------------------ ROC

def roc_counts(scores: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """``(fps, tps, thresholds, positives, negatives)``: false / true accepts of ``score >= t``
    at every distinct score ``t`` (descending; tied scores move together), as scikit-learn's
    ``_binary_clf_curve`` counts them."""
    labels = np.asarray(labels).astype(bool)
    pos = int(labels.sum())
    neg = int(len(labels) - pos)
    if pos == 0 or neg == 0:
        raise DataError(f"the pairs hold {pos} genuine and {neg} impostor pairs; TAR@FAR needs both")
    order = np.argsort(-np.asarray(scores, dtype=np.float64))  # ties are grouped below anyway
    s = np.asarray(scores, dtype=np.float64)[order]
    lab = labels[order]
    del order
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    thr = s[ends]
    del s
    tp = np.cumsum(lab, dtype=np.int64)[ends]
    return ends + 1 - tp, tp, thr, pos, neg


def roc_rates(fps: np.ndarray, tps: np.ndarray, pos: int, neg: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the counts, starting at (0, 0) (a threshold above every score)."""
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of accepting ``score >= t`` at every distinct score (descending),
    starting at (0, 0) for a threshold above every score; tied scores move together."""
    fps, tps, thr, pos, neg = roc_counts(scores, labels)
    fpr, tpr = roc_rates(fps, tps, pos, neg)
    return fpr, tpr, np.r_[np.inf, thr]


def sklearn_kept_points(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """Indices of the points scikit-learn's ``roc_curve(drop_intermediate=True)`` keeps (its
    default, what eval_ijbc.py calls): the first, the last, and every point where the second
    difference of the false- or the true-accept counts is not zero (a corner); points in the
    middle of a run of equal steps are dropped. (facelt does not depend on scikit-learn.)"""
    n = len(fps)
    if n <= 2:
        return np.arange(n)
    corner = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
    return np.flatnonzero(np.r_[True, corner, True])


def strict_point(fpr: np.ndarray, tpr: np.ndarray, far: float) -> int:
    """``strict``: the index of the ROC point with the highest TPR among those with FPR <= FAR
    (the first such; index 0, the (0, 0) point, when none is higher)."""
    ok = np.flatnonzero(fpr <= far)
    if len(ok) == 0:
        return 0
    return int(ok[np.argmax(tpr[ok])])


def nearest_point(fpr: np.ndarray, far: float) -> int:
    """``insightface``: the index of the ROC point (``fpr`` ascending) whose FPR is nearest FAR;
    of equal distances the last (eval_ijbc.py flips the curve and takes the first minimum)."""
    d = np.abs(fpr - far)
    return int(np.flatnonzero(d == d.min())[-1])


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, fars=FARS) -> dict[str, float]:
    """``strict``: for each FAR the highest TPR among ROC points with FPR <= FAR (0 when none)."""
    return {far_key(f): float(tpr[strict_point(fpr, tpr, f)]) if (fpr <= f).any() else 0.0
            for f in fars}


def tar_at_nearest_far(fpr: np.ndarray, tpr: np.ndarray, fars=FARS) -> dict[str, float]:
    """``insightface``: for each FAR the TPR of the ROC point nearest it (:func:`nearest_point`)."""
    return {far_key(f): float(tpr[nearest_point(fpr, f)]) for f in fars}


def rule_rates(fps: np.ndarray, tps: np.ndarray, pos: int, neg: int, rule: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC points ``rule`` chooses from (``insightface``: the points
    scikit-learn's ``roc_curve`` keeps)."""
    if rule not in TAR_RULES:
        raise FaceltError(f"unknown TAR rule {rule!r} (known: {', '.join(TAR_RULES)})")
    if rule == "strict":
        return roc_rates(fps, tps, pos, neg)
    keep = sklearn_kept_points(fps, tps)
    return roc_rates(fps[keep], tps[keep], pos, neg)


def tar_table(fps: np.ndarray, tps: np.ndarray, pos: int, neg: int, rule: str = "strict",
              fars=FARS) -> dict[str, float]:
    """TAR at each FAR from the ROC counts by ``rule`` (:data:`TAR_RULES`)."""
    fpr, tpr = rule_rates(fps, tps, pos, neg, rule)
    if rule == "strict":
        return tar_at_far(fpr, tpr, fars)
    return tar_at_nearest_far(fpr, tpr, fars)


def achieved_far_table(fps: np.ndarray, tps: np.ndarray, pos: int, neg: int,
                       rule: str = "strict", fars=FARS) -> dict[str, float]:
    """The FAR actually reached at the ROC point ``rule`` picks for each FAR (the false accepts
    over the impostor pairs), printed beside every TAR."""
    fpr, tpr = rule_rates(fps, tps, pos, neg, rule)
    pick = (lambda f: strict_point(fpr, tpr, f)) if rule == "strict" else \
        (lambda f: nearest_point(fpr, f))
    return {far_key(f): float(fpr[pick(f)]) for f in fars}


def evaluate_ijb(features: np.ndarray, meta: IJBMeta, pairs_path: Union[str, os.PathLike],
                 detector_score: bool = True, normalize_images: bool = False,
                 fars=FARS, tar_rule: str = "strict"
                 ) -> tuple[dict, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(report, scores, (fpr, tpr))`` of the 1:1 protocol from raw image features; TAR at FAR
    by ``tar_rule`` (:data:`TAR_RULES`, named in the report)."""
    from facelt.faces.verification import far_measurable
    if tar_rule not in TAR_RULES:
        raise FaceltError(f"unknown TAR rule {tar_rule!r} (known: {', '.join(TAR_RULES)})")
    tids, tfeats = template_features(features, meta, detector_score, normalize_images)
    scores, labels = pair_scores(tids, tfeats, pairs_path)
    fps, tps, _, pos, neg = roc_counts(scores, labels)
    fpr, tpr = roc_rates(fps, tps, pos, neg)
    report = {
        "pairs": int(len(scores)),
        "genuine": int(labels.sum()),
        "impostor": int(len(labels) - int(labels.sum())),
        "images": int(len(meta)),
        "templates": int(len(tids)),
        "detector_score": bool(detector_score),
        "normalize_images": bool(normalize_images),
        "tar_rule": TAR_RULES[tar_rule],
        "tar_at_far": tar_table(fps, tps, pos, neg, tar_rule, fars),
        "achieved_far": achieved_far_table(fps, tps, pos, neg, tar_rule, fars),
        # a FAR below 1 / impostors is no rate these pairs can measure (fewer than one false accept)
        "far_measurable": {far_key(f): far_measurable(f, neg) for f in fars},
    }
    return report, scores, (fpr, tpr)


# ---------------------------------------------------------------------------- image source

def aligned_batches(meta: IJBMeta, image_dir: Union[str, os.PathLike], batch_size: int,
                    image_size: int = 112):
    """``f(first_row)`` -> iterator of ``(B, S, S, 3)`` uint8 RGB batches of the aligned faces
    (``loose_crop/<image>`` warped with its 5 points to the ArcFace template), from that row."""
    import cv2

    from facelt.data.decode import imread
    from facelt.faces.align import norm_crop
    from facelt.features.embed import batched
    image_dir = Path(image_dir)

    def images(first: int):
        for i in range(first, len(meta)):
            path = image_dir / meta.names[i]
            img = imread(path, cv2.IMREAD_COLOR, f"IJB image, row {i + 1} of the 5-points file")
            crop = norm_crop(img, meta.landmarks[i].astype(np.float64), image_size)
            yield cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)

    def from_row(first: int):
        from facelt.utils.progress import progress
        with progress(total=len(meta) - first, desc="IJB images", unit="img") as bar:
            for batch in batched(images(first), batch_size):
                yield batch
                bar.update(len(batch))

    return from_row


def ijb_image_features(spec, meta: IJBMeta, image_dir: Union[str, os.PathLike],
                       out_dir: Union[str, os.PathLike], batch_size: int, target: str):
    """Raw (flip-summed, unnormalised) features of every IJB image embedded by the model of
    ``spec`` (:class:`~facelt.faces.face_model.FaceModelSpec`) into ``out_dir/features.npy``
    (resumable: kept when complete for this model and these rows); returns the open file."""
    from facelt.faces.face_model import face_embedder, model_fingerprint
    from facelt.features.embed import embed_to_file
    from facelt.features.files import FeatureFile, finished_with
    embedder = face_embedder(spec)
    size = embedder.input_size
    if size[0] != size[1] or size[0] % 112:
        raise FaceltError(f"the model takes {size[0]}x{size[1]} images; IJB faces are aligned "
                          "to the 112x112 ArcFace template (or a multiple of it)")
    out = Path(out_dir) / "features.npy"
    # the model, the rows, the landmarks the faces are aligned with and the images themselves:
    # features made before the landmarks or the photos changed are not reused
    import hashlib
    marks = hashlib.sha256(np.ascontiguousarray(meta.landmarks, dtype="<f4").tobytes()).hexdigest()
    fp = model_fingerprint(spec, meta.names, {"ijb": target, "landmarks": marks},
                           data_files=[Path(image_dir) / n for n in meta.names])
    if not finished_with(out, fp):
        embed_to_file(embedder, aligned_batches(meta, image_dir, batch_size, size[0]), out,
                      len(meta), normalize=False, flip=spec.flip, fingerprint=fp)
    return FeatureFile.open(out)


# ------------------------------------------------------------------------------------ report

def ijb_output_files(out_dir: Union[str, os.PathLike], embedding: bool = True) -> list[Path]:
    """Every file ``facelt ijb --out OUT`` may write: the 1:1 and 1:N reports and, when
    ``embedding``, the image features (with the files beside them while unfinished)."""
    from facelt.features.files import feature_file_outputs
    out = Path(out_dir)
    names = ("report.json", "report.md", "roc.png", "pair_scores.npy", "report_1n.json",
             "report_1n.md", "candidates_1n.npz")
    return [out / n for n in names] + (feature_file_outputs(out / "features.npy") if embedding else [])


def write_ijb_report(report: dict, scores: np.ndarray, roc: tuple[np.ndarray, np.ndarray],
                     out_dir: Union[str, os.PathLike], target: str) -> None:
    """``report.json``, ``report.md``, ``roc.png`` (log FAR axis) and ``pair_scores.npy``
    (float64, pair-file order) in ``out_dir``; each written to a temporary name and renamed."""
    from facelt.utils.io import atomic_path, write_json, write_text
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pair_scores.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(scores, dtype=np.float64))
    write_json(out / "report.json", {"target": target, **report})
    lines = [f"# {target} 1:1 verification", "",
             f"- pairs: {report['pairs']:,} ({report['genuine']:,} genuine, "
             f"{report['impostor']:,} impostor); templates: {report['templates']:,}; "
             f"images: {report['images']:,}",
             f"- image features: flip-sum, {'L2-normalised' if report['normalize_images'] else 'raw norm'}"
             f"{', times detector score' if report['detector_score'] else ''}; media = mean, "
             "template = sum, L2; score = cosine",
             f"- TAR at FAR: {report.get('tar_rule', TAR_RULES['strict'])}", "",
             "| FAR | " + " | ".join(report["tar_at_far"]) + " |",
             "|---" * (len(report["tar_at_far"]) + 1) + "|",
             "| TAR | " + " | ".join(f"{100 * v:.2f}%" if report["far_measurable"][k] else
                                     "not measurable" for k, v in report["tar_at_far"].items()) + " |",
             "| achieved FAR | " + " | ".join(f"{100 * v:.4g}%" for v in
                                              report["achieved_far"].values()) + " |", "",
             f"A FAR below 1 / {report['impostor']:,} impostor pairs is not measurable.",
             "", "![ROC](roc.png)", ""]
    write_text(out / "report.md", "\n".join(lines))
    _plot_roc(roc, out / "roc.png", target)


def roc_plot_points(roc: tuple[np.ndarray, np.ndarray], max_points: int = 20000
                    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[float, float]]:
    """``(far %, tar %, x limits, y limits)`` of the ROC plot: rates in % like every facelt plot,
    the curve thinned to ``max_points`` on the log FAR axis (its shape kept), limits with a margin
    so that no point sits on the plot's edge."""
    fpr, tpr = roc
    keep = fpr > 0
    if keep.sum() > max_points:
        grid = np.geomspace(fpr[keep].min(), 1.0, max_points)
        idx = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1))
        fx, ty = fpr[idx], tpr[idx]
    else:
        fx, ty = fpr[keep], tpr[keep]
    fx, ty = 100.0 * fx, 100.0 * ty
    low = min(1e-4, float(fx.min()) if len(fx) else 1e-4)  # 1e-4 % = FAR 1e-6
    return fx, ty, (low / 2.0, 100.0 * 2.0), (-3.0, 103.0)


def _plot_roc(roc: tuple[np.ndarray, np.ndarray], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facelt.utils.io import atomic_path
    fx, ty, xlim, ylim = roc_plot_points(roc)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(fx, ty, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("False accept rate (%, log)")
    ax.set_ylabel("True accept rate (%)")
    ax.set_title(f"{title} 1:1 ROC")
    ax.grid(True, which="both", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
