"""MS1M-LT: the long-tailed face training set of the OLTR paper, rebuilt from MS1M-ArcFace.

Liu et al. (CVPR 2019) build MS1M-LT from MS1M-ArcFace (5.8M images, 85K identities) by
"sampling images of each identity with a probability proportional to the image number of each
identity", which gives about 887.5K images of 74.5K identities.  This module makes that rule exact:

* An identity with ``c`` source images keeps each of its images independently with probability
  ``p(c) = min(1, c / C)``; it keeps ``c * p(c) = min(c, c^2 / C)`` images in expectation
  (a binomial ``Bin(c, p(c))`` count).
* ``C`` is the one number for which the expected total equals the target:
  ``sum_i min(c_i, c_i^2 / C) = target_images`` (default 887,500; ``--target-images N`` carries
  the rule to other sources).  The left side is continuous and strictly decreasing in ``C`` above
  the smallest count, and on each interval between two distinct counts it is
  ``S_hi + Q_lo / C`` (``S_hi``: sum of the counts clipped at p = 1, ``Q_lo``: sum of the squares
  of the others), so ``C`` is found exactly: locate the interval, then solve the linear equation
  in ``1/C`` (no bisection tolerance needed).
* Draws come from ``numpy.random.Generator(PCG64(seed))``: one uniform per source image, in
  source order (identity by identity, image by image); an image is kept when its uniform is
  below its identity's ``p``.  Same seed and source -> the same subset, byte for byte.
* Identities that keep no image are dropped; the rest are relabelled densely ``0..K'-1`` in the
  source identity order.

:func:`prepare_ms1m_lt` reads only the source's record 0 and identity records (counts without
touching images), decides, then streams the kept image records one by one into a new insightface
``out_dir/train.rec`` / ``train.idx`` / ``property`` (each header re-packed with the new label, the
image bytes untouched), and writes ``out_dir/manifest.json``.
"""
from __future__ import annotations

import argparse
import json
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np

from facelt.data.shots import shot_counts
from facelt.data.recordio import InsightfaceRecWriter, RecordReader, insightface_paths, read_insightface
from facelt.errors import ConfigError, DataError, FaceltError
from facelt.utils.io import write_json
from facelt.utils.progress import progress

#: The paper's MS1M-LT size (images); its identity count (74.5K) follows from the rule.
PAPER_TARGET_IMAGES = 887_500
#: progress of an unfinished build (beside its ``train.rec.partial``), saved every SAVE_EVERY images
PROGRESS_NAME = ".ms1m_lt.progress.json"
SAVE_EVERY = 4096
_CHUNK = 1 << 20  # uniforms drawn per call while sampling (bounds the temporary arrays)


def _as_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("counts must be a non-empty 1-d array of images per identity")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.equal(np.mod(c, 1), 0)):
            raise ValueError("counts must be whole numbers")
    c = c.astype(np.int64)
    if (c < 0).any():
        raise ValueError("counts must be >= 0")
    return c


def solve_c(counts: Sequence[int] | np.ndarray, target_images: float) -> float:
    """The ``C`` with ``sum_i min(c_i, c_i^2 / C) = target_images`` (see the module docstring).

    When the target equals the source size every image is kept and ``C`` is the smallest
    positive count (``p = 1`` for all).  A target above the source size is an error.
    """
    c = _as_counts(counts)
    c = c[c > 0].astype(np.float64)
    total = float(c.sum())
    if not (0 < target_images <= total):
        raise ConfigError(f"target_images (--target-images) must be in (0, {int(total)}] (the "
                          f"source size), got {target_images}")
    u, mult = np.unique(c, return_counts=True)
    s = u * mult                        # sum of counts at each distinct value
    q = u * u * mult                    # sum of squared counts at each distinct value
    s_gt = np.concatenate([np.cumsum(s[::-1])[::-1][1:], [0.0]])   # sum of counts  > u_j
    q_le = np.cumsum(q)                                             # sum of squares <= u_j
    f_at_u = s_gt + q_le / u            # expected total when C = u_j (continuous, decreasing)
    j = int(np.searchsorted(-f_at_u, -float(target_images), side="right")) - 1
    j = max(j, 0)                       # f(u_0) = total >= target, so j >= 0 already
    if f_at_u[j] == target_images:
        return float(u[j])
    # on [u_j, u_{j+1}): identities with c <= u_j have p = c/C, the rest p = 1
    return float(q_le[j] / (target_images - s_gt[j]))


def keep_probabilities(counts: Sequence[int] | np.ndarray,
                       target_images: float = PAPER_TARGET_IMAGES) -> tuple[np.ndarray, float]:
    """Per-identity keep probability ``p_i = min(1, c_i / C)`` and the solved ``C``."""
    c = _as_counts(counts)
    big_c = solve_c(c, target_images)
    return np.minimum(1.0, c / big_c), big_c


class ExpectedSize(NamedTuple):
    """Expected MS1M-LT size under the sampling rule (means and standard deviations)."""

    images: float
    images_std: float
    identities: float
    identities_std: float
    C: float


def expected_ms1m_lt_size(counts: Sequence[int] | np.ndarray,
                          target_images: float = PAPER_TARGET_IMAGES) -> ExpectedSize:
    """Mean and std of the kept images (``sum c p``, var ``sum c p (1-p)``) and kept identities
    (an identity survives with probability ``1 - (1-p)^c``)."""
    c = _as_counts(counts)
    p, big_c = keep_probabilities(c, target_images)
    survive = 1.0 - np.power(1.0 - p, c)
    return ExpectedSize(
        images=float((c * p).sum()),
        images_std=float(np.sqrt((c * p * (1.0 - p)).sum())),
        identities=float(survive.sum()),
        identities_std=float(np.sqrt((survive * (1.0 - survive)).sum())),
        C=big_c,
    )


@dataclass(frozen=True)
class MS1MLTSample:
    """One draw of the MS1M-LT rule over a source of ``counts`` images per identity.

    ``keep`` is a mask over the source images in source order (identity by identity);
    ``kept_counts[i]`` is how many of identity ``i``'s images are kept; ``source_labels`` are the
    surviving source identities in order, so new label ``k`` is source identity
    ``source_labels[k]``.
    """

    keep: np.ndarray
    offsets: np.ndarray
    kept_counts: np.ndarray
    source_labels: np.ndarray
    p: np.ndarray
    C: float

    def kept_indices(self, identity: int) -> np.ndarray:
        """Indices (0-based, within the identity) of the kept images of source ``identity``."""
        lo, hi = int(self.offsets[identity]), int(self.offsets[identity + 1])
        return np.flatnonzero(self.keep[lo:hi])


def sample_ms1m_lt(counts: Sequence[int] | np.ndarray, target_images: float = PAPER_TARGET_IMAGES,
                   seed: int = 0) -> MS1MLTSample:
    """Draw which source images MS1M-LT keeps (deterministic for a seed; see module docstring)."""
    c = _as_counts(counts)
    p, big_c = keep_probabilities(c, target_images)
    total = int(c.sum())
    rng = np.random.Generator(np.random.PCG64(seed))
    keep = np.empty(total, dtype=bool)
    ident = np.repeat(np.arange(c.size), c)
    for lo in range(0, total, _CHUNK):
        hi = min(total, lo + _CHUNK)
        keep[lo:hi] = rng.random(hi - lo) < p[ident[lo:hi]]
    kept_counts = np.bincount(ident[keep], minlength=c.size).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(c)]).astype(np.int64)
    return MS1MLTSample(keep=keep, offsets=offsets, kept_counts=kept_counts,
                        source_labels=np.flatnonzero(kept_counts > 0).astype(np.int64),
                        p=p, C=big_c)


# --- building the rec -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceIdentities:
    """A source insightface rec's identities: identity ``i`` owns image keys
    ``starts[i] .. starts[i] + counts[i] - 1`` (read from record 0 and the identity records)."""

    starts: np.ndarray
    counts: np.ndarray
    image_size: tuple[int, int]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _summary(counts: np.ndarray) -> dict:
    return {"identities": int(counts.size), "images": int(counts.sum()),
            "min": int(counts.min()), "max": int(counts.max()),
            "mean": float(counts.mean()), "median": float(np.median(counts))}


def build_manifest(sample: MS1MLTSample, source_counts: np.ndarray, *, seed: int,
                   target_images: float, source_prefix: str, source_idx_sha256: str) -> dict:
    """The ``manifest.json`` of an MS1M-LT build (plain JSON types only)."""
    kept = sample.kept_counts[sample.source_labels]
    values, freq = np.unique(kept, return_counts=True)
    expected = expected_ms1m_lt_size(source_counts, target_images)
    return {
        "dataset": "MS1M-LT",
        "rule": "each image of an identity with c images kept independently with probability "
                "min(1, c / C); sum_i min(c_i, c_i^2 / C) = target_images; identities keeping no "
                "image dropped; labels dense 0..K'-1 in source order",
        "seed": int(seed),
        "rng": "numpy.random.Generator(PCG64(seed)), one uniform per source image in source order",
        "target_images": float(target_images),
        "C": float(sample.C),
        "source": {"prefix": str(source_prefix), "idx_sha256": source_idx_sha256,
                   "counts": _summary(source_counts)},
        "expected": {"images": expected.images, "images_std": expected.images_std,
                     "identities": expected.identities, "identities_std": expected.identities_std},
        "totals": {"images": int(kept.sum()), "identities": int(kept.size),
                   "dropped_identities": int(source_counts.size - kept.size)},
        "kept_counts_summary": _summary(kept),
        "shots": shot_counts(kept),  # many > 100, medium 20..100, few < 20
        "histogram": {"kept_count": values.tolist(), "identities": freq.tolist()},
        "identities": {"note": "index = new label",
                       "source_label": sample.source_labels.tolist(),
                       "count": kept.tolist()},
    }


def read_source_identities(source_prefix: str | os.PathLike) -> SourceIdentities:
    """Images per identity of an insightface rec, from record 0 and its identity records only."""
    index = read_insightface(source_prefix)
    if index.ranges is None:
        raise DataError(f"{index.rec_path}: images are not grouped by identity (no identity "
                        "records and unsorted labels); MS1M-LT needs the insightface layout")
    ranges = np.asarray(index.ranges, dtype=np.int64)
    return SourceIdentities(starts=ranges[:, 0].copy(), counts=(ranges[:, 1] - ranges[:, 0]),
                            image_size=tuple(index.image_size or (112, 112)))


def prepare_ms1m_lt(source_prefix: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0,
                    target_images: float = PAPER_TARGET_IMAGES) -> dict:
    """Build MS1M-LT from an insightface rec (e.g. MS1M-ArcFace ``faces_emore/train``).

    Writes ``out_dir/train.rec``, ``train.idx``, ``property`` (renamed into place only when
    complete) and then ``out_dir/manifest.json``; returns the manifest.  Image bytes are copied
    unchanged; each header is re-packed as ``(0, new_label, new_key, 0)``.
    """
    src_rec, src_idx, src_prop = insightface_paths(source_prefix)
    out = Path(out_dir)
    dst_rec, _, dst_prop = insightface_paths(out / "train")
    if dst_prop.resolve() == src_prop.resolve() or dst_rec.resolve() == src_rec.resolve():
        raise DataError(f"{out}: the output folder is the source's folder ({src_rec.parent}); "
                        "pick another one (train.rec and property would be overwritten)")
    source = read_source_identities(source_prefix)
    if not 0 < target_images <= int(source.counts.sum()):
        raise DataError(f"{src_rec}: target_images={target_images:g} must be in (0, "
                        f"{int(source.counts.sum())}], the number of images in the source")
    sample = sample_ms1m_lt(source.counts, target_images, seed)
    kept_total = int(sample.keep.sum())
    if kept_total == 0:
        raise DataError(f"{src_rec}: target_images={target_images} keeps no image with seed {seed}")
    manifest = build_manifest(sample, source.counts, seed=seed, target_images=target_images,
                              source_prefix=os.fspath(source_prefix), source_idx_sha256=_sha256(src_idx))
    # a killed build resumes from its last saved state (<out>/train.rec.partial + this file)
    progress_file = out / PROGRESS_NAME
    settings = {"seed": int(seed), "target_images": float(target_images),
                "source_idx_sha256": manifest["source"]["idx_sha256"], "images": kept_total}
    resume, done = None, 0
    if progress_file.is_file():
        saved = json.loads(progress_file.read_text())
        if saved.get("settings") != settings:
            raise DataError(f"{progress_file}: an unfinished MS1M-LT build with other settings "
                            f"({saved.get('settings')}) is in {out}; delete {progress_file.name} and "
                            f"the train.*.partial files there to start over")
        resume, done = saved["writer"], int(saved["images_done"])
        if not (out / "train.rec.partial").is_file():
            raise DataError(f"{progress_file}: the build in {out} was interrupted while finishing "
                            f"(train.rec.partial is gone); delete {progress_file.name}, train.rec, "
                            f"train.idx and property there and run again")
    reader = RecordReader(src_rec, src_idx)
    try:
        with InsightfaceRecWriter(out / "train", kept_total, source.image_size, resumable=True,
                                  resume=resume) as writer, \
                progress(total=kept_total, initial=done, desc="MS1M-LT", unit="img") as bar:
            i = 0
            for new_label, src_label in enumerate(sample.source_labels.tolist()):
                start = int(source.starts[src_label])
                for offset in sample.kept_indices(src_label).tolist():
                    i += 1
                    if i <= done:  # written before the interruption
                        continue
                    key = start + offset
                    header, payload = reader.read_unpacked(key)
                    if header.flag == 0 and header.label != src_label:
                        raise DataError(f"{reader.where(key, reader.offset_of(key))}: image label "
                                        f"{header.label} but its identity record says {src_label}")
                    writer.add_image(new_label, payload)
                    bar.update(1)
                    if i % SAVE_EVERY == 0 and i < kept_total:
                        write_json(progress_file, {"settings": settings, "writer": writer.state(),
                                                   "images_done": writer.images_written})
    finally:
        reader.close()
    progress_file.unlink(missing_ok=True)
    manifest["verification_sets"] = carry_verification_sets(src_rec.parent, out)
    write_json(out / "manifest.json", manifest)
    return manifest


def carry_verification_sets(source_dir: str | os.PathLike, out_dir: str | os.PathLike
                            ) -> list[str]:
    """Hard-link (a copy where linking fails: another file system) every verification ``.bin``
    beside the source's train.rec (faces_emore keeps lfw.bin, cfp_fp.bin, agedb_30.bin there)
    into ``out_dir``, so ``eval.verification: [lfw, ...]`` finds them beside the new train.rec.
    A file already there with the same size is kept. Returns the names carried, sorted."""
    import shutil
    src, out = Path(source_dir), Path(out_dir)
    names = []
    for f in sorted(src.glob("*.bin")):
        dst = out / f.name
        names.append(f.name)
        if dst.exists() and dst.stat().st_size == f.stat().st_size:
            continue
        tmp = out / f".{f.name}.partial"
        tmp.unlink(missing_ok=True)
        try:
            os.link(f, tmp)
        except OSError:
            shutil.copyfile(f, tmp)
        os.replace(tmp, dst)
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``prepare_ms1m_lt`` for a command line."""
    parser.add_argument("source", help="insightface rec prefix of the source, e.g. faces_emore/train")
    parser.add_argument("out_dir", help="output folder (gets train.rec/.idx, property, manifest.json)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--target-images", type=float, default=PAPER_TARGET_IMAGES,
                        help=f"expected kept images (default {PAPER_TARGET_IMAGES:,}, the paper's size)")


def run(args: argparse.Namespace) -> int:
    """Run :func:`prepare_ms1m_lt` from parsed :func:`add_arguments` options; prints the totals."""
    m = prepare_ms1m_lt(args.source, args.out_dir, seed=args.seed, target_images=args.target_images)
    t = m["totals"]
    print(f"MS1M-LT: {t['images']:,} images, {t['identities']:,} identities "
          f"({t['dropped_identities']:,} dropped), C = {m['C']:.4f} -> {args.out_dir}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ms1m_lt", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FaceltError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
