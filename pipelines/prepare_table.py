"""The datasets ``facelt prepare`` builds: one :class:`PrepareEntry` a benchmark in
:data:`PREPARE_TABLE` (its name, what ``--source`` is, the function that builds it). The CLI
takes its ``--dataset`` choices and help from this table; adding a dataset is one entry here
beside its pipeline module. The builders import their pipeline when called, so reading the
table costs nothing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

__all__ = ["PrepareRequest", "PrepareEntry", "PREPARE_TABLE", "ms1m_source_prefix"]


@dataclass(frozen=True)
class PrepareRequest:
    """What ``facelt prepare`` was asked for: ``source`` data, ``out`` folder, sampling ``seed``,
    ``target_images`` (MS1M-LT; None: the paper's), ``splits`` (the public OLTR lists),
    ``train_list`` (ImageNet-LT: the official ``ImageNet_LT_train.txt``, taken instead of a
    rebuild)."""

    out: str
    source: Optional[str] = None
    seed: int = 0
    target_images: Optional[float] = None
    splits: Optional[str] = None
    train_list: Optional[str] = None


@dataclass(frozen=True)
class PrepareEntry:
    """One dataset: ``source`` says what ``--source`` names (help text), ``needs_source`` whether
    it must be given (unless ``--train-list`` is, where ``takes_train_list``), ``build`` makes the
    split and returns its summary."""

    name: str
    source: str
    needs_source: bool
    build: Callable[[PrepareRequest], dict]
    takes_train_list: bool = False


def ms1m_source_prefix(source: str) -> str:
    """The insightface rec prefix ``--source`` names: a folder (its ``train``), ``X.rec`` /
    ``X.idx`` (``X``), or the prefix itself."""
    s = Path(source)
    if s.is_dir():
        return str(s / "train")
    return str(s.with_suffix("")) if s.suffix in (".rec", ".idx") else source


def _ms1m_lt(req: PrepareRequest) -> dict:
    from pipelines.ms1m_lt import PAPER_TARGET_IMAGES, prepare_ms1m_lt
    result = prepare_ms1m_lt(ms1m_source_prefix(req.source), req.out, seed=req.seed,
                             target_images=req.target_images or PAPER_TARGET_IMAGES)
    return result.get("totals", result)


def _imagenet_lt(req: PrepareRequest) -> dict:
    from pipelines.imagenet_lt import prepare_imagenet_lt, use_official_train_list
    if req.train_list:
        return use_official_train_list(req.train_list, req.out)
    return prepare_imagenet_lt(req.source, req.out, seed=req.seed, splits_dir=req.splits)


def _places_lt(req: PrepareRequest) -> dict:
    from pipelines.places_lt import prepare_places_lt
    return prepare_places_lt(req.source, req.out, seed=req.seed, splits_dir=req.splits)


def _fashion_lt(req: PrepareRequest) -> dict:
    from pipelines.fashion_lt import DEFAULT_SOURCE, prepare_fashion_lt
    return prepare_fashion_lt(req.source or DEFAULT_SOURCE, req.out, seed=req.seed)


def _demo(req: PrepareRequest) -> dict:
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    return make_demo_dataset(req.out, DemoSpec(seed=req.seed))


PREPARE_TABLE: dict[str, PrepareEntry] = {e.name: e for e in (
    PrepareEntry("ms1m_lt", "sample MS1M-LT from an insightface rec (--source PREFIX or the "
                            "folder holding train.rec)", True, _ms1m_lt),
    PrepareEntry("imagenet_lt", "take the official ImageNet_LT_train.txt (--train-list FILE, "
                                "recognised by its git blob hash: the published split), or, as a "
                                "fallback that is NOT the official split, draw a Pareto "
                                "long-tailed train list (+ val) from a class-folder train "
                                "directory (--source)", True, _imagenet_lt,
                 takes_train_list=True),
    PrepareEntry("places_lt", "NOT needed for the benchmark (its four official lists ship with "
                              "facelt): draws a NEW Pareto long-tailed train list (+ val) from a "
                              "class-folder train directory, for other seeds or ablations; not "
                              "comparable with published numbers", True, _places_lt),
    PrepareEntry("fashion_lt", "the real Fashion-MNIST-LT check set from the IDX files", False,
                 _fashion_lt),
    PrepareEntry("demo", "the generated demo lists", False, _demo),
)}

