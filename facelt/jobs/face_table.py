"""The face table of ``facelt compare`` (the OLTR paper's Table 4, left): each method's checkpoint
judged the face way when the recipe names face evaluation inputs (``eval.faces``,
``eval.verification``).

* MegaFace-style identification (:func:`eval_megaface.evaluate.run_evaluation`): probes,
  distractors and the training set embedded once per checkpoint (flip-summed, L2-normalised,
  memory-mapped, resumable and reused when made from the same checkpoint and images:
  :func:`facelt.features.extract.extract_checkpoint_features`) under ``OUT/face_features/``;
  rank-1 per pseudo-shot bucket of the probe (training images with cosine > 0.7: many > 5,
  few 2..5, one 1, zero 0), in full, and per value of every attribute column of the probe list,
  one table per gallery size;
* verification accuracy on every ``eval.verification`` set (insightface's 10 folds) and IJB
  TAR@FAR (1:1, ``eval.faces.ijb_root``), one table.

:func:`face_tables` is the evaluation :func:`facelt.compare.compare` is handed
(:data:`facelt.compare.tables.TableEvaluation`); :func:`megaface_row` turns one MegaFace report
into a row (the demo's ``face_table``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from facelt.compare.tables import ResultTable
from facelt.errors import ConfigError

__all__ = ["FaceInputs", "face_inputs", "face_tables", "megaface_row", "row_columns",
           "checkpoint_megaface", "checkpoint_verification", "checkpoint_ijb", "BUCKETS"]

BUCKETS = ("many", "few", "one", "zero")


@dataclass(frozen=True)
class FaceInputs:
    """What a recipe names for the face table (``None`` / empty: that part is skipped)."""

    probes: Optional[Path]
    probe_list: Optional[Path]
    distractors: Optional[Path]
    train: Optional[Path]
    gallery_sizes: tuple[int, ...]
    verification: tuple[Path, ...]
    ijb_root: Optional[Path]
    ijb_target: str
    seed: int
    batch_size: int


def face_inputs(cfg) -> Optional[FaceInputs]:
    """The face evaluation inputs of ``cfg``, checked; None when it names none."""
    f = cfg.eval.faces
    mega = [f.probes, f.probe_list, f.distractors]
    if not any(mega) and not cfg.eval.verification and not f.ijb_root:
        return None
    if any(mega) and not all(mega):
        missing = [k for k, v in zip(("probes", "probe_list", "distractors"), mega) if not v]
        raise ConfigError(f"eval.faces: MegaFace identification needs probes, probe_list and "
                          f"distractors; {', '.join('eval.faces.' + k for k in missing)} not set")
    train = None
    if any(mega):
        if cfg.data.format != "rec":
            raise ConfigError("eval.faces: the pseudo-shot counts embed the training set, which "
                              "must be a rec (data.format: rec)")
        from facelt.data.build import split_location
        train = split_location(cfg.data, "train")
        if train is None:
            raise ConfigError("eval.faces: pseudo-shots count training images: set data.train")
    from facelt.faces.verify_callback import resolve_verification_sets
    return FaceInputs(
        Path(f.probes) if f.probes else None, Path(f.probe_list) if f.probe_list else None,
        Path(f.distractors) if f.distractors else None, train,
        tuple(f.gallery_sizes), tuple(resolve_verification_sets(cfg)),
        Path(f.ijb_root) if f.ijb_root else None, f.ijb_target, cfg.seed, cfg.eval.batch_size)


def _group_label(column: str, value: str, columns: int) -> str:
    return value if columns == 1 else f"{column}={value}"


def megaface_row(report: dict, gallery: Optional[int] = None) -> dict:
    """``{many, few, one, zero, full, groups, gallery}`` of a MegaFace report (the first gallery
    size unless ``gallery``): rank-1 in [0, 1] (None: no probe in that bucket / no pseudo-shot
    counts); ``groups``: ``{column: {value: rank-1}}``."""
    results = report.get("results") or [report]
    picked = results[0] if gallery is None else next(
        (r for r in results if r["gallery"] == gallery), None)
    if picked is None:
        raise ConfigError(f"no MegaFace result at gallery size {gallery}")
    shots = picked.get("pseudo_shots") or {}
    row = {b: (shots.get(b) or {}).get("rank1") for b in BUCKETS}
    row.update(full=picked["rank1"], groups=picked.get("groups") or {},
               gallery=int(picked["gallery"]))
    return row


def row_columns(row: dict) -> dict[str, Optional[float]]:
    """A :func:`megaface_row` as the table's flat columns: many, few, one, zero, full, then one
    per group value (the value alone under one attribute column, ``column=value`` otherwise)."""
    cells = {b: row[b] for b in BUCKETS}
    cells["full"] = row["full"]
    groups = row["groups"]
    for column, values in groups.items():
        for value, r in values.items():
            cells[_group_label(column, value, len(groups))] = r
    return cells


def _extract(ckpt: Path, prefix: Path, out: Path, batch: int, device: str) -> Path:
    from facelt.data.rec_dataset import RecordDataset
    from facelt.features.extract import extract_checkpoint_features
    ds = RecordDataset(prefix, train=False)
    return extract_checkpoint_features(ckpt, ds, [f"{prefix}#{int(k)}" for k in ds.keys], out,
                                       batch_size=batch, device=device)


def checkpoint_megaface(ckpt: Path, inputs: FaceInputs, folder: Path, device: str = "auto",
                        log: Callable[[str], None] = print) -> dict:
    """Probe, distractor and training features of ``ckpt`` in ``folder`` (each made once) and
    the MegaFace report (written to ``folder/megaface/``)."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    from eval_megaface.report import write_report
    feats = {}
    for name, prefix in (("probes", inputs.probes), ("distractors", inputs.distractors),
                         ("train", inputs.train)):
        feats[name] = _extract(ckpt, prefix, folder / f"{name}.npy", inputs.batch_size, device)
    log(f"  MegaFace protocol at {', '.join(map(str, inputs.gallery_sizes))} distractors")
    report = run_evaluation(MegaFaceEvalConfig(
        gallery_sizes=list(inputs.gallery_sizes), probe_features=feats["probes"],
        probe_list=inputs.probe_list, distractor_features=feats["distractors"],
        train_features=feats["train"], seed=inputs.seed))
    write_report(report, folder / "megaface")
    return report


def checkpoint_verification(ckpt: Path, sets: tuple[Path, ...], batch: int,
                            device: str = "auto") -> dict[str, dict]:
    """Verification (insightface's 10 folds, flip-sum) of ``ckpt`` on every set."""
    from facelt.faces.verification import VerificationSet
    from facelt.features.embed import embedder_for_checkpoint
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.parallel.process import pick_device
    dev = pick_device(device)
    net, cfg, _ = net_from_checkpoint(ckpt, dev)
    embedder = embedder_for_checkpoint(net, cfg, dev)
    return {p.stem: VerificationSet.load(p, cfg.data.image_size).evaluate_model(embedder, dev,
                                                                                 batch)
            for p in sets}


def checkpoint_ijb(ckpt: Path, inputs: FaceInputs, folder: Path, device: str = "auto") -> dict:
    """IJB 1:1 of ``ckpt`` (:func:`facelt.faces.ijb.evaluate_ijb`), image features in
    ``folder`` (resumable); returns its report (``tar_at_far``)."""
    from facelt.faces.face_model import FaceModelSpec
    from facelt.faces.ijb import evaluate_ijb, ijb_image_features, ijb_paths, read_meta
    paths = ijb_paths(inputs.ijb_root, inputs.ijb_target)
    meta = read_meta(paths)
    ff = ijb_image_features(FaceModelSpec(checkpoint=str(ckpt), device=device), meta,
                            paths.images, folder, inputs.batch_size, inputs.ijb_target)
    report, _, _ = evaluate_ijb(ff.read(0, ff.rows), meta, paths.pairs)
    return report


def _megaface_tables(rows: dict[str, dict], inputs: FaceInputs) -> list[ResultTable]:
    tables = []
    for g in inputs.gallery_sizes:
        per = {m: row_columns(megaface_row(r, g)) for m, r in rows.items()}
        columns = list(dict.fromkeys(c for cells in per.values() for c in cells))
        tables.append(ResultTable(
            f"megaface_{g}", f"MegaFace rank-1 at {g} distractors (Table 4 left layout)",
            columns, {m: {c: cells.get(c) for c in columns} for m, cells in per.items()},
            notes=["Buckets: the probe's pseudo-shots, training images with cosine > 0.7 to it "
                   "(many > 5, few 2..5, one 1, zero 0); full: every probe; then one column per "
                   f"attribute value of {inputs.probe_list}. Rank-1 in %."]))
    return tables


def _verification_table(ver: dict[str, dict], ijb: dict[str, dict], target: str
                        ) -> ResultTable:
    rows: dict[str, dict] = {}
    columns: list[str] = []
    for m in dict.fromkeys([*ver, *ijb]):
        cells = {f"{name} acc": r["accuracy"] for name, r in ver.get(m, {}).items()}
        for far, tar in (ijb.get(m) or {}).get("tar_at_far", {}).items():
            cells[f"{target} TAR@FAR={far}"] = tar
        rows[m] = cells
        columns += [c for c in cells if c not in columns]
    return ResultTable("face_verification", "Face verification accuracy and IJB TAR@FAR",
                       columns, {m: {c: cells.get(c) for c in columns} for m, cells in rows.items()},
                       notes=["Verification: insightface's 10-fold protocol on the "
                              "eval.verification sets (mean accuracy); IJB: 1:1 TAR at FAR."])


def face_tables(ckpts: dict[str, Path], cfg, out: Path, log: Callable[[str], None] = print
                ) -> list[ResultTable]:
    """The face tables of ``ckpts`` (method -> checkpoint) on the inputs ``cfg`` names (none:
    ``[]``); each checkpoint is embedded once (methods sharing one share its features)."""
    inputs = face_inputs(cfg)
    if inputs is None:
        return []
    device = cfg.device
    folders: dict[Path, Path] = {}
    mega: dict[Path, dict] = {}
    ver: dict[Path, dict] = {}
    ijb: dict[Path, dict] = {}
    for m, ckpt in ckpts.items():
        if ckpt in folders:
            continue
        folders[ckpt] = folder = Path(out) / "face_features" / m
        log(f"{m}: face evaluation of {ckpt}")
        if inputs.probes is not None:
            mega[ckpt] = checkpoint_megaface(ckpt, inputs, folder, device, log)
        if inputs.verification:
            ver[ckpt] = checkpoint_verification(ckpt, inputs.verification, inputs.batch_size,
                                                device)
        if inputs.ijb_root is not None:
            ijb[ckpt] = checkpoint_ijb(ckpt, inputs, folder / "ijb", device)
    tables = []
    if mega:
        tables += _megaface_tables({m: mega[c] for m, c in ckpts.items()}, inputs)
    if ver or ijb:
        tables.append(_verification_table({m: ver[c] for m, c in ckpts.items() if c in ver},
                                          {m: ijb[c] for m, c in ckpts.items() if c in ijb},
                                          inputs.ijb_target))
    return tables
