"""``facelt demo``: the whole pipeline on built-in SYNTHETIC identities, no downloads, on the CPU.

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
   and a breakdown by whether the probe identity was seen in training;
6. write OUT/report.md linking everything.

Every step skips work that is already complete, so re-running after an interruption continues.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from facelt.cli.common import add_device_arg, configs_dir
from facelt.utils.io import atomic_path, write_json, write_text

#: what the top-level report.md is made from (``facelt report OUT`` rebuilds it from this)
SUMMARY_NAME = "demo_summary.json"
#: the demo's verification set: pairs, and SYNTHETIC identities never seen in training
VERIFY_PAIRS = 200
VERIFY_IDENTITIES = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on built-in synthetic data (no downloads)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="facelt_demo", help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic data, the sampling and the training")
    p.add_argument("--identities", type=int, default=80, help="SYNTHETIC source identities")
    p.add_argument("--distractors", type=int, default=2000, help="SYNTHETIC distractor images")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of configs/demo_faces.yaml (repeatable)")
    add_device_arg(p, from_recipe=True)
    p.set_defaults(func=run)


def _step(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    from facelt.utils.run_lock import lock_run_folder
    with lock_run_folder(args.out):  # one demo per --out (its training locks OUT/train too)
        return run_demo(args)


def run_demo(args: argparse.Namespace) -> int:
    """The demo's steps (the caller holds the lock of ``args.out``)."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    from eval_megaface.report import write_report
    from facelt.openset.classify import evaluate_checkpoint
    from facelt.features.extract import extract_checkpoint_features
    from facelt.config import load_config
    from facelt.data.rec_dataset import RecordDataset
    from facelt.models.components import check_component_names
    from facelt.train.trainer import train
    from pipelines.ms1m_lt import prepare_ms1m_lt
    from pipelines.synthetic_faces import (long_tail_counts, synthetic_probes,
                                           write_plain_rec, write_synthetic_distractors,
                                           write_synthetic_rec)
    from pipelines.synthetic_verification import write_synthetic_verification_bin

    t0 = time.time()
    out = Path(args.out)
    seed = args.seed
    if args.device:
        args.overrides = [*args.overrides, f"device={args.device}"]
    cfg0 = check_component_names(load_config(configs_dir() / "demo_faces.yaml", args.overrides))
    size = cfg0.data.image_size

    # 1. SYNTHETIC source and MS1M-LT-style sampling -------------------------------------------
    src = out / "source" / "train"
    if not Path(f"{src}.manifest.json").exists():
        _step(f"rendering {args.identities} SYNTHETIC identities (long-tailed source)")
        counts = long_tail_counts(args.identities, max_count=160, min_count=4, alpha=1.1, seed=seed)
        write_synthetic_rec(src, counts, seed=seed, size=size)
    source_counts = np.asarray(json.loads(Path(f"{src}.manifest.json").read_text())["counts"])
    lt_dir = out / "ms1m_lt"
    if not (lt_dir / "manifest.json").exists():
        _step("sampling the long-tailed training set with the MS1M-LT rule")
        prepare_ms1m_lt(src, lt_dir, seed=seed, target_images=0.5 * source_counts.sum())
    manifest = json.loads((lt_dir / "manifest.json").read_text())
    kept_source = np.asarray(manifest["identities"]["source_label"])
    _step(f"MS1M-LT-style set: {manifest['totals']['images']} images, "
          f"{manifest['totals']['identities']} identities (from {int(source_counts.sum())} / "
          f"{len(source_counts)})")

    # 2. evaluation sets: new images of known identities, unseen identities (open set) ----------
    evd = out / "eval_sets"
    n_known = len(kept_source)
    unseen = np.arange(len(source_counts), len(source_counts) + 12)
    if not (evd / "open.idx").exists():
        imgs, ids = synthetic_probes(kept_source, 6, seed=seed, size=size)
        labels = np.searchsorted(kept_source, ids)
        write_plain_rec(evd / "test", imgs, labels)
        imgs, _ = synthetic_probes(unseen, 6, seed=seed, size=size)
        write_plain_rec(evd / "open", imgs, np.full(len(imgs), -1))
    vbin = evd / "verification.bin"
    if not vbin.exists():  # identities after the open set's: in neither the source nor the open set
        first = len(source_counts) + len(unseen)
        write_synthetic_verification_bin(vbin, np.arange(first, first + VERIFY_IDENTITIES),
                                         VERIFY_PAIRS, seed=seed, size=size)
    overrides = [f"data.root={lt_dir}", f"data.test={(evd / 'test').resolve()}",
                 f"data.open={(evd / 'open').resolve()}", *args.overrides]
    cfg = load_config(configs_dir() / "demo_faces.yaml", overrides)

    # 3. two-stage training and open-set classification ---------------------------------------
    _step("training stage 1 (plain) and stage 2 (OLTR)")
    train(cfg, [1, 2], out / "train", resume=True)
    cls = {}
    for s in (1, 2):
        ck = out / "train" / f"stage{s}" / "checkpoint.pt"
        cls[s] = evaluate_checkpoint(ck, out / f"classify_stage{s}", data=cfg.data)

    # 4. verification of both stages, ONNX export of stage 2 ------------------------------------
    _step("face verification on unseen SYNTHETIC identities; ONNX export of stage 2")
    ver = verify_and_export(out, vbin, cfg.data.image_size)

    # 5. MegaFace-style identification with the stage-2 model ---------------------------------
    feats = out / "features"
    probes_prefix = evd / "probes"
    seen_ids = kept_source[np.unique(np.linspace(0, n_known - 1, 14).round().astype(int))]
    probe_ids = np.concatenate([seen_ids, unseen[:6]])
    if not Path(f"{probes_prefix}.idx").exists():
        # the training set's seed (same identities), another image stream than the test set's
        imgs, ids = synthetic_probes(probe_ids, 5, seed=seed, size=size, stream=2)
        write_plain_rec(probes_prefix, imgs, ids)
        with atomic_path(evd / "probes.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "identity", "seen_in_training"])
            for i, ident in enumerate(ids):
                w.writerow([f"probe/{ident}/{i}.jpg", int(ident),
                            "yes" if ident in set(kept_source.tolist()) else "no"])
    dist_prefix = out / "distractors" / "train"
    if not Path(f"{dist_prefix}.manifest.json").exists():
        _step(f"rendering {args.distractors} SYNTHETIC distractors")
        write_synthetic_distractors(dist_prefix, args.distractors, seed=seed, size=size)
    ck2 = out / "train" / "stage2" / "checkpoint.pt"
    for name, prefix in (("probes", probes_prefix), ("distractors", dist_prefix),
                         ("train", lt_dir / "train")):
        ds = RecordDataset(prefix, train=False)  # reused when made from this checkpoint
        extract_checkpoint_features(ck2, ds, [f"{prefix}#{int(k)}" for k in ds.keys],
                                    feats / f"{name}.npy", batch_size=256)
    _step("MegaFace protocol: galleries of 10, 100 and 1,000 distractors")
    sizes = [s for s in (10, 100, 1000) if s <= args.distractors]
    mf = run_evaluation(MegaFaceEvalConfig(gallery_sizes=sizes, probe_features=feats / "probes.npy",
                                   probe_list=evd / "probes.csv",
                                   distractor_features=feats / "distractors.npy",
                                   train_features=feats / "train.npy", seed=seed))
    mf.setdefault("meta", {})["stage"] = 2  # features of the stage-2 model
    write_report(mf, out / "megaface")

    # 6. one report ----------------------------------------------------------------------------
    write_demo_summary(out, manifest, cls, mf, time.time() - t0, ver)
    _step(f"done in {time.time() - t0:.0f} s. Report: {out / 'report.md'}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def verify_and_export(out: Path, vbin: Path, image_size: int) -> dict:
    """Verification of the stage-1 and stage-2 checkpoints and of the stage-2 ONNX export
    (written to ``out/model.onnx`` unless newer than the checkpoint) on ``vbin``; the results
    also go to ``out/verification/report.json``."""
    from facelt.features.embed import embedder_for_checkpoint
    from facelt.faces.onnx_io import OnnxEmbedder, compare_with_torch, export_onnx
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.parallel.process import pick_device
    from facelt.faces.verification import VerificationSet
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
    report = {"set": str(vbin), "pairs": vs.pairs, "positive": int(vs.issame.sum()),
              "identities": VERIFY_IDENTITIES, "onnx_model": str(model),
              "onnx_min_cosine": min_cos, "results": results}
    write_json(out / "verification" / "report.json", report)
    return report


def _verification_lines(ver: dict) -> list[str]:
    neg = ver["pairs"] - ver["positive"]
    lines = ["## Face verification (insightface protocol)", "",
             f"[eval_sets/verification.bin](eval_sets/verification.bin), insightface's `.bin` "
             f"format: {ver['pairs']} pairs ({ver['positive']} positive: two images of one "
             f"identity; {neg} negative: two identities) of {ver['identities']} SYNTHETIC "
             "identities never seen in training (outside the source set and the open set). "
             "Flip-sum, L2, 10 folds; accuracy = mean +- std over the folds, threshold on the "
             f"squared L2 distance. With {neg * 9 // 10} impostor pairs per training fold the FAR "
             "grid is coarser than 1e-3, so TAR@FAR=1e-3 is the TAR below the training folds' "
             "closest impostor.", "",
             "| model | accuracy | threshold | TAR@FAR=1e-3 |", "|---|---|---|---|"]
    for key, name in (("stage1", "stage 1 (plain)"), ("stage2", "stage 2 (OLTR)"),
                      ("onnx", "stage 2, ONNX (onnxruntime)")):
        r = ver["results"][key]
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} +- {100 * r['std']:.1f} | "
                     f"{r['threshold']:.2f} | {_fmt(r['val'])} |")
    lines += ["", "ONNX model: [model.onnx](model.onnx) (the stage-2 embedding network; input "
              "N x 3 x S x S RGB, `(x - 127.5) / 127.5` outside the graph); min cosine vs facelt "
              f"over 8 random images: {ver['onnx_min_cosine']:.6f}.", ""]
    return lines


def write_demo_summary(out: Path, manifest: dict, cls: dict, mf: dict, seconds: float,
                       ver: dict | None = None) -> Path:
    """Record the demo's results in ``OUT/demo_summary.json`` and write ``OUT/report.md`` from it.
    The total time is the first complete run's: a rerun (which skips finished steps) records its
    own time beside it and never replaces it."""
    from facelt.openset.reporting import round_floats
    path = Path(out) / SUMMARY_NAME
    previous = json.loads(path.read_text()) if path.is_file() else {}
    summary = {
        "manifest": {"totals": manifest["totals"], "C": manifest["C"], "shots": manifest["shots"]},
        "classify": {str(s): {"closed_set": cls[s]["closed_set"], "open_set": cls[s]["open_set"]}
                     for s in (1, 2)},
        "megaface": {"results": [{k: r[k] for k in ("gallery", "rank1", "trials")}
                                 for r in mf.get("results", [mf])],
                     "pseudo_shots": mf.get("pseudo_shots") or {}},
        "verification": ver,
        "total_seconds": previous.get("total_seconds", round(seconds, 1)),
        "last_run_seconds": round(seconds, 1),
    }
    write_json(path, round_floats(summary))
    return write_demo_report(out)


def write_demo_report(out: Path) -> Path:
    """``OUT/report.md`` from ``OUT/demo_summary.json`` (also what ``facelt report OUT`` calls)."""
    summary = json.loads((Path(out) / SUMMARY_NAME).read_text())
    manifest = summary["manifest"]
    cls = {int(s): v for s, v in summary["classify"].items()}
    mf = summary["megaface"]
    total, last = summary["total_seconds"], summary["last_run_seconds"]
    lines = ["# facelt demo report", "",
             "All images are SYNTHETIC (rendered faces, no real person).", "",
             f"Training set: {manifest['totals']['images']} images of "
             f"{manifest['totals']['identities']} identities, sampled with the MS1M-LT rule "
             f"(C = {manifest['C']:.1f}); classes with > 100 / 20..100 / < 20 images: "
             f"{manifest['shots']['many']} / {manifest['shots']['medium']} / {manifest['shots']['few']}.",
             "",
             "## Open-set classification (threshold on max softmax)", "",
             "| model | closed overall | many | medium | few | open overall | F-measure |",
             "|---|---|---|---|---|---|---|"]
    for s, name in ((1, "stage 1 (plain)"), (2, "stage 2 (OLTR)")):
        c, o = cls[s]["closed_set"], cls[s]["open_set"]
        lines.append(f"| {name} | {_fmt(c['overall'])} | {_fmt(c['many'])} | {_fmt(c['medium'])} | "
                     f"{_fmt(c['few'])} | {_fmt(o['overall'])} | {_fmt(o['f_measure'])} |")
    lines += ["", "Per-class accuracy and threshold sweep: "
              "[stage 1](classify_stage1/report.md), [stage 2](classify_stage2/report.md).", ""]
    if summary.get("verification"):
        lines += _verification_lines(summary["verification"])
    lines += ["## MegaFace-style identification (stage-2 features)", "",
              "| distractors | rank-1 | trials |", "|---|---|---|"]
    for r in mf.get("results", [mf]):
        lines.append(f"| {r['gallery']} | {_fmt(r['rank1'])} | {r['trials']} |")
    ps = mf.get("pseudo_shots") or {}
    if ps:
        lines += ["", "Pseudo-shots (training images with cosine > 0.7) at the first gallery size: " +
                  ", ".join(f"{k}: {_fmt(v['rank1'])} ({v['probes']} probes)" for k, v in ps.items())]
    lines += ["", "Full MegaFace report with CMC and bucket plots: [megaface/report.md](megaface/report.md).",
              "", "Values in %.", "", f"Total time: {total:.0f} s" +
              (f" (the first complete run; the last rerun took {last:.0f} s)." if last != total else "."),
              ""]
    report = Path(out) / "report.md"
    write_text(report, "\n".join(lines))
    return report
