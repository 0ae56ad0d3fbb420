"""The two-stage OLTR training loop (one module; both stages, CPU or CUDA, 1 or N processes).

Stage 1: the plain model (backbone + linear classifier, cross-entropy, instance-balanced sampling).
Stage 2: start from stage 1's backbone; centroids = per-class mean feature over the training set;
the meta-embedding head with the cosine classifier; CE + w * discriminative-centroid loss;
class-aware sampling; per-module learning rates; optionally a frozen backbone.

Outputs of a stage in ``OUT/stageN/``: ``checkpoint.pt`` (every epoch and at the end, with everything
needed to resume), ``best.pt`` (best overall top-1 on val), ``metrics.jsonl`` (a JSON line per
epoch) and ``config.yaml`` (the resolved config).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from facelt.config import Config, StageConfig
from facelt.data.samplers import SkipSampler
from facelt.data.build import (Split, build_split, class_counts, infer_num_classes, make_loader,
                               read_class_names, train_sampler)
from facelt.errors import CheckpointError, ConfigError, DataError, FaceltError
from facelt.evaluate import closed_set_report, predict
from facelt.losses import DiscCentroidLoss
from facelt.models.build import build_net
from facelt.models.net import OLTRNet, param_groups
from facelt.train import distributed as D
from facelt.train.centroids import class_means
from facelt.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from facelt.utils.io import append_jsonl, write_text
from facelt.utils.progress import progress

BACKBONE_PREFIXES = ("backbone.", "neck.")


class NonFiniteLoss(FaceltError):
    pass


@dataclass
class StageResult:
    stage: int
    out_dir: Path
    checkpoint: Path
    epochs_run: int
    last_metrics: dict


def stage_dir(out: Path, stage: int) -> Path:
    return Path(out) / f"stage{stage}"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    import random
    random.seed(seed)


def _optimizer(net: OLTRNet, st: StageConfig) -> torch.optim.Optimizer:
    groups = param_groups(net)
    lrs = {"backbone": st.backbone_lr, "attention": st.attention_lr,
           "classifier": st.classifier_lr, "centroids": st.centroids_lr}
    params = []
    for name, ps in groups.items():
        ps = [p for p in ps if p.requires_grad]
        if ps:
            params.append({"params": ps, "lr": lrs[name], "name": name})
    return torch.optim.SGD(params, lr=st.classifier_lr, momentum=st.momentum,
                           weight_decay=st.weight_decay)


def _freeze_backbone(net: OLTRNet) -> None:
    for module in (net.backbone, net.neck):
        for p in module.parameters():
            p.requires_grad_(False)


def _check_labels(split: Split, what: str, low: int, num_classes: int) -> None:
    """Training and validation images need a known class: 0 <= label < num_classes."""
    bad = np.flatnonzero((split.labels < low) | (split.labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{what} split: {bad.size} item(s) have a label outside 0..{num_classes - 1}, "
                        f"first {split.items[i]} (label {int(split.labels[i])}); open-set images "
                        f"(label -1) belong in data.open, not in data.{split.name}")


def _set_train_mode(net: OLTRNet, st: StageConfig) -> None:
    net.train()
    if st.freeze_backbone:  # frozen BN statistics too
        net.backbone.eval()
        net.neck.eval()


def _unwrap(model: nn.Module) -> OLTRNet:
    return model.module if hasattr(model, "module") else model


class StageTrainer:
    """Runs one stage; construct, then :meth:`run`."""

    def __init__(self, cfg: Config, stage: int, out: Path, resume: bool = False,
                 init_checkpoint: Optional[Path] = None, dist: Optional[D.DistInfo] = None):
        self.cfg = cfg
        self.stage = stage
        self.st = cfg.stage(stage)
        self.out = Path(out)
        self.dir = stage_dir(self.out, stage)
        self.resume = resume
        self.init_checkpoint = init_checkpoint
        self.dist = dist or D.setup(cfg.device)
        self.device = self.dist.device
        self.use_amp = cfg.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------ data
    def _data(self) -> None:
        cfg = self.cfg
        check = self.dist.is_primary
        self.train_split: Split = build_split(cfg.data, "train", train=True, check_files=check)
        if self.train_split is None:
            raise FaceltError("data.train is not set: nothing to train on")
        self.num_classes = infer_num_classes(cfg.data, self.train_split.labels)
        self.counts = class_counts(self.train_split.labels, self.num_classes)
        self.val_split = build_split(cfg.data, "val", train=False, check_files=check)
        _check_labels(self.train_split, "training", 0, self.num_classes)
        if self.val_split is not None:
            _check_labels(self.val_split, "validation", 0, self.num_classes)
        self.class_names = read_class_names(cfg.data, self.num_classes, self.train_split)
        if self.st.batch_size < self.dist.world_size or self.st.batch_size % self.dist.world_size:
            raise ConfigError(f"stage{self.stage}.batch_size = {self.st.batch_size} is the global "
                              f"batch: it must be a positive multiple of the {self.dist.world_size} "
                              f"processes")
        D.barrier()

    # ------------------------------------------------------------------ model
    def _init_from_stage1(self, net: OLTRNet) -> None:
        src = self.init_checkpoint or stage_dir(self.out, 1) / "checkpoint.pt"
        state = load_checkpoint(src)
        if state.get("num_classes") != self.num_classes:
            raise CheckpointError(f"{src}: trained for {state.get('num_classes')} classes, this "
                                  f"config has {self.num_classes}")
        prefixes = BACKBONE_PREFIXES
        if self.st.attention and any(k.startswith("attention.") for k in state["model"]):
            prefixes = prefixes + ("attention.",)
        load_model_state(net, state["model"], str(src), prefixes=prefixes)
        if not self.st.reinit_classifier:  # keep stage 1's classifier (e.g. LWS)
            own = net.state_dict()
            head = {k: v for k, v in state["model"].items()
                    if k.startswith("head.") and k in own and own[k].shape == v.shape}
            if not head:
                raise CheckpointError(f"{src}: no classifier weights fit the stage-{self.stage} "
                                      f"head '{self.st.head}' (reinit_classifier is false)")
            net.load_state_dict(head, strict=False)

    def _build(self) -> None:
        cfg, st = self.cfg, self.st
        _seed_everything(cfg.seed)  # the same initial weights on every rank
        net = build_net(cfg, self.stage, self.num_classes)
        if cfg.model.pretrained and self.stage == 1:
            from facelt.models.build import load_pretrained_weights
            load_pretrained_weights(net, cfg)
        if st.init_from == "stage1":
            self._init_from_stage1(net)
        if st.freeze_backbone:
            _freeze_backbone(net)
        net.to(self.device)
        self.net = net
        self.optimizer = _optimizer(net, st)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, st.lr_step),
                                                         gamma=st.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.centroid_loss = (DiscCentroidLoss(margin=st.centroid_margin,
                                               repel_weight=st.centroid_repel_weight,
                                               centroid_update=st.centroid_update)
                              if st.head == "meta" and st.centroid_loss_weight > 0 else None)
        if st.head == "meta" and self.centroid_loss is None:
            # the head reads its centroids detached: without the centroid loss they stay fixed
            net.head.centroids.requires_grad_(False)
            self.optimizer = _optimizer(net, st)
        # augmentation / dropout draws differ between ranks (one stream per rank)
        _seed_everything(cfg.seed + 1_000_003 * self.dist.rank)
        self.cls_loss = None
        self.aux_loss = None
        if st.loss != "ce" or st.aux_loss != "none":
            from facelt.objectives import build_aux_loss, build_loss
            self.cls_loss = build_loss(st, self.counts).to(self.device)
            self.aux_loss = build_aux_loss(st)

    def _init_centroids(self) -> None:
        head = self.net.head
        if not hasattr(head, "init_centroids"):  # heads that keep per-class mean features
            return
        eval_split = build_split(self.cfg.data, "train", train=False)
        means, counts = class_means(self.net, eval_split.dataset, self.num_classes,
                                    self.cfg.eval.batch_size, self.cfg.data.num_workers, self.dist)
        head.init_centroids(means.to(self.device))
        if hasattr(head, "init_class_counts"):  # heads that split classes by training count
            head.init_class_counts(torch.from_numpy(counts))
        empty = int((counts == 0).sum())
        if empty and self.dist.is_primary:
            print(f"warning: {empty} classes have no training image; their centroids are zero")

    def _wrap(self) -> nn.Module:
        if not self.dist.distributed:
            return self.net
        from torch.nn.parallel import DistributedDataParallel as DDP
        dev = [self.device.index] if self.device.type == "cuda" else None
        return DDP(self.net, device_ids=dev,
                   find_unused_parameters=getattr(self.net.head, "may_skip_parameters", False))

    # ------------------------------------------------------------------ checkpoint
    def _gather_rng(self) -> None:
        """Collect every rank's RNG state (a collective: all ranks call it before rank 0 saves)."""
        own = torch.get_rng_state()
        if self.dist.distributed:
            import torch.distributed as tdist
            states = [None] * self.dist.world_size
            tdist.all_gather_object(states, own)
            self._rng_all = torch.stack(states)
        else:
            self._rng_all = own.unsqueeze(0)

    def _rng_states(self) -> torch.Tensor:
        return self._rng_all

    def _own_rng(self, saved: torch.Tensor, where: Path) -> torch.Tensor:
        saved = saved.cpu()
        if saved.dim() == 1:  # one state for all ranks
            return saved.clone()
        if saved.shape[0] != self.dist.world_size:
            raise CheckpointError(f"{where}: saved by {saved.shape[0]} processes, resumed with "
                                  f"{self.dist.world_size}; resume with the same number")
        return saved[self.dist.rank].clone()  # set_rng_state needs its own storage, not a view

    def _state(self, epoch: int, complete: bool, metrics: dict,
               partial: Optional[dict] = None) -> dict:
        """``epoch``: the last finished epoch (-1: none); ``partial``: progress inside the next
        one (``epoch``, ``step`` done, running ``sums``, ``seconds``) for a mid-epoch resume."""
        return {
            "config": self.cfg.to_dict(), "stage": self.stage, "epoch": epoch, "partial": partial,
            "complete": complete, "num_classes": self.num_classes,
            "class_counts": [int(c) for c in self.counts], "class_names": list(self.class_names),
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": self._rng_states(), "best": self.best, "metrics": metrics,
        }

    def _try_resume(self) -> tuple[int, Optional[dict]]:
        """(first epoch to run, progress inside it or None)."""
        ckpt = self.dir / "checkpoint.pt"
        if not ckpt.exists():
            return 0, None
        if not self.resume:
            raise FaceltError(f"{ckpt} already exists: pass --resume to continue that run, or "
                              f"choose another --out (nothing was overwritten)")
        state = load_checkpoint(ckpt, map_location=self.device)
        if state.get("stage") != self.stage:
            raise CheckpointError(f"{ckpt}: holds stage {state.get('stage')}, expected {self.stage}")
        load_model_state(self.net, state["model"], str(ckpt))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without AMP
            self.scaler.load_state_dict(state["scaler"])
        rng = self._own_rng(state["rng"], ckpt)
        torch.set_rng_state(rng)
        self.best = state.get("best", self.best)
        self.last_metrics = state.get("metrics", {})
        partial = state.get("partial")
        if partial is not None:
            partial = dict(partial, rng=rng)
        return int(state["epoch"]) + 1, partial

    # ------------------------------------------------------------------ loop
    def _loss(self, out: dict, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = out["logits"].float()
        ce = self.cls_loss(logits, y) if self.cls_loss is not None else F.cross_entropy(logits, y)
        parts = {"ce": ce.detach()}
        loss = ce
        if self.aux_loss is not None:
            loss = loss + self.st.aux_loss_weight * self.aux_loss(out["features"].float(), y)
        if self.centroid_loss is not None:
            cl = self.centroid_loss(out["features"].float(), y, self.net.head.centroids)
            loss = loss + self.st.centroid_loss_weight * cl
            parts["centroid"] = cl.detach()
        return loss, parts

    def _validate(self) -> dict:
        if self.val_split is None or not self.dist.is_primary:
            return {}
        p = predict(self.net, self.val_split.dataset, self.device, self.cfg.eval.batch_size,
                    self.cfg.data.num_workers, desc="val")
        rep = closed_set_report(p, self.counts, self.cfg.eval.many, self.cfg.eval.few)
        return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                for k, v in rep.items()}

    def _epoch(self, model: nn.Module, loader, sampler, epoch: int,
               partial: Optional[dict] = None) -> dict:
        st = self.st
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        _set_train_mode(self.net, st)
        steps = len(loader) if not st.max_steps_per_epoch else min(len(loader),
                                                                   st.max_steps_per_epoch)
        # loss, ce, centroid, correct, images
        sums = torch.zeros(5, dtype=torch.float64)
        first, spent = 0, 0.0
        if partial is not None:  # continue inside the epoch: skip the batches already trained on
            first, spent = int(partial["step"]), float(partial["seconds"])
            sums += torch.tensor(partial["sums"], dtype=torch.float64)
            loader = make_loader(loader.dataset, loader.batch_size, loader.num_workers,
                                 sampler=SkipSampler(sampler, first * loader.batch_size),
                                 drop_last=loader.drop_last, pin=loader.pin_memory)
        batches = iter(loader)  # (draws the loader's base seed from the RNG) ...
        if partial is not None:  # ... so restore the RNG after it, as it was at that step
            torch.set_rng_state(partial["rng"].cpu())
        t0 = time.time() - spent
        bar = progress(total=steps, initial=first,
                       desc=f"stage {self.stage} epoch {epoch + 1}/{st.epochs}",
                       unit="batch", disable=not self.dist.is_primary)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext())
        for step in range(first, steps):
            try:
                x, y, _ = next(batches)
            except StopIteration:
                break
            x = x.to(self.device, non_blocking=True)
            y = torch.as_tensor(y, device=self.device).long()
            with autocast:
                out = model(x, y)
            loss, parts = self._loss(out, y)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=self.device)
            D.all_reduce_sum(bad)
            if bad.item() > 0:
                ckpt = self.dir / "checkpoint.pt"
                kept = (f"the last good checkpoint ({ckpt}) is kept" if ckpt.exists() else
                        f"no checkpoint of stage {self.stage} had been written yet")
                raise NonFiniteLoss(
                    f"non-finite loss at stage {self.stage}, epoch {epoch + 1}, step {step + 1}: "
                    f"training stopped; {kept}. Lower the learning rates, set "
                    f"stage{self.stage}.grad_clip, or check the data.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if st.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), st.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = y.shape[0]
            sums += torch.tensor([loss.item() * n, parts["ce"].item() * n,
                                  float(parts.get("centroid", torch.tensor(0.0))) * n,
                                  (out["logits"].argmax(1) == y).sum().item(), n],
                                 dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}",
                            img_s=f"{sums[4].item() / max(time.time() - t0, 1e-9):.0f}")
            if st.checkpoint_every and (step + 1) % st.checkpoint_every == 0 and step + 1 < steps:
                self._save_partial(epoch, step + 1, sums, time.time() - t0)
        bar.close()
        totals = sums.to(self.device, copy=True)  # NCCL reduces device tensors only
        D.all_reduce_sum(totals)
        totals = totals.cpu()
        n = max(totals[4].item(), 1.0)
        dt = time.time() - t0
        return {"loss": totals[0].item() / n, "ce": totals[1].item() / n,
                "centroid_loss": totals[2].item() / n, "train_acc": totals[3].item() / n,
                "images": int(totals[4].item()), "seconds": round(dt, 3),
                "images_per_s": round(totals[4].item() / max(dt, 1e-9), 1)}

    def _save_partial(self, epoch: int, step: int, sums: torch.Tensor, seconds: float) -> None:
        """Mid-epoch checkpoint (each rank's running sums stay local; rank 0 writes)."""
        self._gather_rng()
        totals = sums.to(self.device, copy=True)  # reduced in place: never the local sums
        D.all_reduce_sum(totals)  # the epoch's running sums over all ranks
        if self.dist.is_primary:
            partial = {"epoch": epoch, "step": step, "seconds": seconds,
                       "sums": (totals.cpu() / self.dist.world_size).tolist()}
            save_checkpoint(self.dir / "checkpoint.pt",
                            self._state(epoch - 1, False, self.last_metrics, partial))
        D.barrier()

    def run(self) -> StageResult:
        self._data()
        self._build()
        self.best = {"val_overall": None, "epoch": None}
        self.last_metrics: dict = {}
        start, partial = self._try_resume()
        ckpt_path = self.dir / "checkpoint.pt"
        if start == 0 and partial is None:  # a fresh stage (a resumed one has its centroids)
            self._init_centroids()
        if start >= self.st.epochs:
            if self.dist.is_primary:
                print(f"stage {self.stage}: already complete at {ckpt_path}")
            return StageResult(self.stage, self.dir, ckpt_path, 0, self.last_metrics)
        if self.dist.is_primary:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text(self.dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        model = self._wrap()
        sampler = train_sampler(self.st, self.train_split.labels, self.cfg.seed,
                                self.dist.rank, self.dist.world_size)
        per_rank = max(1, self.st.batch_size // self.dist.world_size)
        loader = make_loader(self.train_split.dataset, per_rank, self.cfg.data.num_workers,
                             sampler=sampler, drop_last=len(sampler) >= per_rank,
                             pin=self.device.type == "cuda")
        run_epochs = 0
        for epoch in range(start, self.st.epochs):
            train_m = self._epoch(model, loader, sampler, epoch, partial)
            partial = None
            self.scheduler.step()
            val_m = self._validate()
            metrics = {"stage": self.stage, "epoch": epoch + 1, **train_m,
                       "lr": {g["name"]: g["lr"] for g in self.optimizer.param_groups},
                       "val": val_m}
            complete = epoch + 1 == self.st.epochs
            self._gather_rng()
            if self.dist.is_primary:
                v = val_m.get("overall")
                if v is not None and (self.best["val_overall"] is None or v > self.best["val_overall"]):
                    self.best = {"val_overall": v, "epoch": epoch + 1}
                    best_state = self._state(epoch, complete, metrics)
                    for k in ("optimizer", "scheduler", "scaler"):
                        best_state.pop(k)
                    save_checkpoint(self.dir / "best.pt", best_state)
                save_checkpoint(ckpt_path, self._state(epoch, complete, metrics))
                append_jsonl(self.dir / "metrics.jsonl", metrics)
                print(_summary(metrics), flush=True)
            D.barrier()
            self.last_metrics = metrics
            run_epochs += 1
        return StageResult(self.stage, self.dir, ckpt_path, run_epochs, self.last_metrics)


def _summary(m: dict) -> str:
    val = m.get("val") or {}
    parts = [f"stage {m['stage']} epoch {m['epoch']}", f"loss {m['loss']:.4f}",
             f"train acc {m['train_acc']:.3f}", f"{m['images_per_s']:.0f} img/s"]
    if val.get("overall") is not None:
        parts.append("val " + " ".join(f"{k} {val[k]:.3f}" for k in ("overall", "many", "medium", "few")
                                        if val.get(k) is not None))
    return " | ".join(parts)


def train(cfg: Config, stages: list[int], out: Path, resume: bool = False,
          init_checkpoint: Optional[Path] = None) -> list[StageResult]:
    """Run the requested stages in order, in this process (one rank of torchrun or alone)."""
    dist = D.setup(cfg.device)
    results = []
    try:
        for s in stages:
            trainer = StageTrainer(cfg, s, out, resume=resume, dist=dist,
                                   init_checkpoint=init_checkpoint if s == 2 else None)
            results.append(trainer.run())
    finally:
        D.teardown()
    return results
