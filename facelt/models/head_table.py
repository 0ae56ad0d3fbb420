"""The one table of classifier heads: name -> factory ``(in_dim, num_classes, stage_cfg) -> Head``.

``StageConfig.head`` is a plain name; :func:`build_head` is the only place a head name is
interpreted, and it refuses a name that is not in :data:`HEADS` with the config key and the known
names (``facelt.models.components.check_component_names`` does the same for a whole config before
any long work).  What a head needs from the trainer (centroids, class counts, the centroid loss,
unused-parameter search under DDP) is declared on the head class itself
(:class:`facelt.models.heads.Head`), never looked up by name.

Adding a head: write its class (a :class:`~facelt.models.heads.Head`) in its own module, give it a
config section in ``StageConfig`` if it has settings, and add one entry here.
"""
from __future__ import annotations

from typing import Callable

from facelt.config import StageConfig, check_name
from facelt.models.expert_head import MultiExpertHead
from facelt.models.fslwf import FSLwFHead
from facelt.models.normed_linear import NormedLinearHead
from facelt.models.paco import PaCoHead
from facelt.models.heads import CosineHead, Head, LinearHead, LWSHead, MarginHead, MetaEmbeddingHead

HeadFactory = Callable[[int, int, StageConfig], Head]

HEADS: dict[str, HeadFactory] = {
    "linear": lambda dim, k, st: LinearHead(dim, k),
    "cosine": lambda dim, k, st: CosineHead(dim, k, scale=st.cosine.scale),
    "meta": lambda dim, k, st: MetaEmbeddingHead(dim, k, reach_scale=st.meta.reach_scale,
                                                 cos_scale=st.cosine.scale),
    "arcface": lambda dim, k, st: MarginHead(dim, k, kind="arcface", s=st.margin.s, m=st.margin.m),
    "cosface": lambda dim, k, st: MarginHead(dim, k, kind="cosface", s=st.margin.s, m=st.margin.m),
    "lws": lambda dim, k, st: LWSHead(dim, k, train_classifier=st.lws.train_classifier,
                                      classifier_lr_factor=st.lws.classifier_lr_factor),
    "normed_linear": lambda dim, k, st: NormedLinearHead(dim, k, scale=st.normed_linear.scale),
    "ride": lambda dim, k, st: MultiExpertHead(dim, k, experts=st.experts,
                                               scale=st.normed_linear.scale),
    "paco": lambda dim, k, st: PaCoHead(dim, k, projection_dim=st.paco.projection_dim,
                                        mlp=st.paco.mlp, queue_size=st.paco.queue_size),
    "fslwf": lambda dim, k, st: FSLwFHead(dim, k, novel_max_count=st.fslwf.novel_max_count,
                                          fake_novel_prob=st.fslwf.fake_novel_prob),
}


def check_head_name(name: str, key: str = "stage.head", where: str = "") -> str:
    """``name`` when :data:`HEADS` has it, else a ConfigError naming ``key`` and the known heads."""
    return check_name(name, HEADS, key, "head", where)


def build_head(st: StageConfig, in_dim: int, num_classes: int, key: str = "stage.head") -> Head:
    """The head named by ``st.head`` (``key``: how an unknown name's error calls the setting,
    e.g. ``stage2.head``)."""
    return HEADS[check_head_name(st.head, key)](in_dim, num_classes, st)
