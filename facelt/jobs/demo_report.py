"""The demo's top-level report: ``OUT/demo_summary.json`` (what the demo measured) and
``OUT/report.md`` written from it (:func:`write_demo_report`, also what ``facelt report OUT``
calls)."""
from __future__ import annotations

from pathlib import Path

from facelt.utils.io import write_json, write_text

__all__ = ["SUMMARY_NAME", "write_demo_summary", "write_demo_report", "face_table_lines"]

#: what the top-level report.md is made from (``facelt report OUT`` rebuilds it from this)
SUMMARY_NAME = "demo_summary.json"


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


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
    if ver.get("insightface_get_model"):
        lines += [f"insightface's `model_zoo.get_model` on it: {ver['insightface_get_model']}"
                  + ("" if ver["insightface_get_model"].startswith("ArcFaceONNX")
                     else " (`facelt demo --face-size 112` trains a model it routes)") + ".", ""]
    return lines


def _previous_summary(path: Path) -> dict:
    """An earlier run's summary, or ``{}`` when there is none or it is not one (it is replaced)."""
    from facelt.errors import DataError
    from facelt.utils.structure import read_json_file
    if not path.is_file():
        return {}
    try:
        previous = read_json_file(path, "demo summary")
    except DataError:
        return {}
    if not isinstance(previous, dict) or type(previous.get("total_seconds")) not in (int, float):
        return {}
    return previous


def write_demo_summary(out: Path, manifest: dict, cls: dict, mf: dict, seconds: float,
                       ver: dict | None = None, face_table: dict | None = None) -> Path:
    """Record the demo's results in ``OUT/demo_summary.json`` and write ``OUT/report.md`` from it.
    The total time is the first complete run's: a rerun (which skips finished steps) records its
    own time beside it and never replaces it."""
    from facelt.openset.reporting import round_floats
    path = Path(out) / SUMMARY_NAME
    previous = _previous_summary(path)
    summary = {
        "manifest": {"totals": manifest["totals"], "C": manifest["C"], "shots": manifest["shots"]},
        "classify": {str(s): {k: cls[s][k] for k in ("closed_set", "open_set", "shot_rule",
                                                     "weights") if k in cls[s]}
                     for s in (1, 2)},
        "megaface": {"results": [{k: r[k] for k in ("gallery", "rank1", "trials")}
                                 for r in mf.get("results", [mf])],
                     "pseudo_shots": mf.get("pseudo_shots") or {}},
        "verification": ver,
        **({"face_table": {m: {k: row[k] for k in ("many", "few", "one", "zero", "full",
                                                    "groups", "gallery")}
                           for m, row in face_table.items()}} if face_table else {}),
        "total_seconds": previous.get("total_seconds", round(seconds, 1)),
        "last_run_seconds": round(seconds, 1),
    }
    write_json(path, round_floats(summary))
    return write_demo_report(out)


def write_demo_report(out: Path) -> Path:
    """``OUT/report.md`` from ``OUT/demo_summary.json`` (also what ``facelt report OUT`` calls)."""
    from facelt.openset.report_checks import check_demo_summary
    from facelt.utils.structure import read_json_file
    path = Path(out) / SUMMARY_NAME
    summary = check_demo_summary(read_json_file(path, "demo summary"), path)
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
    lines += [""]
    if cls[2].get("shot_rule"):
        lines += [f"Shot buckets: {cls[2]['shot_rule']}.", ""]
    if cls[2].get("weights"):
        lines += [f"Weights: stage 1 {cls[1].get('weights', '?')}, stage 2 {cls[2]['weights']}.",
                  ""]
    lines += ["Per-class accuracy and threshold sweep: "
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
              ""]
    if summary.get("face_table"):
        lines += face_table_lines(summary["face_table"])
    lines += [ "Values in %.", "", f"Total time: {total:.0f} s" +
              (f" (the first complete run; the last rerun took {last:.0f} s)." if last != total else "."),
              ""]
    report = Path(out) / "report.md"
    write_text(report, "\n".join(lines))
    return report


def face_table_lines(table: dict) -> list[str]:
    """The face table (the OLTR paper's Table 4, left layout): one row per method; rank-1 per
    pseudo-shot bucket, in full and per group value, at the first gallery size."""
    from facelt.jobs.face_table import row_columns
    methods = list(table)
    cols = list(dict.fromkeys(c for m in methods for c in row_columns(table[m])))
    names = {"plain": "plain (stage 1)", "oltr": "OLTR (stage 2)"}
    gallery = table[methods[0]]["gallery"]
    lines = ["## Face table (the OLTR paper's Table 4, left layout)", "",
             f"MegaFace rank-1 at {gallery} SYNTHETIC distractors. Buckets: the probe's "
             "pseudo-shots, training images with cosine > 0.7 to it (many > 5, few 2..5, one 1, "
             "zero 0); full: every probe; A / B: the SYNTHETIC binary attribute "
             "`synthetic_group` of the probe list.", "",
             "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        cells = row_columns(table[m])
        lines.append(f"| {names.get(m, m)} | " + " | ".join(_fmt(cells.get(c)) for c in cols)
                     + " |")
    return lines + [""]
