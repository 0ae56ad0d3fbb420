"""Every component name of a config checked against its table, before any long work.

The config keeps plain name strings (``model.backbone``, ``stageN.head``, ``stageN.loss``,
``stageN.aux_loss``); each table checks its names when it builds.  A run builds stage 2's head
only after stage 1 has trained, so whatever starts long work (``train()``, ``build_stage``,
``facelt compare``'s method configs, a checkpoint's embedded config) calls
:func:`check_component_names` first.  It imports the tables, hence torch: ``facelt config`` and
the CLI's start do not call it.
"""
from __future__ import annotations

from facelt.config import Config
from facelt.losses.classification import check_loss_name
from facelt.losses.feature import check_aux_loss_name
from facelt.models.backbone_table import check_backbone_name
from facelt.models.head_table import check_head_name


def check_component_names(cfg: Config, where: str = "") -> Config:
    """``cfg`` when every component name is in its table; else the ConfigError of the first
    unknown one, naming ``where`` (a file, an overlay; optional), the key, the name and the known
    names: ``stage2.head: unknown head 'foo' (known: linear, cosine, ...)``."""
    check_backbone_name(cfg.model.backbone, "model.backbone", where)
    for n in (1, 2):
        st = cfg.stage(n)
        check_head_name(st.head, f"stage{n}.head", where)
        check_loss_name(st.loss, f"stage{n}.loss", where)
        check_aux_loss_name(st.aux_loss, f"stage{n}.aux_loss", where)
    return cfg
