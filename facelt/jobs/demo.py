"""The whole pipeline on built-in SYNTHETIC identities, no downloads, on the CPU:

1. render a long-tailed SYNTHETIC face source in the insightface RecordIO layout (a stand-in for
   MS1M-ArcFace) and sample an MS1M-LT-style training set from it with the paper's rule;
2. train stage 1 (plain) and stage 2 (OLTR) on it;
3. open-set classification of new images of the known identities plus unseen identities, for both
   stages (many / medium / few, F-measure);
4. face verification (insightface's 10-fold protocol) of both stages on a verification .bin of
   SYNTHETIC identities never seen in training, and the stage-2 model exported to ONNX
   (OUT/model.onnx, checked against facelt and verified too);
5. extract flip-summed, L2-normalised features of probes, SYNTHETIC distractors and the training
   set, and run the MegaFace challenge-1 protocol at several gallery sizes with pseudo-shot buckets
   and a breakdown by whether the probe identity was seen in training and by a SYNTHETIC binary
   attribute (``synthetic_group``);
6. the face table (the OLTR paper's Table 4, left): the same protocol on the stage-1 (plain)
   features beside stage 2's (OLTR), rank-1 per pseudo-shot bucket and group;
7. write OUT/report.md linking everything.

Every step skips work that is already complete, so re-running after an interruption continues.
"""
# facelt demo's job: DemoOptions -> demo (holds the lock of OUT) -> run_demo, one function a step;
# the top-level report is facelt.jobs.demo_report's.
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from facelt.jobs.demo_report import write_demo_summary
from facelt.utils.io import atomic_path, write_json

__all__ = ["DemoOptions", "DemoSource", "demo", "run_demo", "sample_training_set",
           "write_eval_sets", "verify_and_export", "write_probes", "megaface_identification",
           "VERIFY_PAIRS", "VERIFY_IDENTITIES", "demo_face_table", "synthetic_group",
           "SYNTHETIC_GROUP", "GALLERY_SIZES"]

#: the demo's verification set: pairs, and SYNTHETIC identities never seen in training
VERIFY_PAIRS = 200
VERIFY_IDENTITIES = 20
#: new images per identity in the test and open sets, and per probe identity
TEST_IMAGES, PROBE_IMAGES = 6, 5
#: unseen (open-set) identities, and how many of them are MegaFace probes
UNSEEN_IDENTITIES, UNSEEN_PROBES = 12, 6
#: seen identities among the MegaFace probes (spread over the training order)
SEEN_PROBES = 14
#: the probe list's SYNTHETIC binary attribute column (stands in for MegaFace's gender)
SYNTHETIC_GROUP = "synthetic_group"


def synthetic_group(identity: int) -> str:
    """The SYNTHETIC binary attribute of an identity: ``A`` for even ids, ``B`` for odd ones (no
    meaning; it makes the attribute-group path of the face table run)."""
    return "A" if identity % 2 == 0 else "B"


@dataclass(frozen=True)
class DemoOptions:
    """What ``facelt demo`` was asked for. ``recipe``: the demo's config (``configs/
    demo_faces.yaml``); ``overrides``: ``KEY=VALUE`` on it; ``device``: sets its ``device`` key;
    ``face_size``: the face images' side (None: the recipe's 32; 112 is insightface's crop, and
    a model insightface's ``model_zoo.get_model`` routes)."""

    out: Path
    recipe: Path
    seed: int = 0
    identities: int = 80
    distractors: int = 2000
    overrides: tuple[str, ...] = ()
    device: Optional[str] = None
    face_size: Optional[int] = None

    def recipe_overrides(self) -> list[str]:
        """``face_size`` first (``--set`` may still change what it sets): ``data.image_size`` and,
        above 32 px, the conv spatial attention (the reference's Linear over the flattened
        (S/4)^2 map would hold (S/4)^4 x 128 weights: 78.7M at 112)."""
        size = []
        if self.face_size is not None:
            size = [f"data.image_size={self.face_size}"]
            if self.face_size > 32:
                size.append("stage2.spatial_attention=conv")
        return [*size, *self.overrides, *([f"device={self.device}"] if self.device else [])]


@dataclass
class DemoSource:
    """The sampled training set: source counts, the manifest, the kept source identities."""

    folder: Path
    source_counts: np.ndarray
    manifest: dict
    kept_source: np.ndarray


def _step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def demo(opts: DemoOptions) -> Path:
    """:func:`run_demo` holding the lock of ``opts.out`` (one demo per folder; its training locks
    ``OUT/train`` too). Returns ``OUT/report.md``."""
    from facelt.utils.run_lock import lock_run_folder
    with lock_run_folder(opts.out):
        return run_demo(opts)


def run_demo(opts: DemoOptions) -> Path:
    """The demo's steps (the caller holds the lock of ``opts.out``); returns ``OUT/report.md``."""
    from facelt.config import load_config
    from facelt.jobs.train import train
    from facelt.models.components import check_component_names
    from facelt.models.eval_weights import evaluation_weights
    from facelt.openset.classify import evaluate_checkpoint
    t0 = time.time()
    out = Path(opts.out)
    # every component name of the recipe checked before any data is rendered
    size = check_component_names(load_config(opts.recipe, opts.recipe_overrides())).data.image_size
    src = sample_training_set(out, opts.identities, opts.seed, size)                     # 1.
    evd, unseen = write_eval_sets(out, src, opts.seed, size)                             # 2.
    cfg = load_config(opts.recipe, [f"data.root={src.folder}",
                                    f"data.test={(evd / 'test').resolve()}",
                                    f"data.open={(evd / 'open').resolve()}",
                                    *opts.recipe_overrides()])
    _step("training stage 1 (plain) and stage 2 (OLTR)")                                 # 3.
    train(cfg, [1, 2], out / "train", resume=True)
    cls = {s: evaluate_checkpoint(evaluation_weights(out / "train" / f"stage{s}"),  # no val: last
                                  out / f"classify_stage{s}", data=cfg.data) for s in (1, 2)}
    _step("face verification on unseen SYNTHETIC identities; ONNX export of stage 2")    # 4.
    ver = verify_and_export(out, evd / "verification.bin", cfg.data.image_size)
    mf = megaface_identification(out, src, evd, unseen, opts, size)                      # 5.
    table = demo_face_table(out, src, evd, opts, mf)                                     # 6.
    report = write_demo_summary(out, src.manifest, cls, mf, time.time() - t0, ver,       # 7.
                                table)
    _step(f"done in {time.time() - t0:.0f} s. Report: {report}")
    return report


def sample_training_set(out: Path, identities: int, seed: int, size: int) -> DemoSource:
    """Step 1: ``OUT/source/train`` (a long-tailed SYNTHETIC source of ``identities``) and
    ``OUT/ms1m_lt`` (the MS1M-LT rule applied to it, half its images expected)."""
    from pipelines.ms1m_lt import prepare_ms1m_lt
    from pipelines.synthetic_faces import long_tail_counts, write_synthetic_rec
    src = out / "source" / "train"
    manifest_path = Path(f"{src}.manifest.json")
    if not manifest_path.exists():
        _step(f"rendering {identities} SYNTHETIC identities (long-tailed source)")
        counts = long_tail_counts(identities, max_count=160, min_count=4, alpha=1.1, seed=seed)
        write_synthetic_rec(src, counts, seed=seed, size=size)
    rendered = json.loads(manifest_path.read_text())
    if list(rendered.get("image_size", [size, size])) != [size, size]:
        from facelt.errors import OutputError
        raise OutputError(f"{out} holds a demo rendered at {rendered['image_size'][0]} px, this run "
                          f"asks for {size} px: choose another --out")
    source_counts = np.asarray(rendered["counts"])
    lt_dir = out / "ms1m_lt"
    if not (lt_dir / "manifest.json").exists():
        _step("sampling the long-tailed training set with the MS1M-LT rule")
        prepare_ms1m_lt(src, lt_dir, seed=seed, target_images=0.5 * source_counts.sum())
    manifest = json.loads((lt_dir / "manifest.json").read_text())
    _step(f"MS1M-LT-style set: {manifest['totals']['images']} images, "
          f"{manifest['totals']['identities']} identities (from {int(source_counts.sum())} / "
          f"{len(source_counts)})")
    return DemoSource(lt_dir, source_counts, manifest,
                      np.asarray(manifest["identities"]["source_label"]))


def write_eval_sets(out: Path, src: DemoSource, seed: int, size: int) -> tuple[Path, np.ndarray]:
    """Step 2: ``OUT/eval_sets/{test,open}`` (new images of the known identities; unseen
    identities, label -1) and ``verification.bin`` (identities in neither the source nor the
    open set). Returns the folder and the unseen identities."""
    from pipelines.synthetic_faces import synthetic_probes, write_plain_rec
    from pipelines.synthetic_verification import write_synthetic_verification_bin
    evd = out / "eval_sets"
    n_source = len(src.source_counts)
    unseen = np.arange(n_source, n_source + UNSEEN_IDENTITIES)
    if not (evd / "open.idx").exists():
        imgs, ids = synthetic_probes(src.kept_source, TEST_IMAGES, seed=seed, size=size)
        write_plain_rec(evd / "test", imgs, np.searchsorted(src.kept_source, ids))
        imgs, _ = synthetic_probes(unseen, TEST_IMAGES, seed=seed, size=size)
        write_plain_rec(evd / "open", imgs, np.full(len(imgs), -1))
    vbin = evd / "verification.bin"
    if not vbin.exists():
        first = n_source + len(unseen)
        write_synthetic_verification_bin(vbin, np.arange(first, first + VERIFY_IDENTITIES),
                                         VERIFY_PAIRS, seed=seed, size=size)
    return evd, unseen


def verify_and_export(out: Path, vbin: Path, image_size: int) -> dict:
    """Step 4: verification of the stage-1 and stage-2 checkpoints and of the stage-2 ONNX
    export (written to ``out/model.onnx`` unless newer than the checkpoint) on ``vbin``; the
    results also go to ``out/verification/report.json``."""
    from facelt.faces.onnx_io import OnnxEmbedder, compare_with_torch, export_onnx
    from facelt.faces.verification import VerificationSet
    from facelt.features.embed import embedder_for_checkpoint
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.parallel.process import pick_device
    vs = VerificationSet.load(vbin, image_size)  # decoded once for the three models
    dev = pick_device("auto")
    results = {}
    for s in (1, 2):
        ck = out / "train" / f"stage{s}" / "checkpoint.pt"
        net, ncfg, _ = net_from_checkpoint(ck, dev)
        results[f"stage{s}"] = vs.evaluate_model(embedder_for_checkpoint(net, ncfg, dev), dev, 256)
    model = out / "model.onnx"
    if not model.exists() or model.stat().st_mtime_ns < ck.stat().st_mtime_ns:
        export_onnx(net, model, image_size=image_size, channels=ncfg.data.channels)
    min_cos = compare_with_torch(model, net, image_size)
    results["onnx"] = vs.evaluate_model(OnnxEmbedder(model), batch_size=256)
    from facelt.faces.insightface_route import insightface_route_warning
    report = {"set": str(vbin), "pairs": vs.pairs, "positive": int(vs.issame.sum()),
              "identities": VERIFY_IDENTITIES, "onnx_model": str(model),
              "onnx_min_cosine": min_cos, "results": results,
              "insightface_get_model": (insightface_route_warning(image_size, ncfg.data.channels)
                                        or "ArcFaceONNX (a recognition model)")}
    write_json(out / "verification" / "report.json", report)
    return report


def write_probes(evd: Path, src: DemoSource, unseen: np.ndarray, seed: int, size: int) -> Path:
    """``OUT/eval_sets/probes.{rec,idx}`` + ``probes.csv``: seen identities spread over the
    training order and unseen ones, from another image stream than the test set's (the training
    set's seed: the same identities). Returns the rec prefix."""
    from pipelines.synthetic_faces import synthetic_probes, write_plain_rec
    prefix = evd / "probes"
    if Path(f"{prefix}.idx").exists():
        return prefix
    n_known = len(src.kept_source)
    seen = src.kept_source[np.unique(np.linspace(0, n_known - 1, SEEN_PROBES).round().astype(int))]
    probe_ids = np.concatenate([seen, unseen[:UNSEEN_PROBES]])
    imgs, ids = synthetic_probes(probe_ids, PROBE_IMAGES, seed=seed, size=size, stream=2)
    write_plain_rec(prefix, imgs, ids)
    known = set(src.kept_source.tolist())
    with atomic_path(evd / "probes.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity", "seen_in_training", SYNTHETIC_GROUP])
        for i, ident in enumerate(ids):
            w.writerow([f"probe/{ident}/{i}.jpg", int(ident), "yes" if ident in known else "no",
                        synthetic_group(int(ident))])
    return prefix


def megaface_identification(out: Path, src: DemoSource, evd: Path, unseen: np.ndarray,
                            opts: DemoOptions, size: int) -> dict:
    """Step 5: probes, SYNTHETIC distractors, stage-2 features of them and of the training set
    (``OUT/features``), and the MegaFace protocol at 10 / 100 / 1,000 distractors
    (``OUT/megaface``). Returns the evaluation's report."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    from eval_megaface.report import write_report
    from facelt.data.rec_dataset import RecordDataset
    from facelt.features.extract import extract_checkpoint_features
    from pipelines.synthetic_faces import write_synthetic_distractors
    feats = out / "features"
    probes_prefix = write_probes(evd, src, unseen, opts.seed, size)
    dist_prefix = out / "distractors" / "train"
    if not Path(f"{dist_prefix}.manifest.json").exists():
        _step(f"rendering {opts.distractors} SYNTHETIC distractors")
        write_synthetic_distractors(dist_prefix, opts.distractors, seed=opts.seed, size=size)
    ck2 = out / "train" / "stage2" / "checkpoint.pt"
    for name, prefix in (("probes", probes_prefix), ("distractors", dist_prefix),
                         ("train", src.folder / "train")):
        ds = RecordDataset(prefix, train=False)  # reused when made from this checkpoint
        extract_checkpoint_features(ck2, ds, [f"{prefix}#{int(k)}" for k in ds.keys],
                                    feats / f"{name}.npy", batch_size=256)
    _step("MegaFace protocol: galleries of 10, 100 and 1,000 distractors")
    sizes = gallery_sizes(opts.distractors)
    mf = run_evaluation(MegaFaceEvalConfig(
        gallery_sizes=sizes, probe_features=feats / "probes.npy", probe_list=evd / "probes.csv",
        distractor_features=feats / "distractors.npy", train_features=feats / "train.npy",
        seed=opts.seed))
    mf.setdefault("meta", {})["stage"] = 2  # features of the stage-2 model
    write_report(mf, out / "megaface")
    return mf


#: the demo's MegaFace gallery sizes (those up to --distractors)
GALLERY_SIZES = (10, 100, 1000)


def gallery_sizes(distractors: int) -> list[int]:
    return [s for s in GALLERY_SIZES if s <= distractors]


def demo_face_table(out: Path, src: DemoSource, evd: Path, opts: DemoOptions, mf: dict
                    ) -> dict:
    """Step 6: the face table's rows (:func:`facelt.jobs.face_table.megaface_row`, at the first
    gallery size): ``plain`` from the stage-1 checkpoint's features (``OUT/face_table/plain``),
    ``oltr`` from step 5's stage-2 report (the same numbers as ``OUT/megaface``)."""
    from facelt.jobs.face_table import FaceInputs, checkpoint_megaface, megaface_row
    _step("face table: the MegaFace protocol on the stage-1 (plain) features")
    inputs = FaceInputs(probes=evd / "probes", probe_list=evd / "probes.csv",
                        distractors=out / "distractors" / "train", train=src.folder / "train",
                        gallery_sizes=tuple(gallery_sizes(opts.distractors)), verification=(),
                        ijb_root=None, ijb_target="IJBC", seed=opts.seed, batch_size=256)
    plain = checkpoint_megaface(out / "train" / "stage1" / "checkpoint.pt", inputs,
                                out / "face_table" / "plain", log=_step)
    return {"plain": megaface_row(plain), "oltr": megaface_row(mf)}
