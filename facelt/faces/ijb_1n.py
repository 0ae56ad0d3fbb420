"""IJB-B / IJB-C 1:N identification (mixed-media search) in insightface's layout
(``recognition/_evaluation_/ijb/ijb_1n.py``).

Layout under ``IJB_ROOT/meta`` (``<t>`` = ``ijbc`` / ``ijbb``; beside the 1:1 files, whose
``<t>_face_tid_mid.txt`` and ``<t>_name_5pts_score.txt`` give each template its images)::

    <t>_1N_gallery_G1.csv    gallery 1 (IJB-B: <t>_1N_gallery_S1.csv)
    <t>_1N_gallery_G2.csv    gallery 2 (IJB-B: <t>_1N_gallery_S2.csv)
    <t>_1N_probe_mixed.csv   the probe templates

Each CSV starts with a header line (``TEMPLATE_ID,SUBJECT_ID,FILENAME,...``); every further line
is one image of a template: template id and subject id are its first two columns, the rest is
ignored (the images come from ``face_tid_mid``, as in insightface).  A template is therefore named
on many lines; it must keep one subject, belong to one file only, and each subject has exactly one
gallery template over both galleries (insightface's ``gen_mask`` refuses anything else).

Published sizes (IJB-C): 3,531 subjects (Maze et al., "IARPA Janus Benchmark-C", ICB 2018), one
gallery template each: G1 1,772 and G2 1,759 templates, and 19,593 probe templates -- the shapes
``(1772, 512)``, ``(1759, 512)``, ``(19593, 512)`` and the ``(19593, 3531)`` score matrix printed by
leondgarse/Keras_insightface ``IJB_evals.py`` (``run_model_test_1N``) on insightface's meta files.
1,772 + 1,759 + 19,593 = 23,124, the 1:1 template count of ``ijbc_face_tid_mid.txt``.

Template features are the 1:1 ones (:func:`facelt.faces.ijb.template_features`: flip-summed image
features x detector score, media = mean, template = sum, L2); score = cosine.

Figures:

* closed set (insightface's): every probe searches the union G1 + G2; rank-k = share of probes
  whose mate is among the first k;
* open set (NIST, per gallery G): the probes whose subject is in G are G's mated searches, the
  others its non-mated searches.  With N non-mated searches the threshold at FPIR f is the
  (floor(f N) + 1)-th highest non-mated top score (none when floor(f N) + 1 > N, i.e. N = 0:
  every search passes); the achieved FPIR is the share of non-mated top scores strictly above it.
  TPIR = share of mated searches whose mate ranks first in G and scores strictly above the
  threshold.  Also the mean of the two galleries.  (insightface's ``ijb_1n.py`` instead takes
  thresholds from all non-mate scores of the union search: not the NIST figure.)

Ties count against the probe (as in facelt's MegaFace protocol): a mate's rank is 1 + the number of
*other* templates scoring at least as high, so a mate tied at the top ranks second; a mated or
non-mated score equal to the threshold does not pass it.

Scores stream: the probe x gallery matrix is computed in blocks of probes whose size keeps one
block within a memory budget; per probe only its mate's score and rank, its top score in each
gallery and its ``topk`` best candidates are kept.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from facelt.errors import DataError
from facelt.faces.ijb import IJBMeta, check_target, far_key, find_meta_file, template_features

FPIRS = (0.01, 0.1)
RANKS = (1, 5, 10)
GALLERIES = ("G1", "G2")
BLOCK_BYTES = 256 << 20
#: the published IJB-C 1:N list sizes (see the module docstring for the sources)
IJBC_1N_SIZES = {"G1": 1772, "G2": 1759, "probes": 19593, "subjects": 3531}


# ---------------------------------------------------------------------------------- files

@dataclass(frozen=True)
class OneToNPaths:
    galleries: tuple[Path, Path]  # G1, G2 (IJB-B: S1, S2)
    probes: Path


def ijb_1n_paths(root: Union[str, os.PathLike], target: str) -> OneToNPaths:
    """The three 1:N CSV files of ``target`` under ``root/meta``; :class:`DataError` naming the
    first missing one."""
    t = check_target(target)
    names = ("S1", "S2") if t == "IJBB" else ("G1", "G2")
    g1, g2 = (find_meta_file(root, t, f"1N_gallery_{n}.csv") for n in names)
    return OneToNPaths((g1, g2), find_meta_file(root, t, "1N_probe_mixed.csv"))


@dataclass
class TemplateList:
    """The templates of one 1:N file, sorted by id, each with its subject and first line."""

    path: Path
    templates: np.ndarray  # (T,) int64, sorted, unique
    subjects: np.ndarray   # (T,) int64
    lines: np.ndarray      # (T,) int64: the line where the template first appears

    def __len__(self) -> int:
        return len(self.templates)

    def where(self, i: int) -> str:
        return f"{self.path} line {int(self.lines[i])}"


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def read_template_subjects(path: Union[str, os.PathLike]) -> TemplateList:
    """One 1:N CSV: a header line, then ``template_id,subject_id[,...]`` a line (blank lines
    skipped).  :class:`DataError` naming the file and line for a missing header, a line without two
    integer fields, or a template given two subjects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IJB 1:N list {path}: not found")
    first: dict[int, tuple[int, int]] = {}  # template -> (subject, line)
    header_seen = False
    with open(path, encoding="utf-8-sig") as fh:
        for ln, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            fields = [f.strip().strip('"') for f in text.split(",", 2)]
            if not header_seen:
                header_seen = True
                if len(fields) >= 2 and _is_int(fields[0]) and _is_int(fields[1]):
                    raise DataError(f"{path} line {ln}: {text[:60]!r} is data, but the file must "
                                    "start with a header line (TEMPLATE_ID,SUBJECT_ID,...)")
                continue
            if len(fields) < 2:
                raise DataError(f"{path} line {ln}: {text[:60]!r}: expected at least 2 "
                                "comma-separated fields (template id, subject id)")
            try:
                t, s = int(fields[0]), int(fields[1])
            except ValueError:
                raise DataError(f"{path} line {ln}: {text[:60]!r}: template id and subject id "
                                "must be integers") from None
            seen = first.get(t)
            if seen is None:
                first[t] = (s, ln)
            elif seen[0] != s:
                raise DataError(f"{path} line {ln}: template {t} has subject {s}, but subject "
                                f"{seen[0]} at line {seen[1]}; a template holds one subject")
    if not first:
        raise DataError(f"{path}: no templates (a header line, then template_id,subject_id lines)")
    tids = np.fromiter(first, dtype=np.int64, count=len(first))
    order = np.argsort(tids, kind="stable")
    subj = np.fromiter((v[0] for v in first.values()), dtype=np.int64, count=len(first))
    lines = np.fromiter((v[1] for v in first.values()), dtype=np.int64, count=len(first))
    return TemplateList(path, tids[order], subj[order], lines[order])


@dataclass
class OneToNLists:
    """The checked 1:N protocol: gallery templates G1 then G2 (each sorted by id), probes sorted
    by id, and for every probe the position of its mate among the gallery templates."""

    galleries: tuple[TemplateList, TemplateList]
    probes: TemplateList
    mates: np.ndarray  # (P,) int64: index into gallery_templates

    @property
    def gallery_templates(self) -> np.ndarray:
        return np.concatenate([g.templates for g in self.galleries])

    @property
    def gallery_part(self) -> np.ndarray:
        """(G,) int8: 0 for G1 templates, 1 for G2."""
        return np.repeat(np.arange(2, dtype=np.int8), [len(g) for g in self.galleries])


def _first_common(a: TemplateList, b: TemplateList) -> Optional[tuple[int, int]]:
    common, ia, ib = np.intersect1d(a.templates, b.templates, assume_unique=True,
                                    return_indices=True)
    if not len(common):
        return None
    k = int(np.argmin(a.lines[ia]))
    return int(ia[k]), int(ib[k])


def _positions(keys_sorted: np.ndarray, wanted: np.ndarray, lines: np.ndarray
               ) -> tuple[np.ndarray, Optional[int]]:
    """Positions of ``wanted`` in ``keys_sorted``, and the index (earliest line) of the first value
    that is not there (None when all are)."""
    pos = np.searchsorted(keys_sorted, wanted)
    pos[pos >= len(keys_sorted)] = 0
    missing = keys_sorted[pos] != wanted
    if not missing.any():
        return pos, None
    return pos, int(np.flatnonzero(missing)[np.argmin(lines[missing])])


def check_1n_lists(g1: TemplateList, g2: TemplateList, probes: TemplateList) -> OneToNLists:
    """Cross-file checks, then each probe's mate.  :class:`DataError` (naming files, lines,
    templates and subjects) for a template in both galleries or in a gallery and the probes, a
    subject with two gallery templates, or a probe subject in neither gallery."""
    for x, y in ((g1, g2), (g1, probes), (g2, probes)):
        hit = _first_common(x, y)
        if hit is not None:
            i, j = hit
            raise DataError(f"template {int(x.templates[i])} is listed twice: in {x.where(i)} and "
                            f"in {y.where(j)}; each 1:N template belongs to one file")
    subjects = np.concatenate([g1.subjects, g2.subjects])
    owner = [(g, i) for g in (g1, g2) for i in range(len(g))]
    order = np.argsort(subjects, kind="stable")
    s_sorted = subjects[order]
    dup = np.flatnonzero(s_sorted[1:] == s_sorted[:-1])
    if len(dup):
        a, b = int(order[dup[0]]), int(order[dup[0] + 1])
        (ga, ia), (gb, ib) = owner[a], owner[b]
        raise DataError(f"subject {int(subjects[a])} is enrolled twice: template "
                        f"{int(ga.templates[ia])} ({ga.where(ia)}) and template "
                        f"{int(gb.templates[ib])} ({gb.where(ib)}); the 1:N galleries hold one "
                        "template per subject")
    pos, k = _positions(s_sorted, probes.subjects, probes.lines)
    if k is not None:
        raise DataError(f"{probes.where(k)}: probe template {int(probes.templates[k])} is of "
                        f"subject {int(probes.subjects[k])}, who is in neither gallery "
                        f"({g1.path.name}, {g2.path.name})")
    return OneToNLists((g1, g2), probes, order[pos].astype(np.int64))


def read_1n_lists(paths: OneToNPaths) -> OneToNLists:
    """The three files read and checked (:func:`read_template_subjects`, :func:`check_1n_lists`)."""
    g1, g2 = (read_template_subjects(p) for p in paths.galleries)
    return check_1n_lists(g1, g2, read_template_subjects(paths.probes))


# ---------------------------------------------------------------------------------- search

@dataclass
class SearchResult:
    """Per probe (``P`` of them): what the figures need, and its best candidates."""

    mate_score: np.ndarray    # (P,) float64
    rank: np.ndarray          # (P,) int64: 1 + other gallery templates (G1 + G2) scoring >= mate
    first_in_own: np.ndarray  # (P,) bool: no other template of the mate's gallery scores >= mate
    own: np.ndarray           # (P,) int8: the mate's gallery (0 = G1, 1 = G2)
    top: np.ndarray           # (P, 2) float64: the best score in G1 and in G2
    candidates: np.ndarray    # (P, k) int64: gallery positions, best first (ties by position)
    candidate_scores: np.ndarray  # (P, k) float64


def probes_per_block(gallery_size: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many probes one score block holds within ``block_bytes`` (at least 1): a row costs
    its float64 scores, the candidate selection's int64 indices and a boolean mask."""
    return max(1, int(block_bytes) // max(1, 17 * int(gallery_size)))


def search_1n(probe_feats: np.ndarray, gallery_feats: np.ndarray, gallery_part: np.ndarray,
              mates: np.ndarray, topk: int = 10, block_bytes: int = BLOCK_BYTES) -> SearchResult:
    """Cosine search of L2-normalised probe templates against G1 + G2, in probe blocks.

    ``gallery_part`` (G,) is 0 / 1 (G1 / G2), G1 first; ``mates`` (P,) the gallery position of
    each probe's mate.  Ties count against the probe (see the module docstring)."""
    part = np.asarray(gallery_part)
    n1 = int((part == 0).sum())
    if not (part[:n1] == 0).all() or not (part[n1:] == 1).all() or n1 == 0 or n1 == len(part):
        raise ValueError("gallery_part: G1 templates first, then G2, both non-empty")
    P, G = len(probe_feats), len(gallery_feats)
    k = min(int(topk), G)
    gal = np.ascontiguousarray(gallery_feats, dtype=np.float64)
    mates = np.asarray(mates, dtype=np.int64)
    own = part[mates].astype(np.int8)
    out = SearchResult(np.empty(P), np.empty(P, np.int64), np.empty(P, bool), own,
                       np.empty((P, 2)), np.empty((P, k), np.int64), np.empty((P, k)))
    step = probes_per_block(G, block_bytes)
    for a in range(0, P, step):
        b = min(P, a + step)
        s = np.asarray(probe_feats[a:b], dtype=np.float64) @ gal.T  # (B, G)
        rows = np.arange(b - a)
        ms = s[rows, mates[a:b]]
        ge = s >= ms[:, None]
        ge1 = ge[:, :n1].sum(1)
        ge_all = ge.sum(1)
        del ge
        out.mate_score[a:b] = ms
        out.rank[a:b] = ge_all  # the mate itself is one of them: 1 + the others
        own_ge = np.where(own[a:b] == 0, ge1, ge_all - ge1)
        out.first_in_own[a:b] = own_ge == 1
        out.top[a:b, 0] = s[:, :n1].max(1)
        out.top[a:b, 1] = s[:, n1:].max(1)
        np.negative(s, out=s)
        cand = np.argpartition(s, k - 1, axis=1)[:, :k] if k < G else \
            np.broadcast_to(np.arange(G), (b - a, G)).copy()
        sc = -np.take_along_axis(s, cand, axis=1)
        order = np.lexsort((cand, -sc), axis=-1)
        out.candidates[a:b] = np.take_along_axis(cand, order, axis=1)
        out.candidate_scores[a:b] = np.take_along_axis(sc, order, axis=1)
        del s
    return out


# ------------------------------------------------------------------------------- figures

def rank_rates(rank: np.ndarray, ranks: Sequence[int] = RANKS) -> dict[str, float]:
    """``{"rank1": share of probes with rank <= 1, "rank5": ..., "rank10": ...}``."""
    rank = np.asarray(rank)
    return {f"rank{r}": float((rank <= r).mean()) for r in ranks}


def nist_threshold(non_mated_top: np.ndarray, fpir: float) -> Optional[float]:
    """The (floor(f N) + 1)-th highest of the N non-mated top scores (f read as the decimal it is
    written as); None when floor(f N) + 1 > N."""
    n = len(non_mated_top)
    k = math.floor(Fraction(repr(float(fpir))) * n) + 1
    if k > n:
        return None
    return float(np.partition(np.asarray(non_mated_top, dtype=np.float64), n - k)[n - k])


@dataclass
class OpenSetPoint:
    fpir: float                     # the FPIR asked for
    threshold: Optional[float]      # None: every search passes
    achieved_fpir: Optional[float]  # None without non-mated searches
    tpir: Optional[float]           # None without mated searches


def open_set_point(mate_score: np.ndarray, first: np.ndarray, non_mated_top: np.ndarray,
                   fpir: float) -> OpenSetPoint:
    """TPIR at one FPIR for one gallery: ``mate_score`` / ``first`` of its mated searches,
    ``non_mated_top`` the top scores of its non-mated searches."""
    thr = nist_threshold(non_mated_top, fpir)
    t = -np.inf if thr is None else thr
    nm = np.asarray(non_mated_top)
    achieved = float((nm > t).mean()) if len(nm) else None
    tpir = float((np.asarray(first) & (np.asarray(mate_score) > t)).mean()) if len(mate_score) \
        else None
    return OpenSetPoint(float(fpir), thr, achieved, tpir)


def open_set_figures(result: SearchResult, fpirs: Sequence[float] = FPIRS) -> dict[str, dict]:
    """Per gallery (``G1``, ``G2``): ``{fpir_key: OpenSetPoint}``, and ``mean``:
    ``{fpir_key: mean TPIR}`` (None if a gallery has none)."""
    out: dict[str, dict] = {}
    for g, name in enumerate(GALLERIES):
        mated = result.own == g
        out[name] = {far_key(f): open_set_point(result.mate_score[mated], result.first_in_own[mated],
                                                result.top[~mated, g], f) for f in fpirs}
    mean = {}
    for f in fpirs:
        v = [out[n][far_key(f)].tpir for n in GALLERIES]
        mean[far_key(f)] = None if None in v else (v[0] + v[1]) / 2
    out["mean"] = mean
    return out


# --------------------------------------------------------------------------------- evaluate

def _rows_of(tids: np.ndarray, lst: TemplateList, faces_file: str) -> np.ndarray:
    idx, k = _positions(tids, lst.templates, lst.lines)
    if k is not None:
        raise DataError(f"{lst.where(k)}: template {int(lst.templates[k])} has no images in "
                        f"{faces_file}, so it has no features")
    return idx


def check_finite_templates(tfeats: np.ndarray, tids: np.ndarray, rows: np.ndarray,
                           features, meta: IJBMeta, where: str) -> None:
    """:class:`DataError` naming the first image row (and its template) whose features are not
    finite, among the templates at ``rows`` of ``tfeats``."""
    bad = ~np.isfinite(tfeats[rows]).all(axis=1)
    if not bad.any():
        return
    t = int(tids[rows[np.flatnonzero(bad)[0]]])
    img = np.flatnonzero(meta.templates == t)
    from facelt.features.files import FeatureFile
    x = features.read_rows(img) if isinstance(features, FeatureFile) else np.asarray(features[img])
    nonfinite = ~np.isfinite(x).all(axis=1)
    if nonfinite.any():
        r = int(img[np.flatnonzero(nonfinite)[0]])
        raise DataError(f"{where}: row {r} (image {meta.names[r]}, template {t}) holds non-finite "
                        "values")
    raise DataError(f"{where}: the feature of template {t} overflows (not finite after "
                    "aggregation)")


def evaluate_ijb_1n(features, meta: IJBMeta, lists: OneToNLists, detector_score: bool = True,
                    normalize_images: bool = False, fpirs: Sequence[float] = FPIRS,
                    topk: int = 10, block_bytes: int = BLOCK_BYTES,
                    features_name: str = "the image features",
                    faces_file: str = "face_tid_mid") -> tuple[dict, SearchResult]:
    """``(report, search)`` of the 1:N protocol from raw image features in the 5-points order."""
    tids, tfeats = template_features(features, meta, detector_score, normalize_images,
                                     where=features_name)
    g_rows = np.concatenate([_rows_of(tids, g, faces_file) for g in lists.galleries])
    p_rows = _rows_of(tids, lists.probes, faces_file)
    check_finite_templates(tfeats, tids, np.concatenate([g_rows, p_rows]), features, meta,
                           features_name)
    gallery, probes = tfeats[g_rows], tfeats[p_rows]
    del tfeats
    result = search_1n(probes, gallery, lists.gallery_part, lists.mates, topk, block_bytes)
    figures = open_set_figures(result, fpirs)
    per_gallery = {n: figures[n] for n in GALLERIES}
    report = {
        "protocol": "1:N",
        "probes": int(len(lists.probes)),
        "gallery_templates": int(len(gallery)),
        "galleries": {n: {"file": g.path.name, "templates": int(len(g)),
                          "mated": int((result.own == i).sum()),
                          "non_mated": int((result.own != i).sum())}
                      for i, (n, g) in enumerate(zip(GALLERIES, lists.galleries))},
        "images": int(len(meta)),
        "detector_score": bool(detector_score),
        "normalize_images": bool(normalize_images),
        **rank_rates(result.rank),
        "tpir_at_fpir": {**{n: {k: p.tpir for k, p in per_gallery[n].items()} for n in GALLERIES},
                         "mean": figures["mean"]},
        "achieved_fpir": {n: {k: p.achieved_fpir for k, p in per_gallery[n].items()}
                          for n in GALLERIES},
        "threshold": {n: {k: p.threshold for k, p in per_gallery[n].items()} for n in GALLERIES},
    }
    return report, result


def published_size_note(report: dict, target: str) -> Optional[str]:
    """A line saying how the lists differ from the published IJB-C 1:N sizes (None if they match
    or the target is not IJB-C)."""
    if target.upper() != "IJBC":
        return None
    got = {"G1": report["galleries"]["G1"]["templates"], "G2": report["galleries"]["G2"]["templates"],
           "probes": report["probes"], "subjects": report["gallery_templates"]}
    if got == IJBC_1N_SIZES:
        return None
    return (f"note: these 1:N lists differ from the published IJB-C ones ({got} vs "
            f"{IJBC_1N_SIZES}); the figures are not comparable with published IJB-C results")


# ----------------------------------------------------------------------------------- report

def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def summary_lines(report: dict, target: str) -> list[str]:
    """The printed summary: sizes, closed-set ranks, TPIR with the achieved FPIR beside it."""
    g = report["galleries"]
    lines = [f"{target} 1:N: {report['probes']:,} probe templates, {report['gallery_templates']:,} "
             f"gallery templates (G1 {g['G1']['templates']:,}, G2 {g['G2']['templates']:,})",
             "closed set (G1 + G2): " + "  ".join(f"rank-{r} {_pct(report[f'rank{r}'])}"
                                                  for r in RANKS)]
    for n in (*GALLERIES, "mean"):
        cells = []
        for k, v in report["tpir_at_fpir"][n].items():
            extra = "" if n == "mean" else f" (achieved FPIR {_fmt(report['achieved_fpir'][n][k])})"
            cells.append(f"TPIR@FPIR={k}: {_pct(v)}{extra}")
        lines.append(f"open set {n}: " + "  ".join(cells))
    return lines


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_1n_report(report: dict, result: SearchResult, lists: OneToNLists,
                    out_dir: Union[str, os.PathLike], target: str) -> None:
    """``report_1n.json``, ``report_1n.md`` and ``candidates_1n.npz`` (per probe template id: the
    best gallery template ids and scores, best first) in ``out_dir``; each written atomically."""
    from facelt.utils.io import atomic_path, write_json, write_text
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gt = lists.gallery_templates
    with atomic_path(out / "candidates_1n.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, probe_templates=lists.probes.templates,
                     mate_templates=gt[lists.mates], mate_rank=result.rank,
                     candidate_templates=gt[result.candidates],
                     candidate_scores=result.candidate_scores)
    write_json(out / "report_1n.json", {"target": target, **report})
    fp = list(report["tpir_at_fpir"]["G1"])
    rows = [f"| {n} | " + " | ".join(
        f"{_pct(report['tpir_at_fpir'][n][k])}"
        + ("" if n == "mean" else f" ({_fmt(report['achieved_fpir'][n][k])})") for k in fp) + " |"
        for n in (*GALLERIES, "mean")]
    lines = [f"# {target} 1:N identification", "",
             *[f"- {ln}" for ln in summary_lines(report, target)[:1]],
             f"- galleries: G1 = {report['galleries']['G1']['file']}, "
             f"G2 = {report['galleries']['G2']['file']}",
             "- template features as in 1:1; score = cosine; ties count against the probe", "",
             "Closed set (insightface's figures: every probe searches G1 + G2)", "",
             "| rank-1 | rank-5 | rank-10 |", "|---|---|---|",
             "| " + " | ".join(_pct(report[f"rank{r}"]) for r in RANKS) + " |", "",
             "Open set (NIST: per gallery, the other gallery's probes are the non-mated searches; "
             "threshold = the (floor(f N) + 1)-th highest non-mated top score; a hit ranks its "
             "mate first and scores strictly above it). TPIR (achieved FPIR):", "",
             "| gallery | " + " | ".join(f"FPIR {k}" for k in fp) + " |",
             "|---" * (len(fp) + 1) + "|", *rows, ""]
    write_text(out / "report_1n.md", "\n".join(lines))
