"""What each saved result must hold before a report is written from it (``facelt report DIR``,
a demo rerun, ``compare --seeds``): the structure of a classification ``report.json``, a MegaFace
``report.json`` (``eval_megaface.report.write_report`` reads it), a comparison's (and a seeds
summary's) ``report.json`` and the demo's ``demo_summary.json``.

Each ``check_*`` function returns the report unchanged or raises a
:class:`~facelt.errors.DataError` naming the file and the key (``per_class[3].train_count``) and
what was expected, before anything is written (:mod:`facelt.utils.structure`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from facelt.errors import DataError
from facelt.utils.structure import (ANY, INTEGER, NUMBER, Fields, ListOf, MapOf, check_structure,
                                    nullable)

__all__ = ["check_classification_report", "check_megaface_report", "check_compare_report",
           "check_seeds_report", "check_demo_summary", "report_kind"]

_PCT = nullable(NUMBER)
_BUCKETS = ("many", "medium", "few")
_CLOSED = Fields({k: _PCT for k in ("overall",) + _BUCKETS})
_OPEN = Fields({k: _PCT for k in ("overall",) + _BUCKETS + ("f_measure",)})

CLASSIFICATION = Fields(
    {"closed_set": _CLOSED, "open_set": _OPEN, "threshold": NUMBER},
    {"per_class": ListOf(Fields({"class": ANY, "train_count": INTEGER},
                                {"accuracy": _PCT, "name": ANY})),
     "threshold_sweep": ListOf(Fields({"threshold": NUMBER},
                                      {k: _PCT for k in ("f_measure", "closed_accuracy_known",
                                                         "open_rejection")}))})

#: MegaFace pseudo-shot buckets (eval_megaface.pseudo_shots.BUCKETS)
MEGAFACE_BUCKETS = ("many", "few", "one", "zero")
_MF_RESULT = Fields(
    {"gallery": INTEGER, "trials": INTEGER},
    {"cmc": nullable(ListOf(NUMBER, min_len=10)), "rank1": _PCT,
     "approx": nullable(MapOf(_PCT)),
     "pseudo_shots": nullable(Fields({b: Fields({"rank1": _PCT, "probes": ANY})
                                      for b in MEGAFACE_BUCKETS})),
     "groups": MapOf(MapOf(_PCT))})
MEGAFACE = Fields({}, {"meta": Fields({}), "results": ListOf(_MF_RESULT)})

_METHOD = Fields({"closed_set": Fields({}, {k: _PCT for k in ("overall",) + _BUCKETS}),
                  "open_set": Fields({}, {k: _PCT for k in ("overall", "f_measure", "auroc")
                                          + _BUCKETS})})
COMPARE = Fields({"recipe": ANY, "methods": MapOf(_METHOD), "threshold": ANY, "protocol": ANY,
                  "shot_rule": ANY})

_VER_ROW = Fields({"accuracy": NUMBER, "std": NUMBER, "threshold": NUMBER, "val": _PCT})
DEMO_SUMMARY = Fields({
    "manifest": Fields({"totals": Fields({"images": ANY, "identities": ANY}), "C": NUMBER,
                        "shots": Fields({b: ANY for b in _BUCKETS})}),
    "classify": Fields({"1": Fields({"closed_set": _CLOSED, "open_set": _OPEN}),
                        "2": Fields({"closed_set": _CLOSED, "open_set": _OPEN})}, extra=False),
    "megaface": Fields({}, {"results": ListOf(Fields({"gallery": ANY, "rank1": _PCT,
                                                      "trials": ANY})),
                            "pseudo_shots": nullable(MapOf(Fields({"rank1": _PCT,
                                                                   "probes": ANY})))}),
    "total_seconds": NUMBER, "last_run_seconds": NUMBER},
    {"verification": nullable(Fields({"pairs": INTEGER, "positive": INTEGER, "identities": ANY,
                                      "onnx_min_cosine": NUMBER,
                                      "results": Fields({k: _VER_ROW for k in
                                                         ("stage1", "stage2", "onnx")})})),
     "face_table": MapOf(Fields({**{b: nullable(_PCT) for b in ("many", "few", "one", "zero")},
                                 "full": _PCT, "groups": MapOf(MapOf(nullable(_PCT))),
                                 "gallery": INTEGER}))})


def check_classification_report(report: Any, where: Union[str, Path]) -> dict:
    """A classification ``report.json`` (``facelt classify``)."""
    return check_structure(report, CLASSIFICATION, where)


def check_megaface_report(report: Any, where: Union[str, Path]) -> dict:
    """A MegaFace ``report.json``: its results (or the report itself when it has no ``results``)
    each need ``gallery`` / ``trials``; when the first has pseudo-shots or groups, all do."""
    check_structure(report, MEGAFACE, where)
    results = report.get("results") or [report]
    if not report.get("results"):
        check_structure(report, _MF_RESULT, where)
    first = results[0]
    for i, r in enumerate(results[1:], 1):
        if first.get("pseudo_shots") and not r.get("pseudo_shots"):
            raise DataError(f"{where}: key 'results[{i}].pseudo_shots' is missing (results[0] "
                            "has pseudo-shots)")
        for column, values in (first.get("groups") or {}).items():
            if column not in (r.get("groups") or {}):
                raise DataError(f"{where}: key 'results[{i}].groups.{column}' is missing "
                                "(results[0] has it)")
    return report


def check_compare_report(report: Any, where: Union[str, Path]) -> dict:
    """A comparison's ``report.json`` (``facelt compare``, one seed)."""
    return check_structure(report, COMPARE, where)


def check_seeds_report(report: Any, where: Union[str, Path], columns: list[str]) -> dict:
    """The summary ``report.json`` of ``facelt compare --seeds``: per method, every one of
    ``columns`` (``closed.many`` ...) with its mean and std."""
    cell = Fields({"mean": _PCT, "std": _PCT})
    spec = Fields({"seeds": ListOf(ANY), "recipe": ANY, "protocol": ANY,
                   "methods": MapOf(Fields({c: cell for c in columns}))})
    return check_structure(report, spec, where)


def check_demo_summary(summary: Any, where: Union[str, Path]) -> dict:
    """The demo's ``demo_summary.json``; its MegaFace part is a result itself when it has no
    ``results``."""
    check_structure(summary, DEMO_SUMMARY, where)
    mf = summary["megaface"]
    if "results" not in mf:
        check_structure(mf, Fields({"gallery": ANY, "rank1": _PCT, "trials": ANY}),
                        f"{where} (megaface)")
    return summary


def report_kind(report: Any) -> str:
    """Which report a ``report.json`` holds: ``compare`` / ``seeds`` (``methods`` and
    ``recipe``), ``classification`` (any of its sections), ``megaface`` (``rank1`` and ``cmc``),
    or ``other`` (not one ``facelt report`` rewrites: IJB, verification ...)."""
    if not isinstance(report, dict):
        return "other"
    if "methods" in report and "recipe" in report:
        return "seeds" if "seeds" in report else "compare"
    if any(k in report for k in ("closed_set", "open_set", "per_class", "threshold_sweep")):
        return "classification"
    if "rank1" in report and "cmc" in report:
        return "megaface"
    return "other"
