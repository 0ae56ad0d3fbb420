"""Training (or reusing) the run of each compared method under ``OUT/runs/<method>/stageN``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from facelt.compare.methods import BASE_METHOD, MethodSpec
from facelt.config import Config, upgrade_saved_config
from facelt.errors import CheckpointError, FaceltError
from facelt.models.checkpoint import load_checkpoint


def run_dir(out: Path, method: str) -> Path:
    return Path(out) / "runs" / method


def checkpoint_of(out: Path, spec: MethodSpec) -> Path:
    if spec.train == "reuse":
        return run_dir(out, BASE_METHOD) / "stage1" / "checkpoint.pt"
    stage = 2 if spec.train == "stage2" else 1
    return run_dir(out, spec.name) / f"stage{stage}" / "checkpoint.pt"


def _first_difference(saved, now, default, key: str) -> Optional[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        default = default if isinstance(default, dict) else {}
        for k in sorted(set(saved) | set(now)):
            old = saved[k] if k in saved else default.get(k)
            diff = _first_difference(old, now.get(k), default.get(k), f"{key}.{k}")
            if diff is not None:
                return diff
        return None
    return None if saved == now else f"{key}: checkpoint {saved!r}, now {now!r}"


#: recipe keys naming folders: compared as the folders they resolve to (another --data-root is
#: another run; ./data and data are the same)
PATH_KEYS = {("data", "root"), ("data", "splits_dir")}


def _real(value):
    return os.path.realpath(value) if isinstance(value, str) and value else value


def recipe_diff(saved: dict, cfg: Config, stage: int) -> Optional[str]:
    """The first recipe key where ``saved`` differs from ``cfg``; a key the saved config lacks
    (written before the key existed) counts at its default; flat keys of older versions are read
    in their sections (:func:`~facelt.config.upgrade_saved_config`)."""
    saved = upgrade_saved_config(saved)
    now = cfg.to_dict()
    defaults = Config().to_dict()
    keys = [("seed",), ("model",), (f"stage{stage}",), ("data", "format"), ("data", "root"),
            ("data", "splits_dir"), ("data", "train"), ("data", "image_size"),
            ("data", "channels"), ("data", "num_classes")]
    for key in keys:
        a, b, d = saved, now, defaults
        for part in key:
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
            d = d.get(part) if isinstance(d, dict) else None
        if key in PATH_KEYS:  # the folder the images come from, however it was spelled
            a, b = _real(a), _real(b)
        diff = _first_difference(a, b, d, ".".join(key))
        if diff is not None:
            return diff
    return None


def is_complete(ckpt: Path, cfg: Config, stage: int) -> bool:
    """True when ``ckpt`` holds a finished run of this recipe; an error when it is another's."""
    if not ckpt.is_file():
        return False
    state = load_checkpoint(ckpt)
    diff = recipe_diff(state.get("config", {}), cfg, stage)
    if diff is not None:
        raise CheckpointError(f"{ckpt} was trained with another recipe ({diff}); choose another "
                              f"--out or remove it")
    return bool(state.get("complete"))


def stage1_source(out: Path, spec: MethodSpec, cfg: Config, base_cfg: Optional[Config]
                  ) -> tuple[Path, Optional[str]]:
    """The run folder a ``stage2`` method's stage 2 starts from, and why: plain's run when the
    method's config trains plain's stage 1 (``None``), else a run of its own stage 1 (the first
    key that differs; e.g. classifier-balancing's Places-LT cRT / LWS on a stage 1 without
    ``fc_add``). A complete stage 1 of that recipe under another method's run is shared."""
    if base_cfg is None:
        return run_dir(out, BASE_METHOD), None
    diff = recipe_diff(base_cfg.to_dict(), cfg, 1)
    if diff is None:
        return run_dir(out, BASE_METHOD), None
    runs = run_dir(out, BASE_METHOD).parent
    for other in sorted(runs.iterdir()) if runs.is_dir() else []:
        ck = other / "stage1" / "checkpoint.pt"
        if other.name != spec.name and ck.is_file():
            state = load_checkpoint(ck)
            if state.get("complete") and recipe_diff(state.get("config", {}), cfg, 1) is None:
                return other, diff
    return run_dir(out, spec.name), diff


def ensure_trained(spec: MethodSpec, cfg: Config, out: Path, resume: bool,
                   log: Callable[[str], None] = print, base_cfg: Optional[Config] = None) -> Path:
    """Train ``spec`` unless its complete checkpoint is there; return the checkpoint path. A
    ``stage2`` method starts from plain's stage 1, or (``base_cfg`` given: plain's config) from a
    stage 1 of its own when its config changes stage 1 (:func:`stage1_source`)."""
    from facelt.jobs.train import train
    ckpt = checkpoint_of(out, spec)
    stage = 2 if spec.train == "stage2" else 1
    if is_complete(ckpt, cfg, stage):
        log(f"{spec.name}: reusing {ckpt}")
        return ckpt
    init = None
    if spec.train == "stage2":
        from facelt.train.stage import stage1_init_path
        source, why = stage1_source(out, spec, cfg, base_cfg)
        if why is not None and not is_complete(source / "stage1" / "checkpoint.pt", cfg, 1):
            log(f"{spec.name}: its config trains another stage 1 than plain's ({why}): "
                f"training stage 1 -> {source / 'stage1'}")
            train(cfg, [1], source, resume=resume)
        init = stage1_init_path(source, cfg.stage2)
        if not init.is_file():
            raise FaceltError(f"{spec.name}: stage 2 starts from {init}, which does not exist")
    log(f"{spec.name}: training stage {stage} -> {ckpt.parent}")
    train(cfg, [stage], run_dir(out, spec.name), resume=resume, init_checkpoint=init)
    return ckpt
