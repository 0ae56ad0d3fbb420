"""``facelt compare``: the OLTR paper's baselines and later long-tail methods on one engine.

A *method* is a YAML file ``METHODS_DIR/<name>.yaml`` (see ``configs/methods``)::

    train: stage1 | stage2 | reuse     # own stage-1 run | stage 2 on plain's stage 1 | plain's model
    posthoc: none | tau_norm | logit_adjust | openmax
    posthoc_args: {...}                # taus / tau / tailsize, alpha_rank, distance
    score: msp | energy | max_logit | openmax
    score_args: {T: 1.0}               # energy temperature
    config: {stage1: {...}}            # overlay on the base recipe (checked like any config)

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
compared at the same operating point); ``tau_norm`` picks tau on val accuracy.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from facelt.config import Config, _deep_merge, config_from_dict, load_config, load_yaml
from facelt.data.build import Split, build_split, make_loader
from facelt.errors import CheckpointError, ConfigError, FaceltError
from facelt.metrics import open_set_accuracy, open_set_f_measure, shot_accuracy
from facelt.openmax import OpenMax
from facelt.posthoc import energy, logit_adjust, max_logit, msp, select_tau, tau_normalize
from facelt.utils.io import atomic_path, write_json, write_text
from facelt.utils.progress import progress

TRAIN_KINDS = ("stage1", "stage2", "reuse")
POSTHOCS = ("none", "tau_norm", "logit_adjust", "openmax")
SCORES = ("msp", "energy", "max_logit", "openmax")
BASE_METHOD = "plain"
OPENMAX_LOGIT_AV_MAX_CLASSES = 4096
"""OpenMax uses the logit vector as activation vector (the paper) up to this many classes; above,
its ``K x K`` MAVs would not fit (74.5K^2 floats = 22 GB) and the embedding ``v`` is used."""
CHUNK_ROWS = 1024
COLUMNS = [("closed", "many"), ("closed", "medium"), ("closed", "few"), ("closed", "overall"),
           ("open", "many"), ("open", "medium"), ("open", "few"), ("open", "overall"),
           ("open", "f_measure"), ("open", "auroc")]


# ----------------------------------------------------------------------------------------------
# Method specifications
# ----------------------------------------------------------------------------------------------

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


_POSTHOC_ARGS = {"none": set(), "tau_norm": {"taus"}, "logit_adjust": {"tau"},
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
    if train == "reuse" and config:
        raise ConfigError(f"{path}: a 'reuse' method evaluates plain's model and cannot change "
                          f"its config")
    return MethodSpec(name, path, train, posthoc,
                      _args(data.get("posthoc_args"), _POSTHOC_ARGS[posthoc], "posthoc_args", path),
                      score, _args(data.get("score_args"), _SCORE_ARGS[score], "score_args", path),
                      config)


def method_config(recipe: Path, spec: MethodSpec, base: Optional[MethodSpec],
                  overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """``recipe + base overlay + spec overlay + overrides``, every key checked."""
    tree = load_yaml(recipe)
    config_from_dict(tree, str(recipe))
    for s in ([base] if base is not None and base is not spec else []) + [spec]:
        tree = _deep_merge(tree, s.config)
        config_from_dict(tree, f"{s.source} (config overlay on {recipe})")
    return load_config(None, list(overrides), base=tree)


# ----------------------------------------------------------------------------------------------
# Training (or reuse)
# ----------------------------------------------------------------------------------------------

def run_dir(out: Path, method: str) -> Path:
    return Path(out) / "runs" / method


def _checkpoint_of(out: Path, spec: MethodSpec) -> Path:
    if spec.train == "reuse":
        return run_dir(out, BASE_METHOD) / "stage1" / "checkpoint.pt"
    stage = 2 if spec.train == "stage2" else 1
    return run_dir(out, spec.name) / f"stage{stage}" / "checkpoint.pt"


def _recipe_diff(saved: dict, cfg: Config, stage: int) -> Optional[str]:
    """The first recipe key where ``saved`` differs from ``cfg``; a key the saved config lacks
    (written before the key existed) counts at its default."""
    now = cfg.to_dict()
    defaults = Config().to_dict()
    keys = [("seed",), ("model",), (f"stage{stage}",), ("data", "train"), ("data", "image_size"),
            ("data", "channels"), ("data", "num_classes")]
    for key in keys:
        a, b, d = saved, now, defaults
        for part in key:
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
            d = d.get(part) if isinstance(d, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                old = a[k] if k in a else (d or {}).get(k)
                if old != b.get(k):
                    return f"{'.'.join(key)}.{k}: checkpoint {old!r}, now {b.get(k)!r}"
        elif a != b:
            return f"{'.'.join(key)}: checkpoint {a!r}, now {b!r}"
    return None


def _complete(ckpt: Path, cfg: Config, stage: int) -> bool:
    """True when ``ckpt`` holds a finished run of this recipe; an error when it is another's."""
    if not ckpt.is_file():
        return False
    from facelt.train.checkpoint import load_checkpoint
    state = load_checkpoint(ckpt)
    diff = _recipe_diff(state.get("config", {}), cfg, stage)
    if diff is not None:
        raise CheckpointError(f"{ckpt} was trained with another recipe ({diff}); choose another "
                              f"--out or remove it")
    return bool(state.get("complete"))


def ensure_trained(spec: MethodSpec, cfg: Config, out: Path, resume: bool,
                   log: Callable[[str], None] = print) -> Path:
    """Train ``spec`` unless its complete checkpoint is there; return the checkpoint path."""
    from facelt.train.trainer import train
    ckpt = _checkpoint_of(out, spec)
    stage = 2 if spec.train == "stage2" else 1
    if _complete(ckpt, cfg, stage):
        log(f"{spec.name}: reusing {ckpt}")
        return ckpt
    init = None
    if spec.train == "stage2":
        init = run_dir(out, BASE_METHOD) / "stage1" / "checkpoint.pt"
        if not init.is_file():
            raise FaceltError(f"{spec.name}: stage 2 starts from {init}, which does not exist")
    log(f"{spec.name}: training stage {stage} -> {ckpt.parent}")
    train(cfg, [stage], run_dir(out, spec.name), resume=resume, init_checkpoint=init)
    return ckpt


# ----------------------------------------------------------------------------------------------
# Collecting embeddings and logits
# ----------------------------------------------------------------------------------------------

@dataclass
class Collected:
    """Per-image embeddings ``(N, d)`` float32 (array or memmap), labels, and optionally logits."""

    features: np.ndarray
    labels: np.ndarray
    logits: Optional[np.ndarray] = None


@torch.no_grad()
def collect_logits(net: torch.nn.Module, dataset: Dataset, device: torch.device, batch: int = 256,
                   num_workers: int = 0, keep_logits: bool = False,
                   folder: Optional[Path] = None, name: str = "split") -> Collected:
    """Stream ``dataset`` through ``net`` in order; keep the embeddings (memory-mapped into
    ``folder/<name>_features.npy`` when given) and, with ``keep_logits``, the logits too (``N x K``:
    only for small K -- otherwise use :func:`chunk_logits` on the embeddings)."""
    was_training = net.training
    net.eval()
    n = len(dataset)
    loader = make_loader(dataset, batch, num_workers)
    feats: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    labels = np.zeros(n, dtype=np.int64)
    pos = 0
    for x, y, _ in progress(loader, desc=f"features {name}", unit="batch"):
        out = net(x.to(device, non_blocking=True))
        f = out["features"].float().cpu().numpy()
        if feats is None:
            shape = (n, f.shape[1])
            feats = (np.lib.format.open_memmap(Path(folder) / f"{name}_features.npy", "w+",
                                               np.float32, shape) if folder else
                     np.zeros(shape, np.float32))
            if keep_logits:
                logits = np.zeros((n, out["logits"].shape[1]), np.float32)
        b = f.shape[0]
        feats[pos:pos + b] = f
        if logits is not None:
            logits[pos:pos + b] = out["logits"].float().cpu().numpy()
        labels[pos:pos + b] = np.asarray(y)
        pos += b
    net.train(was_training)
    if feats is None:
        feats = np.zeros((0, 0), np.float32)
    return Collected(feats, labels, logits)


@torch.no_grad()
def chunk_logits(net: torch.nn.Module, features: np.ndarray, device: torch.device,
                 rows: int = CHUNK_ROWS) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``(rows slice, embeddings, logits float64)`` per chunk: logits = ``net.head(v)``."""
    net.eval()
    for s in range(0, len(features), rows):
        f = np.asarray(features[s:s + rows], dtype=np.float32)
        lg, _ = net.head(torch.from_numpy(f).to(device))
        yield slice(s, s + len(f)), f, lg.double().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------

def auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of ``scores`` separating ``positive`` (known) from the rest
    (Mann-Whitney U with average ranks for ties); None without both kinds."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0                    # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def matched_threshold(scores: np.ndarray, accept_fraction: float) -> float:
    """The score threshold (accept ``score >= t``) that accepts ``accept_fraction`` of ``scores``
    (rounded to whole images)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    n_acc = int(round(accept_fraction * len(s)))
    if n_acc <= 0 or len(s) == 0:
        return float("inf")
    return float(s[n_acc - 1])


@dataclass
class Outputs:
    pred: np.ndarray    # arg-max known class (N,)
    score: np.ndarray   # open-set score, higher = known (N,)


def _score_fn(spec: MethodSpec) -> Callable[[np.ndarray], np.ndarray]:
    if spec.score == "msp":
        return msp
    if spec.score == "energy":
        temp = float(spec.score_args.get("T", 1.0))
        return lambda lg: energy(lg, temp)
    if spec.score == "max_logit":
        return max_logit
    raise ConfigError(f"{spec.source}: score {spec.score!r} has no logit form")


class MethodEvaluator:
    """Turns one checkpoint's embeddings into one method's predictions and scores."""

    def __init__(self, spec: MethodSpec, net: torch.nn.Module, counts: np.ndarray,
                 device: torch.device) -> None:
        self.spec, self.net, self.counts, self.device = spec, net, counts, device
        self.info: dict[str, Any] = {}
        self.transform: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda f, lg: lg
        self.openmax: Optional[OpenMax] = None
        self.use_logit_av = len(counts) <= OPENMAX_LOGIT_AV_MAX_CLASSES

    # ------------------------------------------------------------------ preparation
    def prepare(self, val: Optional[Collected], train: Optional[Collected]) -> None:
        spec = self.spec
        if spec.posthoc == "tau_norm":
            self._prepare_tau(val)
        elif spec.posthoc == "logit_adjust":
            tau = float(spec.posthoc_args.get("tau", 1.0))
            self.transform = lambda f, lg: logit_adjust(lg, self.counts, tau)
            self.info["tau"] = tau
        elif spec.posthoc == "openmax":
            self._prepare_openmax(train)

    def _linear_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        fc = getattr(self.net.head, "fc", None)
        if not isinstance(fc, torch.nn.Linear):
            raise ConfigError(f"{self.spec.source}: tau_norm needs a linear classifier head, the "
                              f"checkpoint has {type(self.net.head).__name__}")
        return fc.weight.detach(), fc.bias.detach()

    def _prepare_tau(self, val: Optional[Collected]) -> None:
        if val is None:
            raise ConfigError(f"{self.spec.source}: tau_norm selects tau on val: set data.val")
        weight, bias = self._linear_weights()
        b = bias.double().cpu().numpy()
        taus = [float(t) for t in self.spec.posthoc_args.get("taus", [0.0, 0.5, 1.0])]

        def tau_logits(tau: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
            w = tau_normalize(weight, tau).double().cpu().numpy()
            return lambda f, lg: np.asarray(f, np.float64) @ w.T + b

        def val_accuracy(tau: float) -> float:
            fn = tau_logits(tau)
            correct = 0
            for sl, f, lg in chunk_logits(self.net, val.features, self.device):
                correct += int((fn(f, lg).argmax(1) == val.labels[sl]).sum())
            return correct / max(1, int((val.labels >= 0).sum()))

        best, sweep = select_tau(val_accuracy, taus)
        self.transform = tau_logits(best)
        self.info.update(tau=best, tau_sweep=sweep)

    def _av(self, f: np.ndarray, lg: np.ndarray) -> np.ndarray:
        return lg if self.use_logit_av else f

    def _prepare_openmax(self, train: Optional[Collected]) -> None:
        if train is None:
            raise ConfigError(f"{self.spec.source}: openmax fits on data.train")
        a = self.spec.posthoc_args
        om = OpenMax(tailsize=int(a.get("tailsize", 20)), alpha_rank=int(a.get("alpha_rank", 10)),
                     distance=a.get("distance", "eucos"),
                     translate=float(a.get("translate", 10000.0)))

        def chunks():
            for sl, f, lg in chunk_logits(self.net, train.features, self.device):
                yield self._av(f, lg), lg.argmax(1), train.labels[sl]

        om.fit(chunks, len(self.counts))
        self.openmax = om
        self.info.update(tailsize=om.tailsize, alpha_rank=om.alpha_rank, distance=om.distance,
                         activation="logits" if self.use_logit_av else "embedding",
                         unfitted_classes=om.unfitted)

    # ------------------------------------------------------------------ outputs
    def outputs(self, data: Collected) -> Outputs:
        n = len(data.labels)
        pred = np.zeros(n, np.int64)
        score = np.zeros(n, np.float64)
        score_fn = None if self.openmax else _score_fn(self.spec)
        for sl, f, lg in chunk_logits(self.net, data.features, self.device):
            if self.openmax is not None:
                _, best, sc = self.openmax.predict(lg, self._av(f, lg))
                pred[sl], score[sl] = best, sc
            else:
                z = self.transform(f, lg)
                pred[sl], score[sl] = z.argmax(1), score_fn(z)
        return Outputs(pred, score)

    def msp_outputs(self, data: Collected) -> np.ndarray:
        """MSP of the same (transformed) logits: the reference operating point."""
        out = np.zeros(len(data.labels))
        for sl, f, lg in chunk_logits(self.net, data.features, self.device):
            out[sl] = msp(self.transform(f, lg))
        return out


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


def method_report(test: Outputs, test_labels: np.ndarray, open_: Optional[Outputs],
                  counts: np.ndarray, threshold: float, many: int, few: int) -> dict:
    """Closed-set, open-set (rejection at ``score < threshold``), F-measure and AUROC."""
    closed = shot_accuracy(test.pred, test_labels, counts, many=many, few=few)
    pred = np.concatenate([test.pred] + ([open_.pred] if open_ else []))
    score = np.concatenate([test.score] + ([open_.score] if open_ else []))
    labels = np.concatenate([test_labels] + ([np.full(len(open_.pred), -1)] if open_ else []))
    rejected = np.where(score < threshold, -1, pred)
    known = labels >= 0
    opened = shot_accuracy(rejected[known], labels[known], counts, many=many, few=few)
    opened["f_measure"] = open_set_f_measure(rejected, labels)
    opened["open_rejected"] = open_set_accuracy(rejected, labels) if (~known).any() else None
    opened["auroc"] = auroc(score, known)
    return {"closed_set": _clean(closed), "open_set": _clean(opened), "threshold": float(threshold)}


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------

def _needs(spec: MethodSpec) -> tuple[bool, bool]:
    """(val, train) embeddings needed by ``spec``."""
    val = spec.posthoc == "tau_norm" or spec.score in ("energy", "max_logit")
    return val, spec.posthoc == "openmax"


def compare(recipe: str | Path, methods: list[str], out: str | Path, methods_dir: str | Path,
            overrides: list[str] | tuple[str, ...] = (), resume: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Train or reuse every method, evaluate all with one protocol, write the report files."""
    from facelt.train.checkpoint import net_from_checkpoint
    from facelt.train.distributed import pick_device
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
    configs = {m: method_config(recipe, s, base, overrides) for m, s in specs.items()}
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
                    else ensure_trained(s, configs[m], out, resume, log))

    # 2. evaluation, one protocol
    ev = base_cfg.eval
    data = base_cfg.data
    device = pick_device(base_cfg.device)
    splits: dict[str, Optional[Split]] = {
        "test": build_split(data, "test", train=False, check_files=True),
        "open": build_split(data, "open", train=False, check_files=True),
        "val": build_split(data, "val", train=False, check_files=True),
        "train": build_split(data, "train", train=False, check_files=True)}
    if splits["test"] is None:
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

        for m in methods:
            spec, ckpt = specs[m], ckpts[m]
            if ckpt not in nets:
                nets[ckpt] = net_from_checkpoint(ckpt, device)
            net, _, state = nets[ckpt]
            counts = np.asarray(state["class_counts"], dtype=np.int64)
            need_val, need_train = _needs(spec)
            val = get(ckpt, "val") if need_val else None
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
                                threshold, ev.many, ev.few)
            rep.update(checkpoint=str(ckpt), train=spec.train, posthoc=spec.posthoc,
                       score=spec.score, details=evaluator.info, method_file=str(spec.source))
            results[m] = rep
            log(f"{m}: closed overall {rep['closed_set']['overall']:.4f}, "
                f"F {rep['open_set']['f_measure']:.4f}")
    finally:
        collected.clear()
        nets.clear()
        shutil.rmtree(cache, ignore_errors=True)
    report = {
        "recipe": str(recipe), "methods": results,
        "columns": [f"{a}.{b}" for a, b in COLUMNS],
        "threshold": ev.threshold,
        "protocol": ("closed: top-1 on test; open: test + open, rejected when score < threshold; "
                     "msp/openmax at eval.threshold, energy/max_logit at the val-matched "
                     "operating point of MSP; auroc: known vs open by the score"),
        "shot_rule": f"many: > {ev.many} training images, few: < {ev.few}, medium: "
                     f"{ev.few}..{ev.many} inclusive; bucket accuracy = mean of per-class "
                     f"accuracies; overall = accuracy over known test images",
    }
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown_table(report))
    bar_chart(report, out / "report.png")
    return report


# ----------------------------------------------------------------------------------------------
# Report files
# ----------------------------------------------------------------------------------------------

def _cell(rep: dict, group: str, key: str) -> Optional[float]:
    return rep["closed_set" if group == "closed" else "open_set"].get(key)


def markdown_table(report: dict) -> str:
    head = ["method"] + [f"{g} {k}" for g, k in COLUMNS]
    lines = [f"# facelt compare ({report['recipe']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, rep in report["methods"].items():
        cells = [m]
        for g, k in COLUMNS:
            v = _cell(rep, g, k)
            cells.append("-" if v is None else f"{100.0 * v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Values in %. Open-set threshold {report['threshold']}. {report['protocol']}.",
              f"Shots: {report['shot_rule']}.", ""]
    return "\n".join(lines)


def bar_chart(report: dict, path: Path) -> None:
    """Grouped bars: one group per column, one bar per method (PNG, written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(report["methods"])
    x = np.arange(len(COLUMNS))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(COLUMNS)), 4.5))
    for i, m in enumerate(methods):
        vals = [_cell(report["methods"][m], g, k) for g, k in COLUMNS]
        ax.bar(x - 0.4 + (i + 0.5) * width, [100.0 * (v or 0.0) for v in vals], width, label=m)
    ax.set_xticks(x, [f"{g}\n{k}" for g, k in COLUMNS], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
