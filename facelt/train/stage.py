"""The pieces of one training stage, built in one call: :func:`build_stage` -> :class:`StageParts`.

``build_stage(cfg, stage, dist)`` reads the splits, picks the stage's head strategy (replicated or
class-sharded: :func:`facelt.parallel.strategy.head_strategy`), builds the network (pretrained
backbone for stage 1, stage 1's weights for ``init_from: stage1``, frozen parts; the strategy gives
it the head this rank trains), the optimizer (once), the step-LR scheduler, the AMP scaler, the
stage's loss, the training sampler and loader, and the model the loop calls (the strategy's
wrapping for DDP). Nothing else has to be called first; :func:`init_head_from_data` then gives
heads that keep per-class statistics their centroids / class counts (one pass over the training
set, skipped when resuming).

The RNG is seeded with ``cfg.seed`` before the weights are drawn (the same weights on every rank)
and with one stream per rank afterwards (augmentation and dropout draws differ between ranks).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from facelt.config import Config, StageConfig
from facelt.data.build import (Split, build_split, check_known_labels, class_counts,
                               infer_num_classes, make_loader, read_class_names, train_sampler)
from facelt.errors import CheckpointError, ConfigError, FaceltError
from facelt.losses import StageLoss
from facelt.models.build import build_net
from facelt.models.checkpoint import load_checkpoint
from facelt.models.components import check_component_names
from facelt.models.net import OLTRNet, param_groups
from facelt.models.state import load_model_state
from facelt.parallel import collectives as col
from facelt.parallel import process as D
from facelt.parallel.strategy import HeadStrategy, head_strategy
from facelt.train.batch import BatchTransform, build_batch_transform, build_constraints

BACKBONE_PREFIXES = ("body.backbone.", "body.neck.")


def stage_dir(out: Path, stage: int) -> Path:
    return Path(out) / f"stage{stage}"


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random`` from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class StageData:
    """The stage's splits and what is derived from the training labels."""

    train: Split
    val: Optional[Split]
    num_classes: int
    counts: np.ndarray
    class_names: list[str]


@dataclass
class StageParts:
    """Everything one stage trains with. ``net`` is the bare network, ``model`` the one to call
    (``net`` itself, or its DDP wrapping under torchrun); ``strategy`` is how the head is laid out
    over the processes (replicated or class-sharded), asked for everything that depends on it."""

    cfg: Config
    stage: int
    st: StageConfig
    dist: D.DistInfo
    data: StageData
    net: OLTRNet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss: StageLoss
    sampler: object
    loader: DataLoader
    strategy: HeadStrategy
    #: the stage's batch transform (mixup, two views) and parameter constraints (MaxNorm):
    #: :mod:`facelt.train.batch`
    batch_transform: Optional[BatchTransform] = None
    constraints: list = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.amp_dtype == "bfloat16" else torch.float16


def load_stage_data(cfg: Config, stage: int, dist: D.DistInfo) -> StageData:
    """Read the training (and validation) split; check labels and the global batch size."""
    st = cfg.stage(stage)
    check = dist.is_primary
    train = build_split(cfg.data, "train", train=True, check_files=check)
    if train is None:
        raise FaceltError("data.train is not set: nothing to train on")
    num_classes = infer_num_classes(cfg.data, train.labels)
    counts = class_counts(train.labels, num_classes)
    val = build_split(cfg.data, "val", train=False, check_files=check)
    check_known_labels(train, "training", num_classes)
    if val is not None:
        check_known_labels(val, "validation", num_classes)
    names = read_class_names(cfg.data, num_classes, train)
    if st.batch_size < dist.world_size or st.batch_size % dist.world_size:
        raise ConfigError(f"stage{stage}.batch_size = {st.batch_size} is the global batch: it "
                          f"must be a positive multiple of the {dist.world_size} processes")
    col.barrier()
    return StageData(train, val, num_classes, counts, names)


def init_from_stage1(net: OLTRNet, st: StageConfig, stage: int, src: Path, num_classes: int) -> None:
    """Load stage 1's backbone and neck (and attention / fc_add, when both have it) into ``net``;
    keep its classifier too when ``reinit_classifier`` is false; start the meta head's
    hallucinator from stage 1's classifier with ``meta.hallucinator_init: stage1``."""
    state = load_checkpoint(src)
    if state.get("num_classes") != num_classes:
        raise CheckpointError(f"{src}: trained for {state.get('num_classes')} classes, this "
                              f"config has {num_classes}")
    prefixes = BACKBONE_PREFIXES
    for part in ("attention", "fc_add"):
        extra = f"body.{part}."
        own = getattr(net.body, part) is not None
        if own and any(k.startswith(extra) for k in state["model"]):
            prefixes = prefixes + (extra,)
    load_model_state(net, state["model"], str(src), prefixes=prefixes)
    if st.head == "meta" and st.meta.hallucinator_init == "stage1":
        init_hallucinator_from_classifier(net, state["model"], str(src))
    if not st.reinit_classifier:  # keep stage 1's classifier (e.g. LWS)
        own = net.state_dict()
        head = {k: v for k, v in state["model"].items()
                if k.startswith("head.") and k in own and own[k].shape == v.shape}
        if not head:
            raise CheckpointError(f"{src}: no classifier weights fit the stage-{stage} "
                                  f"head '{st.head}' (reinit_classifier is false)")
        net.load_state_dict(head, strict=False)


STAGE1_CLASSIFIER = ("head.fc.weight", "head.fc.bias")


def init_hallucinator_from_classifier(net: OLTRNet, stage1_model: dict, where: str) -> None:
    """Copy stage 1's linear classifier (``head.fc.weight`` ``(K, d)`` and ``head.fc.bias``) into
    the meta head's hallucinator, as the reference does (``stage1_weights: True``); a stage-1
    cosine / margin head gives its ``head.weight`` with a zero bias."""
    hal = net.head.hallucinator
    if "head.fc.weight" not in stage1_model and "head.weight" in stage1_model:
        # a stage-1 cosine / ArcFace / CosFace head: its (K, d) class weights, no bias
        w = stage1_model["head.weight"]
        stage1_model = {"head.fc.weight": w, "head.fc.bias": w.new_zeros(w.shape[0])}
    missing = [k for k in STAGE1_CLASSIFIER if k not in stage1_model]
    if missing:
        raise CheckpointError(f"{where}: no stage-1 linear classifier ({', '.join(missing)}) to "
                              "start the hallucinator from (stage2.meta.hallucinator_init: stage1); "
                              "set stage2.meta.hallucinator_init=random to start it at random")
    w, b = (stage1_model[k] for k in STAGE1_CLASSIFIER)
    if tuple(w.shape) != tuple(hal.weight.shape):
        raise CheckpointError(f"{where}: stage-1 classifier head.fc.weight has shape "
                              f"{tuple(w.shape)}, the hallucinator needs {tuple(hal.weight.shape)} "
                              "(num_classes, feature dim): the feature dims differ (fc_add?); set "
                              "stage2.meta.hallucinator_init=random")
    with torch.no_grad():
        hal.weight.copy_(w)
        hal.bias.copy_(b)


def freeze_backbone(net: OLTRNet) -> None:
    """Backbone and neck weights stop training (BN statistics: see :func:`set_train_mode`)."""
    for module in (net.body.backbone, net.body.neck):
        for p in module.parameters():
            p.requires_grad_(False)


def set_train_mode(net: OLTRNet, st: StageConfig) -> None:
    """``net.train()``; with a frozen backbone and ``frozen_bn: eval`` its BatchNorm statistics are
    frozen too (``frozen_bn: train``, the reference: batch statistics, running stats updated)."""
    net.train()
    if st.freeze_backbone and st.frozen_bn == "eval":
        net.body.backbone.eval()
        net.body.neck.eval()


def build_optimizer(net: OLTRNet, st: StageConfig) -> torch.optim.Optimizer:
    """SGD with one parameter group per module kind, each with its own learning rate; frozen
    parameters are left out."""
    lrs = {"backbone": st.backbone_lr, "attention": st.attention_lr,
           "classifier": st.classifier_lr, "centroids": st.centroids_lr}
    params = []
    for name, ps in param_groups(net).items():
        ps = [p for p in ps if p.requires_grad]
        if name == "classifier":  # a head may train some of its parameters at a scaled LR
            factors: dict[float, list] = {}
            for p in ps:
                factors.setdefault(float(net.head.lr_factor(p)), []).append(p)
            for f, fps in factors.items():
                params.append({"params": fps, "lr": lrs[name] * f,
                               "name": name if f == 1.0 else f"{name}_x{f:g}"})
        elif ps:
            params.append({"params": ps, "lr": lrs[name], "name": name})
    return torch.optim.SGD(params, lr=st.classifier_lr, momentum=st.momentum,
                           weight_decay=st.weight_decay, nesterov=st.nesterov)


def lr_factor(st: StageConfig, epoch: int) -> float:
    """The LR multiplier of epoch ``epoch`` (0-based) under ``st.lr_schedule``:
    ``step``: ``lr_gamma ** (epoch // lr_step)``; ``cosine``: ``(1 + cos(pi (epoch + 1) / epochs))
    / 2``, classifier-balancing's CosineAnnealingLR (``T_max = epochs``, ``eta_min = 0``) stepped
    at the start of each epoch (``run_networks.py``), so epoch 1 of 10 trains at 0.976 of the LR
    and the last at 0; ``poly``: ``(epoch + 1) / (warmup_epochs + 1)`` during warmup, then
    ``(1 - (epoch - warmup) / (epochs - warmup)) ** poly_power``."""
    if st.lr_schedule == "step":
        return st.lr_gamma ** (epoch // max(1, st.lr_step))
    if st.lr_schedule == "cosine":
        return (1.0 + math.cos(math.pi * (epoch + 1) / st.epochs)) / 2.0
    if st.lr_schedule in ("cosine_annealing", "multistep"):
        warm = min(st.warmup_epochs, st.epochs - 1)
        # LDAM-DRW / RIDE / GPaCo warm up linearly to the full LR at epoch ``warm``
        warmup = (epoch + 1) / warm if epoch < warm else 1.0
        if st.lr_schedule == "multistep":
            return warmup * st.lr_gamma ** sum(1 for m in st.lr_milestones if m <= epoch)
        if epoch < warm:
            return warmup
        return (1.0 + math.cos(math.pi * (epoch - warm) / (st.epochs - warm))) / 2.0
    warm = min(st.warmup_epochs, st.epochs - 1)
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    return max(0.0, 1.0 - (epoch - warm) / (st.epochs - warm)) ** st.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, st: StageConfig
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch (resumable: its state is in the checkpoint)."""
    if st.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, st.lr_step),
                                               gamma=st.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(st, epoch))


def stage1_init_path(out: Path, st: StageConfig) -> Path:
    """Where ``init_from: stage1`` reads: ``OUT/stage1/best.pt`` (``init_weights: best``) or
    ``OUT/stage1/checkpoint.pt`` (``last``)."""
    d = stage_dir(out, 1)
    if st.init_weights == "last":
        return d / "checkpoint.pt"
    best = d / "best.pt"
    if not best.exists() and (d / "checkpoint.pt").exists():
        raise CheckpointError(f"{best} does not exist (stage 1 had no val split?): stage 2 starts "
                              "from stage 1's best-on-val weights with init_weights: best; set "
                              "stage2.init_weights=last to start from its last epoch")
    return best


def build_stage(cfg: Config, stage: int, dist: Optional[D.DistInfo] = None,
                init_checkpoint: Optional[Path] = None, out: Optional[Path] = None) -> StageParts:
    """All parts of ``stage``, ready for :func:`facelt.train.loop.train_one_epoch`.

    ``init_checkpoint`` (or :func:`stage1_init_path`: ``out/stage1/best.pt``, ``checkpoint.pt``
    with ``init_weights: last``) is where ``init_from: stage1`` reads.
    """
    check_component_names(cfg)  # before the data is read
    dist = dist or D.setup(cfg.device)
    st = cfg.stage(stage)
    strategy = head_strategy(st, stage, dist, sample_seed=cfg.seed + stage)  # checks the config
    data = load_stage_data(cfg, stage, dist)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    net = build_net(cfg, stage, data.num_classes)
    if cfg.model.pretrained and stage == 1:
        from facelt.models.build import load_pretrained_weights
        load_pretrained_weights(net, cfg)
    if st.init_from == "stage1":
        src = init_checkpoint or stage1_init_path(Path(out or "."), st)
        init_from_stage1(net, st, stage, src, data.num_classes)
    if st.freeze_backbone:
        freeze_backbone(net)
    constraints = build_constraints(st, stage, net)  # calibrated on the starting weights
    batch_transform = build_batch_transform(st, stage)
    strategy.prepare(net, data.num_classes)  # e.g. this rank's slice of the classes
    net.to(dist.device)
    loss = strategy.build_loss(net, data.counts)
    if net.head.uses_centroid_loss and loss.centroid is None:
        # the head reads its centroids detached: without the centroid loss they stay fixed
        net.head.centroids.requires_grad_(False)
    optimizer = build_optimizer(net, st)
    scheduler = build_scheduler(optimizer, st)
    # loss scaling for float16 autocast only (bfloat16 has float32's exponent range)
    scaler = torch.amp.GradScaler("cuda", enabled=(cfg.amp and dist.device.type == "cuda"
                                                   and cfg.amp_dtype == "float16"))
    # augmentation / dropout draws differ between ranks (one stream per rank)
    seed_everything(cfg.seed + 1_000_003 * dist.rank)
    sampler = train_sampler(st, data.train.labels, cfg.seed, dist.rank, dist.world_size)
    per_rank = max(1, st.batch_size // dist.world_size)
    loader = make_loader(data.train.dataset, per_rank, cfg.data.num_workers, sampler=sampler,
                         drop_last=len(sampler) >= per_rank, pin=dist.device.type == "cuda",
                         persistent=True)
    model = strategy.wrap(net)
    return StageParts(cfg, stage, st, dist, data, net, model, optimizer, scheduler, scaler, loss,
                      sampler, loader, strategy, batch_transform, constraints)


def init_head_from_data(parts: StageParts) -> None:
    """Give a head that keeps per-class statistics (``needs_centroids`` / ``needs_class_counts``)
    its per-class mean features over the training set (test transforms) and its class counts
    (collective)."""
    if not parts.net.head.needs_centroids:
        return
    cfg, dist = parts.cfg, parts.dist
    st = parts.st
    if st.recalibrate_bn_batches > 0 and not (st.freeze_backbone and st.frozen_bn == "eval"):
        from facelt.train.precise_bn import recalibrate_batchnorm
        used = recalibrate_batchnorm(parts.net.body, parts.loader, st.recalibrate_bn_batches,
                                     parts.device, dist.world_size)
        if dist.is_primary:
            print(f"stage {parts.stage}: BatchNorm statistics re-estimated from {used} training "
                  f"batches before the centroids", flush=True)
    eval_split = build_split(cfg.data, "train", train=False)
    empty = parts.strategy.init_centroids(parts.net, eval_split.dataset, parts.data.num_classes,
                                          cfg.eval.batch_size, cfg.data.num_workers)
    if empty and dist.is_primary:
        print(f"warning: {empty} classes have no training image; their centroids are zero")
