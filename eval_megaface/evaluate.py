"""One MegaFace challenge-1 evaluation, from feature files to the report dictionary.

Report layout (``report.json``), one object per gallery size::

    {"gallery": int, "rank1": float, "trials": int, "cmc": [10 floats],
     "pseudo_shots": {"many"|"few"|"one"|"zero": {"rank1": float|null, "probes": int}} | null,
     "groups": {"<column>": {"<value>": rank1}}, "index": "flat"|..., ...}

With several sizes the top level holds the first size's fields plus ``"results"``: the list of all
of them (first included) in the order asked.  ``"meta"`` records the inputs and protocol choices.
``pseudo_shots`` is null without training features.  With an approximate index, ``rank1``/``cmc``
are that index's and ``approx`` holds ``exact_rank1``, ``rank1_delta`` and ``top1_agreement``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facelt.features.files import FeatureFile, l2_normalize, read_manifest
from eval_megaface.noise import noise_list_paths, noise_mask, read_noise_list
from eval_megaface.probes import read_probe_list
from eval_megaface.protocol import MAX_RANK, gallery_order, group_rank1, score_trials
from eval_megaface.pseudo_shots import (DEFAULT_THRESHOLD, bucket_report, check_threshold,
                                        count_above)
from eval_megaface.search import (APPROX_INDEXES, DEFAULT_CHUNK_ROWS, approx_topk, rescore,
                                  stream_topk, top1_agreement)
from facelt.errors import DataError
from facelt.utils.finite import check_finite_rows


@dataclass
class MegaFaceEvalConfig:
    """Inputs and options of one evaluation (see ``facelt megaface-eval --help``)."""

    gallery_sizes: list[int]
    probe_features: Path
    probe_list: Path
    distractor_features: Path
    distractor_list: Optional[Path] = None
    gallery_order_list: Optional[Path] = None
    train_features: Optional[Path] = None
    noise_dir: Optional[Path] = None
    index: str = "flat"
    seed: int = 0
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    threshold: float = DEFAULT_THRESHOLD
    normalize: bool = True
    backend: Optional[str] = None
    nprobe: int = 32
    approx_options: dict[str, Any] = field(default_factory=dict)


def _check_dims(named: dict[str, FeatureFile]) -> None:
    dims = {name: ff.dim for name, ff in named.items()}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{name} ({ff.path}) has dim {ff.dim}" for name, ff in named.items())
        raise DataError(f"feature dimensions differ: {listing}")


def run_evaluation(cfg: MegaFaceEvalConfig, dist=None) -> Optional[dict[str, Any]]:
    """Evaluate every gallery size of ``cfg``; returns the report dictionary described above.

    ``dist`` (a :class:`facelt.parallel.process.DistInfo` of several processes, collective): the
    exact distractor search is split over the ranks (:mod:`eval_megaface.distributed`, the same
    top-k as one process); rank 0 finishes the evaluation, the other ranks return ``None``."""
    t0 = time.time()
    if cfg.index != "flat" and cfg.index not in APPROX_INDEXES:
        raise DataError(f"--index {cfg.index!r}: expected flat, {', '.join(APPROX_INDEXES)}")
    check_threshold(cfg.threshold, cfg.normalize)  # before the search, not after it
    probe_ff = FeatureFile.open(cfg.probe_features)
    dist_ff = FeatureFile.open(cfg.distractor_features)
    train_ff = FeatureFile.open(cfg.train_features) if cfg.train_features else None
    named = {"probe features": probe_ff, "distractor features": dist_ff}
    if train_ff is not None:
        named["train features"] = train_ff
    _check_dims(named)

    probes = read_probe_list(cfg.probe_list)
    if len(probes) != probe_ff.rows:
        raise DataError(f"probe list {cfg.probe_list} has {len(probes)} rows but probe features "
                        f"{probe_ff.path} have {probe_ff.rows}")
    dist_paths: Optional[list[str]] = None
    if cfg.distractor_list is not None:
        dist_paths = read_manifest(cfg.distractor_list)
        if len(dist_paths) != dist_ff.rows:
            raise DataError(f"distractor list {cfg.distractor_list} has {len(dist_paths)} entries but "
                            f"distractor features {dist_ff.path} have {dist_ff.rows} rows")

    keep = np.ones(len(probes), dtype=bool)
    dist_noise: Optional[np.ndarray] = None
    if cfg.noise_dir is not None:
        fs_list, mf_list = noise_list_paths(cfg.noise_dir)
        if dist_paths is None:
            raise DataError("--noise-lists needs --distractor-list: distractor noise is matched by path")
        keep = ~noise_mask(probes.paths, read_noise_list(fs_list))
        dist_noise = noise_mask(dist_paths, read_noise_list(mf_list))
    probes = probes.subset(keep)

    preferred = None
    if cfg.gallery_order_list is not None:
        preferred = _rows_of_list(cfg.gallery_order_list, dist_paths, cfg.distractor_list)
    order = gallery_order(dist_ff.rows, cfg.seed, dist_noise, preferred)
    for n in cfg.gallery_sizes:
        if n > len(order):
            why = f" after removing {int(dist_noise.sum())} noisy ones" if dist_noise is not None else ""
            raise DataError(f"gallery size {n} exceeds the {len(order)} distractors available in "
                            f"{dist_ff.path}{why}")

    feats = probe_ff.read(0, probe_ff.rows)
    check_finite_rows(feats, probe_ff.path)
    feats = feats[keep]
    if cfg.normalize:
        feats = l2_normalize(feats)
    if dist is not None and dist.distributed:
        from eval_megaface.distributed import distributed_stream_topk
        exact = distributed_stream_topk(feats, dist_ff, order, cfg.gallery_sizes, k=MAX_RANK,
                                        chunk_rows=cfg.chunk_rows, normalize=cfg.normalize,
                                        backend=cfg.backend, dist=dist)
        if exact is None:  # not rank 0: its share is merged there
            return None
    else:
        exact = stream_topk(feats, dist_ff, order, cfg.gallery_sizes, k=MAX_RANK,
                            chunk_rows=cfg.chunk_rows, normalize=cfg.normalize, backend=cfg.backend)
    counts = None
    if train_ff is not None:
        counts = count_above(feats, train_ff, cfg.threshold, cfg.chunk_rows, cfg.normalize)

    results = []
    for n, top in zip(cfg.gallery_sizes, exact):
        top = rescore(feats, dist_ff, top, cfg.normalize)
        exact_outcome = score_trials(feats, probes.identities, top.scores)
        outcome, approx = exact_outcome, None
        if cfg.index != "flat":
            atop = approx_topk(feats, dist_ff, order[:n], cfg.index, k=MAX_RANK,
                               chunk_rows=cfg.chunk_rows, normalize=cfg.normalize,
                               nprobe=cfg.nprobe, seed=cfg.seed, **cfg.approx_options)
            atop = rescore(feats, dist_ff, atop, cfg.normalize)
            outcome = score_trials(feats, probes.identities, atop.scores)
            r_a, r_e = outcome.rank1(), exact_outcome.rank1()
            approx = {"exact_rank1": r_e,
                      "rank1_delta": None if r_a is None or r_e is None else r_a - r_e,
                      "top1_agreement": top1_agreement(atop, top)}
        res: dict[str, Any] = {
            "gallery": int(n), "rank1": outcome.rank1(), "trials": outcome.total_trials,
            "cmc": outcome.cmc(),
            "pseudo_shots": bucket_report(outcome, counts) if counts is not None else None,
            "groups": group_rank1(outcome, probes.attributes), "index": cfg.index}
        if approx is not None:
            res["approx"] = approx
        results.append(res)

    report: dict[str, Any] = dict(results[0])
    if len(results) > 1:
        report["results"] = results
    report["meta"] = {
        "protocol": "refined (noise lists applied)" if cfg.noise_dir else "original",
        "noise_lists": str(cfg.noise_dir) if cfg.noise_dir else None,
        "probes": len(probes), "probes_removed": int((~keep).sum()),
        "identities": int(len(np.unique(probes.identities))),
        "distractor_rows": dist_ff.rows,
        "distractors_removed": int(dist_noise.sum()) if dist_noise is not None else 0,
        "gallery_order": str(cfg.gallery_order_list) if preferred is not None else f"seed {cfg.seed}",
        "seed": cfg.seed, "pseudo_shot_threshold": cfg.threshold if counts is not None else None,
        "normalize": cfg.normalize, "max_rank": MAX_RANK,
        "probe_features": str(cfg.probe_features), "probe_list": str(cfg.probe_list),
        "distractor_features": str(cfg.distractor_features),
        "distractor_list": str(cfg.distractor_list) if cfg.distractor_list else None,
        "train_features": str(cfg.train_features) if cfg.train_features else None,
        "seconds": round(time.time() - t0, 3),
    }
    return report


def _rows_of_list(list_path: Path, dist_paths: Optional[list[str]], dist_list: Optional[Path]) -> np.ndarray:
    """Row indices (in the list's order) of the distractors a gallery-order list names."""
    if dist_paths is None:
        raise DataError(f"--gallery-order {list_path} needs --distractor-list to map paths to rows")
    row_of = {p: i for i, p in enumerate(dist_paths)}
    rows = []
    for j, p in enumerate(read_manifest(list_path)):
        if p not in row_of:
            raise DataError(f"gallery order list {list_path}, entry {j + 1}: {p!r} is not in the "
                            f"distractor list {dist_list}")
        rows.append(row_of[p])
    if len(set(rows)) != len(rows):
        raise DataError(f"gallery order list {list_path}: names some distractor more than once")
    return np.asarray(rows, dtype=np.int64)
