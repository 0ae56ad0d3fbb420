"""``facelt compare``: the OLTR paper's baselines and later long-tail methods on one engine.

A *method* is a YAML file ``METHODS_DIR/<name>.yaml`` (see ``configs/methods``)::

    train: stage1 | stage2 | reuse     # own stage-1 run | stage 2 on plain's stage 1 (on a stage 1
                                       # of its own when its config changes stage 1) | plain's model
    posthoc: none | tau_norm | logit_adjust | openmax
    posthoc_args: {...}                # taus / tau / tailsize, alpha_rank, distance
    score: msp | energy | max_logit | openmax
    score_args: {T: 1.0}               # energy temperature
    config: {stage1: {...}}            # overlay on the base recipe (checked like any config)
    by_recipe: {places_lt: {...}}      # an overlay for the recipe of that name only

Every method's config is ``recipe + plain's overlay + its overlay + --set``; all of them share the
data, backbone and sampler of the recipe.  Training goes to ``OUT/runs/<method>/stageN``; a
complete checkpoint there is reused (after checking it was trained with the same recipe), an
incomplete one is continued with ``resume``.  ``reuse`` methods (post-hoc steps and open-set
scores) evaluate plain's checkpoint: it is trained once.

Evaluation, identical for all: the embedding ``v`` of every test / open (/ val / train) image is
collected once per checkpoint (``N x d``, float32, memory-mapped under ``OUT/.cache`` and deleted
at the end); logits are recomputed from ``v`` through the head chunk by chunk, so no ``N x K``
array is ever held (at K = 74.5K identities a chunk of 1024 rows is 300 MB of float32).  From each
chunk the method keeps only its prediction and open-set score.  Tables: closed-set top-1
(many/medium/few/overall) on test; open-set accuracy with rejection (same buckets) and the
F-measure on test + open; plus the threshold-free known-vs-open AUROC.

Open-set thresholds: probability scores (``msp``, ``openmax``) use ``eval.threshold`` as in the
paper; unbounded scores (``energy``, ``max_logit``) get the threshold that accepts, on the *val*
split's known images, the same fraction as the same model's MSP at ``eval.threshold`` (so they are
compared at the same operating point); ``tau_norm`` picks tau on val accuracy. Beside its own
score, every method's ``open_set`` has ``best_f`` (the best-F threshold on test + open: an oracle
point) and ``by_score`` (MSP, energy and max-logit on the same logits: :mod:`facelt.compare.scores`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facelt.compare.collect import Collected, chunk_logits, collect_logits
from facelt.compare.evaluator import MethodEvaluator, Outputs
from facelt.compare.methods import BASE_METHOD, MethodSpec, load_method, method_config
from facelt.compare.report import COLUMNS, bar_chart, markdown_table, method_report
from facelt.compare.runs import ensure_trained, recipe_diff, run_dir
from facelt.compare.scores import best_f, score_variants
from facelt.compare.tables import (ResultTable, TableEvaluation, chart_name, table_chart,
                                   table_markdown)
from facelt.data.build import Split, build_split
from facelt.data.shots import shot_rule_text
from facelt.errors import ConfigError, FaceltError
from facelt.openset.metrics import auroc, matched_threshold
from facelt.utils.io import write_json, write_text

__all__ = ["compare", "load_method", "method_config", "method_report", "Outputs", "auroc",
           "matched_threshold", "recipe_diff", "run_dir", "ensure_trained", "collect_logits",
           "chunk_logits", "Collected", "MethodEvaluator", "MethodSpec", "markdown_table",
           "bar_chart", "ResultTable", "TableEvaluation", "write_report_files"]


def _needs(spec: MethodSpec) -> tuple[bool, bool]:
    """(val, train) embeddings needed by ``spec``."""
    val = spec.posthoc == "tau_norm" or spec.score in ("energy", "max_logit")
    return val, spec.posthoc == "openmax"


def compare(recipe: str | Path, methods: list[str], out: str | Path, methods_dir: str | Path,
            overrides: list[str] | tuple[str, ...] = (), resume: bool = False,
            log: Callable[[str], None] = print, same_epochs: bool = False,
            weights: str = "auto", tables: Optional[TableEvaluation] = None) -> dict:
    """Train or reuse every method, evaluate all with one protocol, write the report files.

    ``same_epochs``: add the ``plain_same_epochs`` row (plain trained as long as both OLTR stages,
    :func:`facelt.compare.seeds.same_epochs_method`). ``weights``: evaluate each run's best-on-val
    weights (``best``: ``best.pt``, as the reference does), its last epoch (``last``:
    ``checkpoint.pt``) or ``auto`` (best where the run has a val split, else the last epoch;
    :func:`facelt.models.eval_weights.evaluation_weights`). ``tables``: a further evaluation of
    the checkpoints (:data:`facelt.compare.tables.TableEvaluation`, e.g. the face table of
    :func:`facelt.jobs.face_table.face_tables`); its tables go to ``report.json`` (``tables``),
    ``report.md`` and a chart each. A recipe without ``data.test`` is judged by them alone."""
    from facelt.compare.seeds import SAME_EPOCHS_METHOD, same_epochs_method
    from facelt.models.checkpoint import net_from_checkpoint
    from facelt.models.eval_weights import WEIGHT_CHOICES, evaluation_weights, weights_label
    from facelt.parallel.process import pick_device
    if not methods:
        raise ConfigError("--methods: give at least one method")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {','.join(methods)}")
    out = Path(out)
    recipe = Path(recipe)
    specs = {m: load_method(m, Path(methods_dir)) for m in methods}
    base = specs.get(BASE_METHOD) or load_method(BASE_METHOD, Path(methods_dir))
    if base.train != "stage1":
        raise ConfigError(f"{base.source}: the base method must train stage1")
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    extra: dict[str, list[str]] = {}
    if same_epochs and SAME_EPOCHS_METHOD not in specs:
        from facelt.config import load_config
        recipe_cfg = load_config(recipe, list(overrides))
        specs[SAME_EPOCHS_METHOD] = same_epochs_method(base, recipe_cfg)
        # after --set, which may set stage1.epochs for every method
        extra[SAME_EPOCHS_METHOD] = [
            f"stage1.epochs={recipe_cfg.stage1.epochs + recipe_cfg.stage2.epochs}"]
        methods = list(methods) + [SAME_EPOCHS_METHOD]
    configs = {m: method_config(recipe, s, base, list(overrides) + extra.get(m, []))
               for m, s in specs.items()}
    base_cfg = configs.get(BASE_METHOD) or method_config(recipe, base, None, overrides)

    # 1. training: plain first (others start from it or reuse it), each once
    needs_base = any(s.train in ("stage2", "reuse") for s in specs.values())
    ckpts: dict[str, Path] = {}
    if needs_base or BASE_METHOD in specs:
        ckpts[BASE_METHOD] = ensure_trained(base, base_cfg, out, resume, log)
    for m, s in specs.items():
        if m == BASE_METHOD:
            continue
        ckpts[m] = (ckpts[BASE_METHOD] if s.train == "reuse"
                    else ensure_trained(s, configs[m], out, resume, log, base_cfg=base_cfg))
    for m, c in ckpts.items():
        try:
            ckpts[m] = evaluation_weights(c.parent, weights)
        except FaceltError as exc:
            raise FaceltError(f"{m}: {exc}") from None

    # 2. evaluation, one protocol
    ev = base_cfg.eval
    data = base_cfg.data
    device = pick_device(base_cfg.device)
    splits: dict[str, Optional[Split]] = {
        "test": build_split(data, "test", train=False, check_files=True),
        "open": build_split(data, "open", train=False, check_files=True),
        "val": build_split(data, "val", train=False, check_files=True),
        "train": build_split(data, "train", train=False, check_files=True)}
    more = (tables({m: ckpts[m] for m in methods}, base_cfg, out, log)
            if tables is not None else [])
    if splits["test"] is None and not more:
        raise FaceltError("data.test is not set: nothing to evaluate")
    results: dict[str, dict] = {}
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=".cache-", dir=out))
    try:
        collected: dict[tuple[Path, str], Collected] = {}
        nets: dict[Path, tuple] = {}

        def get(ckpt: Path, split: str) -> Optional[Collected]:
            if splits[split] is None:
                return None
            key = (ckpt, split)
            if key not in collected:
                net = nets[ckpt][0]
                folder = cache / f"{len(collected)}"
                folder.mkdir()
                collected[key] = collect_logits(net, splits[split].dataset, device,
                                                ev.batch_size, data.num_workers,
                                                folder=folder, name=split)
            return collected[key]

        for m in methods if splits["test"] is not None else []:
            spec, ckpt = specs[m], ckpts[m]
            if ckpt not in nets:
                nets[ckpt] = net_from_checkpoint(ckpt, device)
            net, _, state = nets[ckpt]
            counts = np.asarray(state["class_counts"], dtype=np.int64)
            need_val, need_train = _needs(spec)
            val = get(ckpt, "val") if need_val else None
            val_all = get(ckpt, "val")  # the val-matched thresholds of the other scores
            evaluator = MethodEvaluator(spec, net, counts, device)
            evaluator.prepare(val, get(ckpt, "train") if need_train else None)
            test = get(ckpt, "test")
            if (test.labels >= len(counts)).any():
                raise FaceltError(f"test split has labels >= {len(counts)} (the checkpoint's "
                                  f"classes)")
            open_c = get(ckpt, "open")
            threshold = ev.threshold
            if spec.score in ("energy", "max_logit"):
                if val is None:
                    raise ConfigError(f"{spec.source}: the {spec.score} threshold is calibrated "
                                      f"on val: set data.val")
                known = val.labels >= 0
                accept = float(np.mean(evaluator.msp_outputs(val)[known] >= ev.threshold))
                threshold = matched_threshold(evaluator.outputs(val).score[known], accept)
                evaluator.info["val_accept_fraction"] = accept
            rep = method_report(evaluator.outputs(test), test.labels,
                                evaluator.outputs(open_c) if open_c else None, counts,
                                threshold, ev.many, ev.few, ev.shot_rule)
            rep["open_set"]["best_f"] = best_f(evaluator.outputs(test), test.labels,
                                               evaluator.outputs(open_c) if open_c else None,
                                               spec.score, list(ev.sweep))
            rep["open_set"]["by_score"] = score_variants(evaluator, test, open_c, val_all,
                                                         ev.threshold)
            rep.update(checkpoint=str(ckpt), weights=weights_label(state, ckpt),
                       train=spec.train, posthoc=spec.posthoc,
                       score=spec.score, details=evaluator.info, method_file=str(spec.source))
            results[m] = rep
            log(f"{m}: closed overall {rep['closed_set']['overall']:.4f}, "
                f"F {rep['open_set']['f_measure']:.4f}")
    finally:
        collected.clear()
        nets.clear()
        shutil.rmtree(cache, ignore_errors=True)
    report = {
        "recipe": str(recipe), "methods": results, "weights": weights,
        "columns": [f"{a}.{b}" for a, b in COLUMNS],
        "threshold": ev.threshold,
        "protocol": ("closed: top-1 on test; open: test + open, rejected when score < threshold; "
                     "msp/openmax at eval.threshold, energy/max_logit at the val-matched "
                     "operating point of MSP; auroc: known vs open by the score; best_f: the "
                     "best-F threshold on test + open (an oracle point); by_score: every logit "
                     "score on the same logits"),
        "shot_rule": shot_rule_text(ev.shot_rule, ev.many, ev.few) + "; bucket accuracy = "
                     "mean of per-class accuracies; overall = accuracy over known test images",
    }
    if more:
        report["tables"] = {t.name: t.to_dict() for t in more}
    from facelt.openset.reporting import round_floats
    report = round_floats(report)
    write_report_files(out, report)
    return report


def write_report_files(out: Path, report: dict) -> None:
    """``report.json``, ``report.md`` (the classification table when there are results, then
    every extra table) and the charts of one comparison."""
    write_json(out / "report.json", report)
    extra = report.get("tables") or {}
    md = markdown_table(report) if report["methods"] or not extra else (
        f"# facelt compare ({report['recipe']})\n\n")
    for name, table in extra.items():
        md += "\n".join(table_markdown(name, table))
        table_chart(table, out / chart_name(name))
    write_text(out / "report.md", md)
    if report["methods"]:
        bar_chart(report, out / "report.png")
