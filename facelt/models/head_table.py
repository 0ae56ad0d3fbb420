"""The one table of classifier heads: name -> factory ``(in_dim, num_classes, stage_cfg) -> Head``.

``StageConfig.head`` takes its allowed names from :data:`HEAD_NAMES`; :func:`build_head` is the only
place a head name is interpreted. What a head needs from the trainer (centroids, class counts, the
centroid loss, unused-parameter search under DDP) is declared on the head class itself
(:class:`facelt.models.heads.Head`), never looked up by name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from facelt.errors import ConfigError
from facelt.models.fslwf import FSLwFHead
from facelt.models.heads import CosineHead, Head, LinearHead, LWSHead, MarginHead, MetaEmbeddingHead

if TYPE_CHECKING:  # the config imports this table for its names
    from facelt.config import StageConfig

HeadFactory = Callable[[int, int, "StageConfig"], Head]

HEADS: dict[str, HeadFactory] = {
    "linear": lambda dim, k, st: LinearHead(dim, k),
    "cosine": lambda dim, k, st: CosineHead(dim, k, scale=st.cosine.scale),
    "meta": lambda dim, k, st: MetaEmbeddingHead(dim, k, reach_scale=st.meta.reach_scale,
                                                 cos_scale=st.cosine.scale),
    "arcface": lambda dim, k, st: MarginHead(dim, k, kind="arcface", s=st.margin.s, m=st.margin.m),
    "cosface": lambda dim, k, st: MarginHead(dim, k, kind="cosface", s=st.margin.s, m=st.margin.m),
    "lws": lambda dim, k, st: LWSHead(dim, k),
    "fslwf": lambda dim, k, st: FSLwFHead(dim, k, novel_max_count=st.fslwf.novel_max_count,
                                          fake_novel_prob=st.fslwf.fake_novel_prob),
}

HEAD_NAMES: tuple[str, ...] = tuple(HEADS)


def build_head(st: "StageConfig", in_dim: int, num_classes: int) -> Head:
    """The head named by ``st.head``."""
    try:
        factory = HEADS[st.head]
    except KeyError:
        raise ConfigError(f"unknown head {st.head!r} (known: {', '.join(HEAD_NAMES)})") from None
    return factory(in_dim, num_classes, st)
