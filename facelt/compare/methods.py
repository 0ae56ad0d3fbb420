"""Method specifications of ``facelt compare``: ``METHODS_DIR/<name>.yaml`` read and checked, and a
method's config (``recipe + plain's overlay + its overlay [+ its overlay for this recipe] + --set``).

``by_recipe: {<recipe name>: {...config keys...}}`` in a method file adds an overlay for the recipe
of that ``name`` only (classifier-balancing's Places-LT cRT / LWS values differ from its
ImageNet-LT ones)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from facelt.config import Config, config_from_dict, deep_merge, load_config, load_yaml
from facelt.errors import ConfigError
from facelt.models.components import check_component_names

TRAIN_KINDS = ("stage1", "stage2", "reuse")
POSTHOCS = ("none", "tau_norm", "logit_adjust", "openmax")
SCORES = ("msp", "energy", "max_logit", "openmax")
BASE_METHOD = "plain"


@dataclass
class MethodSpec:
    name: str
    source: Path
    train: str = "stage1"
    posthoc: str = "none"
    posthoc_args: dict = field(default_factory=dict)
    score: str = "msp"
    score_args: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    by_recipe: dict = field(default_factory=dict)


_POSTHOC_ARGS = {"none": set(), "tau_norm": {"taus", "bias"}, "logit_adjust": {"tau"},
                 "openmax": {"tailsize", "alpha_rank", "distance", "translate"}}
_SCORE_ARGS = {"msp": set(), "energy": {"T"}, "max_logit": set(), "openmax": set()}


def _choice(value: Any, choices: tuple, key: str, where: Path) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _args(value: Any, allowed: set, key: str, where: Path) -> dict:
    value = value or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{key}.{unknown[0]}' (known: "
                          f"{', '.join(sorted(allowed)) or 'none'})")
    return dict(value)


def load_method(name: str, methods_dir: Path) -> MethodSpec:
    """Read and check ``methods_dir/<name>.yaml``."""
    path = Path(methods_dir) / f"{name}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in Path(methods_dir).glob("*.yaml"))
        raise ConfigError(f"unknown method '{name}': {path} does not exist (available: "
                          f"{', '.join(avail) or 'none'})")
    data = load_yaml(path)
    known = {f.name for f in dataclasses.fields(MethodSpec)} - {"name", "source"}
    for k in data:
        if k not in known:
            raise ConfigError(f"{path}: unknown key '{k}' (known: {', '.join(sorted(known))})")
    train = _choice(data.get("train", "stage1"), TRAIN_KINDS, "train", path)
    posthoc = _choice(data.get("posthoc", "none"), POSTHOCS, "posthoc", path)
    score = _choice(data.get("score", "msp"), SCORES, "score", path)
    if (posthoc == "openmax") != (score == "openmax"):
        raise ConfigError(f"{path}: posthoc 'openmax' and score 'openmax' go together")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: 'config' must be a mapping of config keys")
    by_recipe = data.get("by_recipe") or {}
    if not isinstance(by_recipe, dict) or not all(isinstance(v, dict) for v in by_recipe.values()):
        raise ConfigError(f"{path}: 'by_recipe' must map recipe names to mappings of config keys")
    if train == "reuse" and (config or by_recipe):
        raise ConfigError(f"{path}: a 'reuse' method evaluates plain's model and cannot change "
                          f"its config")
    return MethodSpec(name, path, train, posthoc,
                      _args(data.get("posthoc_args"), _POSTHOC_ARGS[posthoc], "posthoc_args", path),
                      score, _args(data.get("score_args"), _SCORE_ARGS[score], "score_args", path),
                      config, by_recipe)


def method_config(recipe: Path, spec: MethodSpec, base: Optional[MethodSpec],
                  overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """``recipe + base overlay + spec overlay (+ its ``by_recipe`` overlay for this recipe's
    ``name``) + overrides``, every key checked, component names too (an unknown head or loss fails
    here, before any method trains; the error names the file that brought it in)."""
    tree = load_yaml(recipe)
    check_component_names(config_from_dict(tree, str(recipe)), str(recipe))
    name = tree.get("name", Config().name)
    for s in ([base] if base is not None and base is not spec else []) + [spec]:
        for overlay, what in ((s.config, "config overlay"),
                              (s.by_recipe.get(name), f"by_recipe.{name} overlay")):
            if not overlay:
                continue
            tree = deep_merge(tree, overlay)
            where = f"{s.source} ({what} on {recipe})"
            check_component_names(config_from_dict(tree, where), where)
    return check_component_names(load_config(None, list(overrides), base=tree))
