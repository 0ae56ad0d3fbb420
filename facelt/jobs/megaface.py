"""``facelt megaface-eval`` as a job: typed inputs (:class:`MegaFaceJob`), features extracted first
when asked (a facelt checkpoint or an ONNX model, :class:`MegaFaceExtraction`), then one
:func:`eval_megaface.evaluate.run_evaluation` and the report files.

:func:`run_megaface_eval` joins the process group only where processes are needed: under
``torchrun`` (``WORLD_SIZE`` > 1) or to embed with a checkpoint. An evaluation of feature files in
one process never imports torch (it would cost about a second and several hundred MB of RSS).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from facelt.errors import ConfigError, DataError
from facelt.utils.io import ensure_writable_dir

from eval_megaface.pseudo_shots import DEFAULT_THRESHOLD, check_threshold
from eval_megaface.search import DEFAULT_CHUNK_ROWS

#: Where ``--noise-lists`` without a folder looks first.
NOISE_ENV = "FACELT_NOISE_LISTS"

__all__ = ["MegaFaceExtraction", "MegaFaceJob", "ExtractedFeatures", "run_megaface_eval",
           "run_megaface_job", "needs_processes", "noise_dir_of", "extract_with_checkpoint",
           "extract_with_onnx", "checked_distractor_list", "NOISE_ENV"]


@dataclass(frozen=True)
class MegaFaceExtraction:
    """What to embed before evaluating (with ``checkpoint`` or ``onnx``; neither: nothing)."""

    checkpoint: Optional[Path] = None
    onnx: Optional[Path] = None
    onnx_output: Optional[str] = None  # the embedding among several ONNX outputs
    probe_images: Optional[Path] = None  # root of the probe list's 'path' column
    probe_rec: Optional[str] = None
    distractor_images: Optional[Path] = None
    distractor_rec: Optional[str] = None
    train_rec: Optional[str] = None
    batch_size: int = 256

    @property
    def requested(self) -> bool:
        return self.checkpoint is not None or self.onnx is not None


@dataclass(frozen=True)
class MegaFaceJob:
    """One ``megaface-eval`` (see ``facelt megaface-eval --help`` for every field's meaning)."""

    gallery_sizes: list[int]
    probe_list: Optional[Path]
    out: Path
    probe_features: Optional[Path] = None
    distractor_features: Optional[Path] = None
    train_features: Optional[Path] = None
    distractor_list: Optional[Path] = None
    gallery_order: Optional[Path] = None
    noise_lists: Optional[str] = None  # None: original protocol; "": the default folder
    index: str = "flat"
    nprobe: int = 32
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    normalize: bool = True
    device: str = "auto"
    extract: MegaFaceExtraction = field(default_factory=MegaFaceExtraction)


@dataclass
class ExtractedFeatures:
    """Feature files made by the extraction (None: that set was not asked for)."""

    probe: Optional[Path] = None
    distractor: Optional[Path] = None
    train: Optional[Path] = None
    distractor_rows: Optional[list[str]] = None
    stage: Optional[int] = None  # the checkpoint's training stage (shown in the report)


def world_size_from_env() -> int:
    """The ``WORLD_SIZE`` torchrun sets (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: expected a whole number "
                          "(set by torchrun)") from None


def needs_processes(job: MegaFaceJob) -> bool:
    """Whether the job needs torch's process set-up: under torchrun, or to embed a checkpoint."""
    return world_size_from_env() > 1 or job.extract.checkpoint is not None


def check_job(job: MegaFaceJob) -> None:
    """The refusals that need no data, before any work."""
    if job.probe_list is None:
        from pipelines.getting_data import MEGAFACE_HOWTO
        raise ConfigError(f"--probe-list is required (the probe CSV). {MEGAFACE_HOWTO}")
    if job.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {job.chunk_rows}: must be >= 1")
    check_threshold(job.threshold, job.normalize)
    x = job.extract
    if x.checkpoint is not None and x.onnx is not None:
        raise ConfigError("give --checkpoint or --onnx, not both")
    if x.onnx_output is not None and x.onnx is None:
        raise ConfigError("--onnx-output names an output of the --onnx model: give --onnx too")
    if x.onnx is not None and world_size_from_env() > 1:
        raise ConfigError("--onnx embeds in one process: run megaface-eval --onnx without torchrun "
                          "(or extract first, then run torchrun megaface-eval on the features)")


def run_megaface_eval(job: MegaFaceJob) -> Optional[dict[str, Any]]:
    """The whole job in this process (one rank of torchrun, or alone): the report dictionary it
    wrote to ``job.out`` (None on ranks other than 0)."""
    check_job(job)
    ensure_writable_dir(job.out, "--out")  # before the evaluation, not after it
    if not needs_processes(job):
        return run_megaface_job(job, None)
    from facelt.parallel import process as D
    dist = D.setup(job.device)  # under torchrun: extraction and the distractor search are split
    try:
        return run_megaface_job(job, dist)
    finally:
        D.teardown(after_error=sys.exc_info()[0] is not None)


def noise_dir_of(noise_lists: Optional[str], probe_list: Path) -> Optional[Path]:
    """``--noise-lists [DIR]``: DIR, else ``$FACELT_NOISE_LISTS``, else the probe list's folder
    (None: not asked for)."""
    if noise_lists is None:
        return None
    if noise_lists:
        return Path(noise_lists)
    env = os.environ.get(NOISE_ENV)
    return Path(env) if env else probe_list.resolve().parent


def run_megaface_job(job: MegaFaceJob, dist=None) -> Optional[dict[str, Any]]:
    """Extract (when asked), evaluate and write the report; ``dist`` a
    :class:`facelt.parallel.process.DistInfo` or None (one process, torch never imported)."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    from eval_megaface.report import preload_plotting, write_report
    from eval_megaface.search import default_backend

    check_job(job)
    probe_features, distractor_features = job.probe_features, job.distractor_features
    train_features, distractor_list = job.train_features, job.distractor_list
    made = None
    if job.extract.requested:
        made = extract_with_onnx(job) if job.extract.onnx else extract_with_checkpoint(job, dist)
        probe_features = made.probe or probe_features
        train_features = made.train or train_features
        if made.distractor is not None:
            distractor_features = made.distractor
            distractor_list = checked_distractor_list(distractor_list, made.distractor,
                                                      made.distractor_rows)
    if probe_features is None or distractor_features is None:
        raise ConfigError("give --probe-features and --distractor-features, or --checkpoint with "
                          "--probe-images/--probe-rec and --distractor-images/--distractor-rec "
                          "(or --onnx MODEL with them)")
    cfg = MegaFaceEvalConfig(
        gallery_sizes=list(job.gallery_sizes), probe_features=probe_features,
        probe_list=job.probe_list, distractor_features=distractor_features,
        distractor_list=distractor_list, gallery_order_list=job.gallery_order,
        train_features=train_features, noise_dir=noise_dir_of(job.noise_lists, job.probe_list),
        index=job.index, seed=job.seed, chunk_rows=job.chunk_rows, threshold=job.threshold,
        normalize=job.normalize, nprobe=job.nprobe, backend=default_backend(job.device))
    if dist is None or dist.is_primary:  # the report's charts: imported during the search
        preload_plotting()
    report = run_evaluation(cfg, dist)
    if report is None:  # another rank: rank 0 merges its search and reports
        return None
    if made is not None and made.stage is not None:
        report["meta"]["stage"] = made.stage
    write_report(report, job.out)
    return report


def _probe_rows(probe_list: Path) -> list[str]:
    from eval_megaface.probes import read_probe_list
    return list(read_probe_list(probe_list).paths)


def extract_with_checkpoint(job: MegaFaceJob, dist=None) -> ExtractedFeatures:
    """Embed the probe / distractor / training images with the checkpoint (resumable) into
    ``OUT/features/``; returns the files made."""
    from facelt.data.build import eval_transform
    from facelt.data.images import FolderImages
    from facelt.features.extract import dataset_for, extract_checkpoint_features
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.parallel.process import pick_device
    x = job.extract
    net, cfg, state = net_from_checkpoint(x.checkpoint, dist.device if dist is not None
                                          else pick_device(job.device))
    jobs = []
    if x.probe_rec or x.probe_images:
        if x.probe_rec:
            ds, rows = dataset_for(cfg, rec=x.probe_rec)
        else:
            rows = _probe_rows(job.probe_list)
            ds = FolderImages([x.probe_images / r for r in rows], eval_transform(cfg.data),
                              channels=cfg.data.channels)
        jobs.append(("probe", "probes", ds, rows))
    if x.distractor_rec or x.distractor_images:
        ds, rows = dataset_for(cfg, rec=x.distractor_rec,
                               images=str(x.distractor_images) if x.distractor_images else None)
        jobs.append(("distractor", "distractors", ds, rows))
    if x.train_rec:
        ds, rows = dataset_for(cfg, rec=x.train_rec)
        jobs.append(("train", "train", ds, rows))
    if not jobs:
        raise ConfigError("--checkpoint needs --probe-images/--probe-rec, --distractor-images/"
                          "--distractor-rec or --train-rec")
    made = ExtractedFeatures(stage=int(state["stage"]))
    for field_name, name, ds, rows in jobs:
        out = job.out / "features" / f"{name}.npy"  # reused only when made from these inputs
        extract_checkpoint_features(x.checkpoint, ds, rows, out, x.batch_size,
                                    device=job.device, net=net, dist=dist)
        setattr(made, field_name, out)
        if name == "distractors":
            made.distractor_rows = rows
    return made


def extract_with_onnx(job: MegaFaceJob) -> ExtractedFeatures:
    """``--onnx``: embed the probe / distractor / training images with an ONNX model (flip-sum +
    L2, resumable, :mod:`facelt.faces.onnx_io`) into ``OUT/features/``, rows named as with
    ``--checkpoint``; returns the files made."""
    from facelt.features.embed import files_source, image_source
    from facelt.faces.onnx_io import OnnxEmbedder, extract_onnx_source_features
    x = job.extract
    embedder = OnnxEmbedder(x.onnx, output=x.onnx_output)  # the graph checked before any image
    jobs = []
    if x.probe_rec:
        jobs.append(("probe", "probes", image_source(rec=x.probe_rec)))
    elif x.probe_images:
        rows = _probe_rows(job.probe_list)
        jobs.append(("probe", "probes", files_source([x.probe_images / r for r in rows], rows)))
    if x.distractor_rec or x.distractor_images:
        jobs.append(("distractor", "distractors",
                     image_source(rec=x.distractor_rec,
                                  images=str(x.distractor_images) if x.distractor_images else None)))
    if x.train_rec:
        jobs.append(("train", "train", image_source(rec=x.train_rec)))
    if not jobs:
        raise ConfigError("--onnx needs --probe-images/--probe-rec, --distractor-images/"
                          "--distractor-rec or --train-rec")
    made = ExtractedFeatures()
    for field_name, name, src in jobs:
        out = extract_onnx_source_features(embedder, src, job.out / "features" / f"{name}.npy",
                                           x.batch_size)
        setattr(made, field_name, out)
        if name == "distractors":
            made.distractor_rows = list(src.rows)
    return made


def checked_distractor_list(distractor_list: Optional[Path], features: Path,
                            rows: list[str]) -> Path:
    """Noise lists and --gallery-order address distractors by the list's rows: the extracted rows
    must be that list, in that order. Returns the list to use (without one given, the
    extraction's manifest)."""
    from facelt.features.files import read_manifest
    from facelt.features.extract import manifest_path
    if distractor_list is None:
        return manifest_path(features)
    given = read_manifest(distractor_list)
    if given != rows:
        first = next((i for i, (a, b) in enumerate(zip(given, rows)) if a != b),
                     min(len(given), len(rows)))
        raise DataError(
            f"--distractor-list {distractor_list} ({len(given)} rows) does not list the "
            f"extracted distractors in order ({len(rows)} rows, {manifest_path(features)}): "
            f"first difference at row {first}: "
            f"{given[first] if first < len(given) else '<end>'!r} vs "
            f"{rows[first] if first < len(rows) else '<end>'!r}")
    return distractor_list
