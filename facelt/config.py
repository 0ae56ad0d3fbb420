"""Typed run configuration: dataclasses filled from YAML, then from ``--set key=value`` overrides.

A YAML file under ``configs/`` sets the defaults of a recipe and flags override them (as timm's
train.py does), but every key is checked against the dataclasses below: an unknown key, a wrong type or
a value outside its choices is a :class:`~facelt.errors.ConfigError` that names the file and the
dotted key.  There are no string imports: component names (backbone, head, sampler) are looked up in
explicit tables by the model and trainer builders.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml

from facelt.errors import ConfigError


@dataclass
class DataConfig:
    """Where the images are and how they look."""

    format: Literal["list", "rec"] = "list"
    """``list``: OLTR list files (``path label`` lines) over an image root; ``rec``: MXNet RecordIO
    prefixes in the insightface layout (``PREFIX.rec``/``PREFIX.idx``)."""
    root: str = ""
    """Image root the list paths are relative to (``format: list``)."""
    open_root: str = ""
    """Image root for the open-set list (default: ``root``)."""
    splits_dir: str = ""
    """Folder the four list files are relative to (default: current directory)."""
    train: str = ""
    val: str = ""
    test: str = ""
    open: str = ""
    """The four splits: list files (``format: list``) or rec prefixes (``format: rec``). ``val`` and
    ``open`` may be empty."""
    num_classes: int = 0
    """Number of known classes; 0 = infer from the training split."""
    class_names: str = ""
    """Optional text file with one class name per line, in label order."""
    image_size: int = 224
    channels: Literal[1, 3] = 3
    mean: list[float] = field(default_factory=list)
    """Per-channel normalisation mean (default: ImageNet for RGB, 0.5 for grey)."""
    std: list[float] = field(default_factory=list)
    num_workers: int = 2
    augment: bool = True
    """Random training augmentation (crop/flip/colour for lists, flip for faces); false: the test
    transform is used for training too (deterministic runs)."""


@dataclass
class ModelConfig:
    """The network: backbone -> (modulated attention) -> neck -> head."""

    backbone: Literal["resnet10", "resnet18", "resnet50", "resnet152", "small_cnn",
                      "iresnet18", "iresnet34", "iresnet50", "iresnet100"] = "resnet10"
    face_stem: bool = False
    """insightface-style stem (3x3 stride-1 conv, no max-pool): 112x112 faces give a 7x7 map."""
    neck: Literal["pool", "face"] = "pool"
    """``pool``: global average pool; ``face``: BN-dropout-FC-BN to ``embedding_dim`` (insightface)."""
    embedding_dim: int = 512
    dropout: float = 0.0
    pretrained: str = ""
    """Local file with pretrained backbone weights (nothing is downloaded): ImageNet weights, or
    an arcface_torch ``backbone.pth`` with ``pretrained_format: insightface``."""
    pretrained_format: Literal["auto", "torchvision", "caffe", "insightface"] = "auto"
    """``insightface``: an arcface_torch IResNet ``backbone.pth`` (trunk + its bn2/fc/features
    embedding layer, which loads into the ``face`` neck); needs an ``iresnet*`` backbone."""


@dataclass
class StageConfig:
    """One training stage of the two-stage OLTR recipe."""

    epochs: int = 30
    batch_size: int = 128
    sampler: Literal["instance", "class_aware"] = "instance"
    samples_per_class: int = 4
    """Class-aware sampler: consecutive samples drawn from one class."""
    head: Literal["linear", "cosine", "meta", "arcface", "cosface", "lws", "fslwf"] = "linear"
    """``lws``: stage 1's linear classifier frozen, one learnable scale per class (Kang et al. 2020);
    ``fslwf``: cosine classifier + attention-based few-shot weight generator (Gidaris & Komodakis
    2018, see facelt/models/fslwf.py)."""
    fslwf_novel_max_count: int = 20
    """``fslwf``: classes with fewer training images are novel; their weights are generated."""
    fslwf_fake_novel_prob: float = 0.5
    """``fslwf``: probability that a class of a training batch is treated as fake novel."""
    loss: Literal["ce", "focal", "balanced_softmax", "logit_adjusted"] = "ce"
    """Classification loss on the logits."""
    focal_gamma: float = 2.0
    la_tau: float = 1.0
    """Logit-adjusted loss: logits + tau * log prior."""
    aux_loss: Literal["none", "range", "lifted"] = "none"
    """Feature loss added to the classification loss (the paper's Table 3 baselines)."""
    aux_loss_weight: float = 0.01
    reinit_classifier: bool = True
    """With ``init_from: stage1``: start the classifier afresh (cRT, OLTR). False keeps stage 1's
    linear classifier (LWS needs it)."""
    attention: bool = False
    """Modulated attention after the backbone's last stage."""
    init_from: Literal["none", "stage1"] = "none"
    """``stage1``: start from the stage-1 checkpoint's backbone (and neck)."""
    freeze_backbone: bool = False
    """Freeze backbone and neck; only attention, classifier and centroids train."""
    backbone_lr: float = 0.1
    attention_lr: float = 0.1
    classifier_lr: float = 0.1
    centroids_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 10
    """Step LR: multiply by ``lr_gamma`` every ``lr_step`` epochs."""
    lr_gamma: float = 0.1
    centroid_loss_weight: float = 0.01
    """Weight of the discriminative-centroid loss (reference config 0.01; the paper's lambda 0.1)."""
    centroid_update: Literal["autograd", "reference"] = "autograd"
    """How the attract term moves the centroids: its true gradient, or the OLTR reference's
    center-loss-style update ``sum (c - v) / (1 + n_k) / B`` that ignores the loss weights."""
    centroid_margin: float = 10.0
    centroid_repel_weight: float = 0.01
    reach_scale: float = 10.0
    cos_scale: float = 16.0
    margin_scale: float = 64.0
    """ArcFace / CosFace logit scale s."""
    margin: float = 0.5
    """ArcFace / CosFace margin m."""
    checkpoint_every: int = 0
    """Also write ``checkpoint.pt`` every N steps inside an epoch (0: at epoch ends only); a
    resumed run continues from that step (exactly, on the CPU with ``data.num_workers: 0``)."""
    max_steps_per_epoch: int = 0
    """Cap on iterations per epoch (0: a full pass); for smoke runs."""
    grad_clip: float = 0.0


@dataclass
class EvalConfig:
    threshold: float = 0.1
    """Open-set rejection: predict ``unknown`` when max softmax < threshold."""
    many: int = 100
    """Classes with more than ``many`` training images are *many-shot*."""
    few: int = 20
    """Classes with fewer than ``few`` training images are *few-shot*."""
    batch_size: int = 256
    sweep: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(21)])


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    out: str = ""
    """Default output folder (``--out`` overrides); empty: ``runs/<name>``."""
    log_every: int = 50
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=60, lr_step=20, sampler="class_aware", head="meta", attention=True,
        init_from="stage1", backbone_lr=0.01))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def stage(self, n: int) -> StageConfig:
        if n not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {n}")
        return self.stage1 if n == 1 else self.stage2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Conversion from plain data with key-named errors
# ----------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, typing.List):
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str, default: Any = None) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} keys, "
                              f"got {type(value).__name__}")
        return _build(tp, value, key, where, default)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or type(value) is bool and not any(c is value for c in choices):
            raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: '{key}' has unsupported type {tp!r}")  # pragma: no cover


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls, data: dict, prefix: str, where: str, default: Any = None):
    """Build ``cls`` from ``data`` on top of ``default`` (an instance holding this field's defaults:
    ``stage2`` has other defaults than ``stage1``)."""
    hints = _hints(cls)
    base = default if default is not None else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{where}: unknown key '{dotted}' (known keys of "
                              f"{prefix or 'the top level'}: {', '.join(sorted(names))})")
        kwargs[k] = _convert(v, hints[k], dotted, where, getattr(base, k))
    return dataclasses.replace(base, **kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(tree: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = tree
    cls = Config
    for i, part in enumerate(parts):
        hints = _hints(cls) if cls is not None else {}
        if part not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown key '{'.'.join(parts[:i + 1])}' (known: {known})")
        tp = hints[part]
        if i == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{where}: '{'.'.join(parts[:i + 1])}' is not a section")
        node = node.setdefault(part, {})
        cls = tp


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
    return key, value


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def config_from_dict(data: dict, where: str = "config") -> Config:
    return _build(Config, data, "", where)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Optional[dict] = None) -> Config:
    """Load a YAML recipe (if any), apply ``key=value`` overrides, and check every key and type."""
    tree: dict = dict(base or {})
    where = str(path) if path else "config"
    if path is not None:
        tree = _deep_merge(tree, load_yaml(path))
    # validate the file alone first so errors name the file
    config_from_dict(tree, where)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"--set {key}")
        config_from_dict(tree, f"--set {key}")
    return config_from_dict(tree, where)


def resolve_config_path(dataset: str | None, config: str | None, configs_dir: Path) -> Path:
    """``--config PATH`` or ``--dataset NAME`` (= ``configs/NAME.yaml``)."""
    if config:
        return Path(config)
    if dataset:
        p = configs_dir / f"{dataset}.yaml"
        if not p.is_file():
            avail = sorted(q.stem for q in configs_dir.glob("*.yaml"))
            raise ConfigError(f"no recipe for dataset '{dataset}': {p} does not exist "
                              f"(available: {', '.join(avail)})")
        return p
    raise ConfigError("give --config PATH or --dataset NAME")
