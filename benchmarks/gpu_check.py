"""The prepared GPU check: run facelt's CUDA paths once and measure them against baselines of the same run.

HOW TO RUN IT (a session whose task has a GPU; nothing else to prepare):

    run(command="set -o pipefail; PYTHONUNBUFFERED=1 timeout -s TERM -k 15 540 "
                "python3 benchmarks/gpu_check.py --out $OUT --budget 420 2>&1 | tee $OUT/gpu_check.log",
        timeout_s=590)                                          # no carry: torch etc. are there

* The repository is copied to the device; its ``python3`` has torch, torchvision, OpenCV, numpy,
  PyYAML, tqdm, matplotlib and onnx, and NOT faiss: the MegaFace section then searches with
  facelt's ``torch`` backend on the GPU and checks rank-1 against the ``numpy`` CPU path (with
  faiss it would use ``blas``); nothing needs carrying.
* About 5-6 minutes on one H200 by estimate (the GPU sizes have never run; per-section times are
  printed and in ``seconds``). No section starts after ``--budget`` seconds (it is recorded as
  skipped); ``timeout -s TERM`` stops it before the tool's limit, and on SIGTERM the section in
  progress is recorded as interrupted (exit 124). The JSON is rewritten atomically after every
  section, so a killed run keeps what it measured. The session's 15 device minutes include the
  machine's start: that leaves one rerun of failed sections, at once (warm for 30 s).
* It writes ``$OUT/gpu_<date>.json`` and the log ``$OUT/gpu_check.log``: commit the JSON as
  ``benchmarks/results/gpu_<date>.json`` (same name) and fill the README's GPU column from its
  top-level keys. A rerun of failed sections only: ``--sections NAME,...`` (or ``--skip``); call
  ``give_back`` unless a rerun follows at once.

Not a test (a test runs ``--device cpu --tiny`` so the script cannot rot).  Sections
(``--sections`` / ``--skip`` to pick; run in this order):

``train``    IResNet-50 at 112x112, batch 256, AMP (bf16 and fp16), SYNTHETIC identities in a RecordIO
             file decoded by facelt's loader (workers = cores - 2): images/s of facelt's trainer
             (stage 1 and stage 2) against a bare PyTorch loop on the same model, data and loader
             settings, and against the same loop fed one pre-decoded batch already on the device
             (the compute ceiling); model FLOPs utilisation (fwd+bwd FLOPs per image, counted by
             ``torch.utils.flop_counter``, x images/s over the device's dense peak); loss finite.
``extract``  feature extraction (flip-sum + L2 into a memmap) images/s on the device.
``amp_centroid_drift``  stage 2 (the meta head, ``centroid_loss.update`` reference and autograd,
             replicated and class-sharded) for 50 steps under ``amp: true`` with float16 and with
             bfloat16, against the fp32 run from the same stage-1 checkpoint and centroids C_0:
             ``||C_amp - C_fp32|| / ||C_fp32 - C_0||`` (the drift relative to what fp32 moved),
             ``||C_amp - C_fp32|| / ||C_fp32||`` and ``||C_amp - C_0|| / ||C_fp32 - C_0||`` (1 when
             AMP moves the centroids as far as fp32; near 0 when a gradient scaler shrinks their
             update); a second fp32 run gives the run-to-run noise floor.
``input_pipeline``  images/s the training loader delivers alone (RecordDataset, the trainer's
             workers and pinning, copied to the device, no model) against what the GPU consumes
             (the pre-decoded ceiling of ``train``); the JPEG decode on the device
             (``facelt.data.device_decode``: workers read bytes, ``torchvision.io.decode_jpeg`` on
             the GPU decodes each batch) alone and as a loader, its pixels against OpenCV's.
``head``     the OLTR meta-embedding head at K = 74,500, d = 512, B = 256 against a linear head:
             step-time ratio and peak memory (``torch.cuda.max_memory_allocated``).
``sharded_head``  the class-sharded meta head (``ShardedMetaEmbeddingHead`` + ``ShardedStageLoss``,
             a world of one) at K = 1,000,000 in one process, against the linear head and the
             unsharded meta head at the same K (fp32 and bf16 autocast): step time, peak memory.
``megaface`` 3,530 probes x 1,000,000 x 512 distractors: facelt's evaluation (streamed search on the
             device) against one plain matmul + topk over the same data (the floor, with and
             without the host-to-device copy); rank-1 identical to the CPU path.
``amp``      AMP vs fp32 loss curves of the trainer over 200 steps on a small problem.
``ddp``      stage 1 in this process, then stage 2 under a 1-process torchrun with mid-epoch
             checkpoints, killed after the first one and resumed with ``--resume`` (one process
             starts no process group, so NCCL itself needs two GPUs to be exercised).

    python benchmarks/gpu_check.py                      # the full check on CUDA
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code paths, small, on the CPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("train", "extract", "amp_centroid_drift", "input_pipeline", "head", "sharded_head",
            "megaface", "amp", "ddp")

# Dense (no sparsity) tensor-core peaks in FLOP/s for the AMP dtypes, from the vendors' data sheets
# (SXM parts).  MFU is reported only for a device named here.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass
class Sizes:
    """Problem sizes: the real check, or ``--tiny`` (same code paths, CPU-sized)."""

    backbone: str = "iresnet50"
    face_stem: bool = False
    image_size: int = 112
    batch: int = 256
    identities: int = 1000
    images_per_identity: int = 8
    steps: int = 30           # timed steps per measurement (after warm-up)
    warmup: int = 5
    head_classes: int = 74_500
    head_dim: int = 512
    head_batch: int = 256
    mf_probes: int = 3530
    mf_identities: int = 80
    mf_rows: int = 1_000_000
    mf_dim: int = 512
    amp_steps: int = 200
    ddp_steps: int = 12
    drift_steps: int = 50          # stage-2 steps of each AMP-drift run
    drift_batch: int = 128
    drift_stage1_steps: int = 20   # a stage-1 start of its own when the train section did not run
    # (centroid_loss.update, shard_head) of the drift runs, most important first
    drift_variants: tuple = (("reference", False), ("autograd", False), ("reference", True))
    pipe_batches: int = 80         # timed loader batches (after a warm-up of two batches a worker)
    decode_repeats: int = 10       # timed decode_jpeg calls over one batch
    shard_classes: int = 1_000_000
    shard_dim: int = 512
    shard_batch: int = 256
    shard_steps: int = 10

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(backbone="small_cnn", image_size=32, batch=16, identities=20, images_per_identity=6,
                   steps=3, warmup=1, head_classes=500, head_dim=64, head_batch=32, mf_probes=60,
                   mf_identities=12, mf_rows=3000, mf_dim=32, amp_steps=20, ddp_steps=6,
                   drift_steps=3, drift_batch=16, drift_stage1_steps=2,
                   drift_variants=(("reference", False), ("autograd", True)), pipe_batches=3, decode_repeats=2,
                   shard_classes=2000, shard_dim=64, shard_batch=32, shard_steps=2)


def _now() -> float:
    return time.perf_counter()


def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def _sets(overrides: list[str]) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


# ------------------------------------------------------------------------------------------ data

def synthetic_faces(work: Path, sz: Sizes) -> Path:
    """A SYNTHETIC identity rec (insightface layout, JPEG) for the training sections."""
    from pipelines.synthetic_faces import write_synthetic_rec
    prefix = work / "faces" / "train"
    if not Path(f"{prefix}.manifest.json").exists():
        write_synthetic_rec(prefix, np.full(sz.identities, sz.images_per_identity), seed=0,
                            size=sz.image_size)
    return prefix


def face_overrides(prefix: Path, sz: Sizes, device: str, workers: int) -> list[str]:
    return [f"data.root={prefix.parent}", "data.train=train", "data.test=", "data.open=", "data.val=",
            f"data.image_size={sz.image_size}", f"data.num_workers={workers}",
            f"model.backbone={sz.backbone}", f"model.face_stem={str(sz.face_stem).lower()}",
            "model.neck=face", "model.embedding_dim=512", f"device={device}",
            f"stage1.batch_size={sz.batch}", f"stage2.batch_size={sz.batch}",
            "stage1.epochs=2", "stage2.epochs=2", "stage1.checkpoint_every=0",
            "stage2.checkpoint_every=0", f"eval.batch_size={sz.batch}"]


def face_config(prefix: Path, sz: Sizes, device: str, workers: int, extra: list[str] = ()):
    from facelt.config import load_config
    return load_config(ROOT / "configs" / "ms1m_lt.yaml",
                       face_overrides(prefix, sz, device, workers) + list(extra))


# ------------------------------------------------------------------------------------------ train

def flops_per_image(net, image_size: int, device: str) -> Optional[float]:
    """Forward + backward FLOPs of one image (``torch.utils.flop_counter`` counts 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(2, 3, image_size, image_size, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    net.train()
    with FlopCounterMode(display=False) as counter:
        out = net(x, y)
        out["logits"].float().sum().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2.0


def training_loader(ds, cfg, sz: Sizes, device: str, batches: int, collate_fn=None):
    """The trainer's loader settings (``make_loader``: ``data.num_workers``, pinned on CUDA, whole
    batches) over ``ds``, for ``batches`` batches drawn with replacement."""
    import torch
    from facelt.data.build import make_loader
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batches * sz.batch)
    return make_loader(ds, sz.batch, cfg.data.num_workers, sampler=sampler, drop_last=True,
                       pin=device == "cuda" and collate_fn is None, collate_fn=collate_fn)


def bare_loop(cfg, prefix: Path, num_classes: int, sz: Sizes, device: str, dtype: Optional[str],
              predecoded: bool) -> dict:
    """A plain PyTorch loop over the same model, dataset and loader settings as the trainer's stage
    1 (or one pre-decoded batch on the device): the baseline the trainer is measured against."""
    import torch
    import torch.nn.functional as F
    from facelt.data.rec_dataset import RecordDataset
    from facelt.models.build import build_net
    torch.manual_seed(0)
    net = build_net(cfg, 1, num_classes).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    use_amp = dtype is not None and device == "cuda"
    amp_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == "fp16")
    loader = training_loader(RecordDataset(prefix, train=True), cfg, sz, device,
                             sz.steps + sz.warmup + 1)
    fixed = None
    if predecoded:
        x0, y0, _ = next(iter(loader))
        fixed = (x0.to(device), torch.as_tensor(y0, device=device).long())
    batches = iter(loader) if not predecoded else None
    losses, t0, n = [], None, 0
    for step in range(sz.warmup + sz.steps):
        if step == sz.warmup:
            _sync(device)
            t0 = _now()
        if predecoded:
            x, y = fixed
        else:
            x, y, _ = next(batches)
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y, device=device).long()
        with torch.autocast(device, dtype=amp_dtype, enabled=use_amp):
            out = net(x, y)
        loss = F.cross_entropy(out["logits"].float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if step >= sz.warmup:
            n += y.shape[0]
        losses.append(loss.detach())
    _sync(device)
    dt = _now() - t0
    finite = bool(torch.isfinite(torch.stack(losses)).all().item())
    return {"img_s": n / dt, "loss_finite": finite, "flops_per_image": flops_per_image(net, sz.image_size, device)}


def trainer_img_s(cfg, out: Path, stage: int) -> dict:
    """Run the trainer's stage for two epochs; images/s of the second (warm) epoch."""
    from facelt.jobs.train import train
    train(cfg, [stage], out)
    lines = [json.loads(x) for x in (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    return {"img_s": last["images_per_s"], "loss_finite": all(math.isfinite(m["loss"]) for m in lines),
            "epochs": len(lines)}


def section_train(work: Path, sz: Sizes, device: str, workers: int) -> dict:
    import torch
    prefix = synthetic_faces(work, sz)
    res: dict = {"backbone": sz.backbone, "batch": sz.batch, "image_size": sz.image_size,
                 "workers": workers}
    dtypes = ("bf16", "fp16") if device == "cuda" else (None,)
    for dtype in dtypes:
        tag = dtype or "fp32"
        amp = [f"amp={'true' if dtype else 'false'}"] + ([f"amp_dtype={'bfloat16' if dtype == 'bf16' else 'float16'}"]
                                                          if dtype else [])
        steps = [f"stage1.max_steps_per_epoch={sz.steps}", f"stage2.max_steps_per_epoch={sz.steps}"]
        cfg = face_config(prefix, sz, device, workers, amp + steps)
        run = work / f"train_{tag}"
        s1 = trainer_img_s(cfg, run, 1)
        num_classes = sz.identities
        bare = bare_loop(cfg, prefix, num_classes, sz, device, dtype, predecoded=False)
        ceil = bare_loop(cfg, prefix, num_classes, sz, device, dtype, predecoded=True)
        entry = {"facelt_stage1_img_s": s1["img_s"], "bare_img_s": bare["img_s"],
                 "ceiling_img_s": ceil["img_s"], "ratio_vs_bare": s1["img_s"] / bare["img_s"],
                 "ratio_vs_ceiling": s1["img_s"] / ceil["img_s"],
                 "flops_per_image": bare["flops_per_image"],
                 "loss_finite": s1["loss_finite"] and bare["loss_finite"] and ceil["loss_finite"]}
        if dtype == dtypes[0]:
            s2 = trainer_img_s(cfg, run, 2)
            entry["facelt_stage2_img_s"] = s2["img_s"]
            entry["loss_finite"] = entry["loss_finite"] and s2["loss_finite"]
            res["checkpoint"] = str(run / "stage2" / "checkpoint.pt")
            res["stage1_checkpoint"] = str(run / "stage1" / "checkpoint.pt")
        peak = peak_flops(device)
        entry["mfu"] = (entry["flops_per_image"] * s1["img_s"] / peak) if peak else None
        res[tag] = entry
    torch.cuda.empty_cache() if device == "cuda" else None
    return res


def peak_flops(device: str) -> Optional[float]:
    import torch
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None


# ------------------------------------------------------------------------------------------ amp drift

AMP_DTYPES = ("float16", "bfloat16")


def start_centroids(cfg, init: Path, work: Path):
    """The centroids stage 2 starts from (C_0): the stage built from ``init`` and its head
    initialised from the data, as the trainer does before its first step (no autocast there)."""
    import torch
    from facelt.train.stage import build_stage, init_head_from_data
    parts = build_stage(cfg, 2, init_checkpoint=init, out=work)
    init_head_from_data(parts)
    c0 = parts.net.head.centroids.detach().double().cpu().clone()
    del parts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return c0


def stage2_centroids(cfg, init: Path, out: Path):
    """Train stage 2 from ``init`` into a fresh ``out``; its final centroids (the checkpoint's
    unsharded layout) and whether every logged loss was finite."""
    import shutil
    import torch
    from facelt.jobs.train import train
    shutil.rmtree(out, ignore_errors=True)
    train(cfg, [2], out, init_checkpoint=init)
    state = torch.load(out / "stage2" / "checkpoint.pt", map_location="cpu", weights_only=True)
    lines = [json.loads(x) for x in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    return state["model"]["head.centroids"].double(), all(math.isfinite(m["loss"]) for m in lines)


def centroid_drift(c_run, c_fp32, c0) -> dict:
    """How far a run's centroids are from the fp32 run's, relative to what fp32 moved them."""
    moved = float((c_fp32 - c0).norm())
    diff = float((c_run - c_fp32).norm())
    return {"rel_to_update": diff / moved if moved > 0 else None,
            "rel": diff / float(c_fp32.norm()),
            "update_ratio": float((c_run - c0).norm()) / moved if moved > 0 else None,
            "max_abs_diff": float((c_run - c_fp32).abs().max())}


def drift_stage1(work: Path, sz: Sizes, device: str, workers: int, res: dict) -> Path:
    """The stage-1 checkpoint every drift run starts from: the train section's, else a short
    fp32 stage 1 of its own."""
    ckpt = (res.get("train") or {}).get("stage1_checkpoint")
    if ckpt and Path(ckpt).exists():
        return Path(ckpt)
    prefix = synthetic_faces(work, sz)
    cfg = face_config(prefix, sz, device, workers,
                      ["amp=false", "stage1.epochs=1", f"stage1.max_steps_per_epoch={sz.drift_stage1_steps}"])
    out = work / "drift_stage1"
    if not (out / "stage1" / "checkpoint.pt").exists():
        from facelt.jobs.train import train
        train(cfg, [1], out)
    return out / "stage1" / "checkpoint.pt"


def section_amp_centroid_drift(work: Path, sz: Sizes, device: str, workers: int, res: dict,
                               may_continue: Callable[[], bool] = lambda: True) -> dict:
    """Stage 2 for ``drift_steps`` steps under ``amp: true`` (float16, bfloat16) against fp32 from
    the same stage-1 checkpoint and the same C_0 (on the CPU ``amp`` is off: every run is fp32).
    A variant after the first starts only while ``may_continue()``."""
    prefix = synthetic_faces(work, sz)
    init = drift_stage1(work, sz, device, workers, res)
    out: dict = {"steps": sz.drift_steps, "batch": sz.drift_batch, "start": str(init),
                 "amp_active": device == "cuda", "variants": {}}
    for update, sharded in sz.drift_variants:
        name = f"{update}_{'sharded' if sharded else 'replicated'}"
        if out["variants"] and not may_continue():
            out["variants"][name] = {"skipped": "the section's time share or the budget is spent"}
            continue
        base = [f"stage2.centroid_loss.update={update}", f"stage2.shard_head={str(sharded).lower()}",
                "stage2.epochs=1", f"stage2.max_steps_per_epoch={sz.drift_steps}",
                f"stage2.batch_size={sz.drift_batch}", "data.augment=false"]
        cfg32 = face_config(prefix, sz, device, workers, base + ["amp=false"])
        c0 = start_centroids(cfg32, init, work / f"drift_{name}_c0")
        c32, finite = stage2_centroids(cfg32, init, work / f"drift_{name}_fp32")
        entry: dict = {"update": update, "sharded": sharded,
                       "fp32_update_norm": float((c32 - c0).norm()), "c0_norm": float(c0.norm())}
        runs = {dt: ["amp=true", f"amp_dtype={dt}"] for dt in AMP_DTYPES}
        if device == "cuda" and not out["variants"]:  # the noise floor, once (on the CPU the
            runs["fp32_repeat"] = ["amp=false"]         # AMP runs are fp32 repeats already)
        for tag, extra in runs.items():
            try:
                c, ok = stage2_centroids(face_config(prefix, sz, device, workers, base + extra),
                                         init, work / f"drift_{name}_{tag}")
            except Exception as exc:  # e.g. a non-finite loss under float16: a finding, recorded
                entry[tag] = {"error": f"{type(exc).__name__}: {exc}"}
                out.setdefault("failed_runs", []).append(f"{name}.{tag}")
                continue
            entry[tag] = {**centroid_drift(c, c32, c0), "loss_finite": ok and finite}
        out["variants"][name] = entry
    first = out["variants"][next(iter(out["variants"]))]
    for dt in AMP_DTYPES:  # the headline: the recipe's update (reference), replicated head
        out[dt] = first.get(dt)
    return out


# ------------------------------------------------------------------------------------------ input pipeline

def loader_rate(loader, deliver: Callable, device: str, warmup: int) -> float:
    """Images/s of ``deliver(batch)`` (-> a tensor on ``device``) over ``loader`` after ``warmup``
    batches (the workers' start)."""
    batches = iter(loader)
    for _ in range(warmup):
        deliver(next(batches))
    _sync(device)
    t, n = _now(), 0
    for batch in batches:
        n += deliver(batch).shape[0]
    _sync(device)
    return n / (_now() - t)


def section_input_pipeline(work: Path, sz: Sizes, device: str, workers: int, res: dict) -> dict:
    """The loader alone against the GPU's consumption; JPEG decoding on the device as the option."""
    from facelt.data.rec_dataset import RecordDataset
    prefix = synthetic_faces(work, sz)
    cfg = face_config(prefix, sz, device, workers)
    warm = 2 * max(1, workers)  # the workers' start and their prefetched batches (2 a worker)
    cpu_ds = RecordDataset(prefix, train=True)
    cpu_loader = training_loader(cpu_ds, cfg, sz, device, warm + sz.pipe_batches)
    loader_img_s = loader_rate(cpu_loader, lambda b: b[0].to(device, non_blocking=True), device, warm)
    del cpu_loader
    try:
        gpu_decode = measure_device_decode(prefix, cfg, sz, device, warm, loader_img_s)
    except Exception as exc:  # keep the loader's figures when the device decoder is missing
        gpu_decode = {"error": f"{type(exc).__name__}: {exc}"}
    train = res.get("train") or {}
    main_dtype = next((k for k in ("bf16", "fp16", "fp32") if k in train and "ceiling_img_s" in train[k]), None)
    if main_dtype:
        gpu_img_s, source = train[main_dtype]["ceiling_img_s"], f"train.{main_dtype}.ceiling_img_s"
    else:
        dtype = "bf16" if device == "cuda" else None
        gpu_img_s = bare_loop(cfg, prefix, sz.identities, sz, device, dtype, predecoded=True)["img_s"]
        source = f"measured here (pre-decoded, {dtype or 'fp32'})"
    return {"workers": workers, "batch": sz.batch, "image_size": sz.image_size,
            "loader_img_s": loader_img_s, "gpu_img_s": gpu_img_s, "gpu_img_s_from": source,
            "loader_vs_gpu": loader_img_s / gpu_img_s, "loader_is_bottleneck": loader_img_s < gpu_img_s,
            "gpu_decode": gpu_decode}


def measure_device_decode(prefix: Path, cfg, sz: Sizes, device: str, warm: int,
                          loader_img_s: float) -> dict:
    """``facelt.data.device_decode`` as a loader (workers read bytes, each batch decoded on the
    device), ``decode_jpeg`` on one batch alone against OpenCV in one process, and its pixels
    against OpenCV's."""
    import cv2
    import torch
    from facelt.data.device_decode import (EncodedRecordDataset, collate_encoded, decode_batch,
                                           decode_jpegs)
    from facelt.data.rec_dataset import decode_image, to_tensor
    enc_ds = EncodedRecordDataset(prefix, train=True)
    enc_loader = training_loader(enc_ds, cfg, sz, device, warm + sz.pipe_batches,
                                 collate_fn=collate_encoded)
    loader_gpu_img_s = loader_rate(enc_loader, lambda b: decode_batch(b, device), device, warm)
    del enc_loader
    batch = collate_encoded([enc_ds[i] for i in range(min(sz.batch, len(enc_ds)))])
    payloads = [d for d, j in zip(batch.data, batch.jpeg.tolist()) if j]
    decode_jpegs(payloads, device)
    _sync(device)
    t = _now()
    for _ in range(sz.decode_repeats):
        on_device = decode_jpegs(payloads, device)
    _sync(device)
    raw_img_s = sz.decode_repeats * len(payloads) / (_now() - t)
    raw = [p.numpy().tobytes() for p in payloads]
    t = _now()
    cpu_pixels = [decode_image(b) for b in raw]
    _ = [to_tensor(im) for im in cpu_pixels]
    cpu_1proc_img_s = len(raw) / (_now() - t)
    want = torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in cpu_pixels])).int()
    diff = (torch.stack(on_device).cpu().int() - want).abs()
    return {"loader_img_s": loader_gpu_img_s, "ratio_vs_cpu_loader": loader_gpu_img_s / loader_img_s,
            "decode_jpeg_img_s": raw_img_s, "jpegs": len(payloads),
            "cpu_decode_img_s_one_process": cpu_1proc_img_s,
            "decode_jpeg_vs_cpu_one_process": raw_img_s / cpu_1proc_img_s,
            "max_abs_diff_vs_opencv": int(diff.max()),
            "mean_abs_diff_vs_opencv": float(diff.float().mean()),
            "share_of_pixels_differing": float((diff > 0).float().mean()),
            "opencv": cv2.__version__}


# ------------------------------------------------------------------------------------------ amp

def section_amp(work: Path, sz: Sizes, device: str) -> dict:
    """The trainer's loss curve under AMP against fp32 on a small problem (same seed and data)."""
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    from facelt.config import load_config
    from facelt.jobs.train import train
    data = work / "amp_data"
    if not (data / "demo_train.txt").exists():
        make_demo_dataset(data, DemoSpec(num_classes=6, open_classes=2, max_count=120, min_count=4,
                                         val_per_class=3, test_per_class=6, open_per_class=6,
                                         image_size=24, seed=0))
    steps_per_epoch = 10
    epochs = max(1, sz.amp_steps // steps_per_epoch)
    base = [f"data.root={data}", f"data.splits_dir={data}", "data.image_size=24",
            "data.num_workers=0", "data.augment=false", f"device={device}",
            f"stage1.epochs={epochs}", "stage1.batch_size=32",
            f"stage1.max_steps_per_epoch={steps_per_epoch}", f"stage1.lr_step={epochs}",
            "eval.batch_size=64"]
    curves = {}
    variants = {"fp32": ["amp=false"]}
    if device == "cuda":
        variants.update({"bf16": ["amp=true", "amp_dtype=bfloat16"],
                         "fp16": ["amp=true", "amp_dtype=float16"]})
    for tag, extra in variants.items():
        cfg = load_config(ROOT / "configs" / "demo_list.yaml", base + extra)
        out = work / f"amp_{tag}"
        train(cfg, [1], out)
        lines = (out / "stage1" / "metrics.jsonl").read_text().splitlines()
        curves[tag] = [json.loads(x)["loss"] for x in lines]
    ref = np.asarray(curves["fp32"])
    res: dict = {"steps": epochs * steps_per_epoch, "curves": curves}
    for tag, c in curves.items():
        if tag == "fp32":
            continue
        rel = np.abs(np.asarray(c) - ref) / np.maximum(np.abs(ref), 1e-6)
        res[f"{tag}_max_rel_diff"] = float(rel.max())
        res[f"{tag}_final_rel_diff"] = float(rel[-1])
    res["finite"] = all(math.isfinite(v) for c in curves.values() for v in c)
    return res


# ------------------------------------------------------------------------------------------ head

def section_head(sz: Sizes, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from facelt.losses import DiscCentroidLoss
    from facelt.models.heads import LinearHead, MetaEmbeddingHead
    out = {"classes": sz.head_classes, "dim": sz.head_dim, "batch": sz.head_batch}
    for variant in ("linear", "meta"):
        torch.manual_seed(0)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if variant == "linear":
            head = LinearHead(sz.head_dim, sz.head_classes).to(device)
        else:
            head = MetaEmbeddingHead(sz.head_dim, sz.head_classes).to(device)
            head.init_centroids(torch.randn(sz.head_classes, sz.head_dim, device=device))
        closs = DiscCentroidLoss() if variant == "meta" else None
        opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        v = torch.randn(sz.head_batch, sz.head_dim, device=device, requires_grad=True)
        y = torch.randint(0, sz.head_classes, (sz.head_batch,), device=device)
        base = torch.cuda.memory_allocated() if device == "cuda" else 0

        def step(head=head, opt=opt, v=v, y=y, closs=closs) -> None:  # this variant's objects
            opt.zero_grad(set_to_none=True)
            v.grad = None
            logits, _ = head(v, y)
            loss = F.cross_entropy(logits.float(), y)
            if closs is not None:
                loss = loss + 0.01 * closs(v.float(), y, head.centroids)
            loss.backward()
            opt.step()

        for _ in range(sz.warmup):
            step()
        _sync(device)
        t = _now()
        for _ in range(sz.steps):
            step()
        _sync(device)
        out[f"{variant}_step_s"] = (_now() - t) / sz.steps
        out[f"{variant}_peak_bytes"] = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else None
        del head, opt, v
    out["head_ratio"] = out["meta_step_s"] / out["linear_step_s"]
    if device == "cuda":
        out["memory_ratio"] = out["meta_peak_bytes"] / max(out["linear_peak_bytes"], 1)
    return out


# ------------------------------------------------------------------------------------------ sharded head

def head_step_figures(step: Callable, sz: Sizes, steps: int, device: str,
                      base_bytes: int) -> dict:
    """Seconds per ``step()`` (forward, backward, SGD step) after ``sz.warmup`` steps; the first
    step's loss; peak memory over ``base_bytes`` (CUDA)."""
    import torch
    first = float(step())
    for _ in range(max(0, sz.warmup - 1)):
        step()
    _sync(device)
    t = _now()
    for _ in range(steps):
        step()
    _sync(device)
    out = {"step_s": (_now() - t) / steps, "first_loss": first}
    if device == "cuda":
        out["peak_gib"] = (torch.cuda.max_memory_allocated() - base_bytes) / 2 ** 30
    return out


def section_sharded_head(sz: Sizes, device: str) -> dict:
    """At K = ``shard_classes``: the linear head + CE, the meta head + the stage-2 objective
    (``StageLoss``) and its class-sharded twin in a world of one + ``ShardedStageLoss`` (what
    ``ClassShardedHead`` trains). The twin is built with the same seed, so its first loss is
    the meta head's."""
    import torch
    import torch.nn.functional as F
    from facelt.config import load_config
    from facelt.losses import build_stage_loss
    from facelt.models.heads import LinearHead, MetaEmbeddingHead
    from facelt.parallel.sharded_heads import ShardedMetaEmbeddingHead
    from facelt.parallel.sharded_losses import ShardedStageLoss
    st = load_config(ROOT / "configs" / "ms1m_lt.yaml").stage(2)  # the recipe's centroid loss
    K, d, B = sz.shard_classes, sz.shard_dim, sz.shard_batch
    out: dict = {"classes": K, "dim": d, "batch": B, "centroid_update": st.centroid_loss.update}
    dtypes = (None, "bf16") if device == "cuda" else (None,)
    for dtype in dtypes:
        tag = dtype or "fp32"
        res: dict = {}
        for variant in ("linear", "meta", "sharded"):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if device == "cuda" else 0
            torch.manual_seed(0)
            with torch.device(device):
                if variant == "linear":
                    head = LinearHead(d, K)
                elif variant == "meta":
                    head = MetaEmbeddingHead(d, K)
                else:
                    head = ShardedMetaEmbeddingHead(d, K, rank=0, world=1)
                if variant != "linear":
                    head.init_centroids(torch.randn(K, d))
                v = torch.randn(B, d, requires_grad=True)
                y = torch.randint(0, K, (B,))
            if variant == "linear":
                loss_fn = lambda o, y: F.cross_entropy(o["logits"].float(), y)  # noqa: E731
            elif variant == "meta":
                stage_loss = build_stage_loss(st, head, np.ones(K, dtype=np.int64)).to(device)
                loss_fn = lambda o, y, f=stage_loss: f(o, y)[0]  # noqa: E731
            else:
                stage_loss = ShardedStageLoss(st, head, K)
                loss_fn = lambda o, y, f=stage_loss: f(o, y)[0]  # noqa: E731
            opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)

            def step(head=head, opt=opt, v=v, y=y, loss_fn=loss_fn, dtype=dtype):
                opt.zero_grad(set_to_none=True)
                v.grad = None
                with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype is not None):
                    logits, aux = head(v, y)
                loss = loss_fn({"logits": logits, "features": v, "aux": aux}, y)
                loss.backward()
                opt.step()
                return loss.detach()

            fig = head_step_figures(step, sz, sz.shard_steps, device, base)
            fig["param_gib"] = sum(p.numel() * p.element_size() for p in head.parameters()) / 2 ** 30
            res[variant] = fig
            del head, opt, v, step, loss_fn
            stage_loss = None  # it holds the head too
        res["sharded_vs_linear_time"] = res["sharded"]["step_s"] / res["linear"]["step_s"]
        res["sharded_vs_meta_time"] = res["sharded"]["step_s"] / res["meta"]["step_s"]
        res["first_loss_rel_diff_sharded_vs_meta"] = (abs(res["sharded"]["first_loss"] - res["meta"]["first_loss"])
                                                      / abs(res["meta"]["first_loss"]))
        if device == "cuda":
            res["sharded_vs_linear_memory"] = res["sharded"]["peak_gib"] / res["linear"]["peak_gib"]
        out[tag] = res
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------ megaface

def megaface_files(work: Path, sz: Sizes) -> Path:
    """Random unit distractors (memmap) and probes around identity centres, written by
    bench_megaface.py's generator (rank-1 neither 0 nor 1)."""
    from benchmarks.bench_megaface import generate
    d = work / "megaface"
    generate(d, sz.mf_rows, sz.mf_probes, sz.mf_identities, sz.mf_dim, spread=1.8)
    return d


def megaface_floor(d: Path, device: str, k: int = 10) -> dict:
    """One plain matmul + topk of all probes against all distractors on the device (the floor)."""
    import torch
    q = torch.from_numpy(np.load(d / "P.npy"))
    t0 = _now()
    xb = torch.from_numpy(np.load(d / "D.npy"))  # the whole file read into memory, then copied
    xb = xb.to(device)
    qd = q.to(device)
    _sync(device)
    t1 = _now()
    scores = qd @ xb.T
    top, _ = torch.topk(scores, k, dim=1)
    _sync(device)
    t2 = _now()
    best = top[:, 0].cpu()
    del scores, xb
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"seconds_with_copy": t2 - t0, "seconds_compute": t2 - t1, "best": best.numpy()}


def cpu_search_backend() -> str:
    """The CPU path of eval_megaface: ``faiss`` (``faiss.knn``, its CPU default) when faiss
    imports, else ``numpy`` (matmul + argpartition: the reference, no faiss)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "numpy"
    return "faiss"


def section_megaface(work: Path, sz: Sizes, device: str) -> dict:
    """facelt's search with the ``torch`` backend (what ``megaface-eval --device cuda`` runs
    without faiss; on the CPU the same code on the CPU) against the floor and the CPU path."""
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    d = megaface_files(work, sz)
    backend, cpu_backend = "torch", cpu_search_backend()
    cfg = dict(gallery_sizes=[sz.mf_rows], probe_features=d / "P.npy", probe_list=d / "P.csv",
               distractor_features=d / "D.npy")
    t = _now()
    rep = run_evaluation(MegaFaceEvalConfig(**cfg, backend=backend))
    dev_s = _now() - t
    floor = megaface_floor(d, device)
    t = _now()
    cpu = run_evaluation(MegaFaceEvalConfig(**cfg, backend=cpu_backend))
    cpu_s = _now() - t
    return {"probes": sz.mf_probes, "rows": sz.mf_rows, "dim": sz.mf_dim, "backend": backend,
            "cpu_backend": cpu_backend, "facelt_s": dev_s, "floor_s": floor["seconds_with_copy"],
            "floor_compute_s": floor["seconds_compute"],
            "ratio_vs_floor": dev_s / floor["seconds_with_copy"],
            "rank1": rep["rank1"], "cpu_rank1": cpu["rank1"], "cpu_s": cpu_s,
            "rank1_identical_to_cpu": rep["rank1"] == cpu["rank1"], "trials": rep["trials"]}


# ------------------------------------------------------------------------------------------ ddp

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _partial_checkpoint(path: Path) -> bool:
    import torch
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # being renamed into place: look again
        return False
    return state.get("partial") is not None


def section_ddp(work: Path, sz: Sizes, device: str) -> dict:
    """Stage 1 in this process, then stage 2 under a 1-process torchrun (NCCL on CUDA) with
    mid-epoch checkpoints, killed after the first one, resumed with --resume to the end."""
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    data = work / "ddp_data"
    if not (data / "demo_train.txt").exists():
        make_demo_dataset(data, DemoSpec(num_classes=6, open_classes=2, max_count=120, min_count=4,
                                         val_per_class=3, test_per_class=6, open_per_class=6,
                                         image_size=24, seed=0))
    out = work / "ddp_run"
    over = [f"data.root={data}", f"data.splits_dir={data}", "data.image_size=24", "data.num_workers=0",
            f"device={device}", "stage1.epochs=1", "stage2.epochs=1", "stage1.batch_size=16",
            "stage2.batch_size=16", "stage2.checkpoint_every=2", "eval.batch_size=64"]
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def cmd(stage: str, resume: bool = False) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=1",
                f"--master_port={_free_port()}", "--master_addr=127.0.0.1", "-m", "facelt", "train",
                "--config", str(ROOT / "configs" / "demo_list.yaml"), "--stage", stage, "--out", str(out),
                *(["--resume"] if resume else []), *_sets(over)]

    t = _now()
    from facelt.config import load_config
    from facelt.jobs.train import train
    train(load_config(ROOT / "configs" / "demo_list.yaml", over), [1], out)  # in this process
    ckpt = out / "stage2" / "checkpoint.pt"
    proc = subprocess.Popen(cmd("2"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = False
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline:
            if _partial_checkpoint(ckpt):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
    except BaseException:  # SIGTERM here: leave no torchrun behind
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    proc.wait()
    r2 = subprocess.run(cmd("2", resume=True), env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
    import torch
    state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.exists() else {}
    backend = "nccl" if device == "cuda" else "gloo"
    return {"ok": r2.returncode == 0 and bool(state.get("complete")), "backend": backend,
            "killed_mid_epoch": killed, "resumed_rc": r2.returncode,
            "final_images": (state.get("metrics") or {}).get("images"),
            "seconds": _now() - t, "stderr": r2.stderr[-2000:] if r2.returncode else ""}


# ------------------------------------------------------------------------------------------ extract

def section_extract(work: Path, sz: Sizes, device: str, checkpoint: Optional[str]) -> dict:
    from facelt.cli import main as cli
    if not checkpoint or not Path(checkpoint).exists():
        return {"skipped": "needs the train section's stage-2 checkpoint"}
    prefix = synthetic_faces(work, sz)
    out = work / "extract" / "train.npy"
    rows = sz.identities * sz.images_per_identity
    t = _now()
    rc = cli(["--quiet", "extract-features", "--checkpoint", checkpoint, "--rec", str(prefix),
              "--out", str(out), "--device", device, "--batch-size", str(sz.batch)])
    dt = _now() - t
    feats = np.load(out, mmap_mode="r") if rc == 0 else None
    return {"ok": rc == 0, "rows": rows, "seconds": dt, "img_s": rows / dt,
            "unit_norm": bool(feats is not None and np.allclose(np.linalg.norm(feats[:64], axis=1), 1, atol=1e-4))}


# ------------------------------------------------------------------------------------------ main

def _get(res: dict, *keys):
    """``res[k1][k2]...`` or None where a level is missing (a skipped or failed section)."""
    for k in keys:
        if not isinstance(res, dict):
            return None
        res = res.get(k)
    return res


def summary(res: dict) -> dict:
    """The headline figures (the keys the README's GPU column is made from)."""
    tr = res.get("train") or {}
    main_dtype = next((k for k in ("bf16", "fp16", "fp32") if k in tr), None)
    t = tr.get(main_dtype, {}) if main_dtype else {}
    return {
        "device": res.get("device"),
        "train_dtype": main_dtype,
        "train_img_s": t.get("facelt_stage1_img_s"),
        "train_stage2_img_s": t.get("facelt_stage2_img_s"),
        "train_ratio_vs_bare": t.get("ratio_vs_bare"),
        "train_ratio_vs_ceiling": t.get("ratio_vs_ceiling"),
        "mfu": t.get("mfu"),
        "head_ratio": _get(res, "head", "head_ratio"),
        "megaface_1m_s": _get(res, "megaface", "facelt_s"),
        "megaface_ratio_vs_floor": _get(res, "megaface", "ratio_vs_floor"),
        "extract_img_s": _get(res, "extract", "img_s"),
        "amp_centroid_drift_fp16": _get(res, "amp_centroid_drift", "float16", "rel_to_update"),
        "amp_centroid_drift_bf16": _get(res, "amp_centroid_drift", "bfloat16", "rel_to_update"),
        "loader_img_s": _get(res, "input_pipeline", "loader_img_s"),
        "loader_vs_gpu": _get(res, "input_pipeline", "loader_vs_gpu"),
        "gpu_decode_loader_img_s": _get(res, "input_pipeline", "gpu_decode", "loader_img_s"),
        "sharded_1m_step_vs_linear": _get(res, "sharded_head", "fp32", "sharded_vs_linear_time"),
        "sharded_1m_peak_gib": _get(res, "sharded_head", "fp32", "sharded", "peak_gib"),
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


class Interrupted(BaseException):
    """SIGTERM (``timeout``, the device tool's limit) arrived: stop, keep what was measured."""


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


def write_results(out: Path, res: dict, t_all: float) -> None:
    """The JSON as it stands (headline keys refreshed), written atomically: a killed run keeps
    every finished section."""
    from facelt.utils.io import atomic_path
    res["seconds"]["total"] = round(_now() - t_all, 2)
    res.update(summary(res))
    text = json.dumps(res, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    with atomic_path(out) as tmp:
        tmp.write_text(text + "\n")


def result_path(arg: str, date: str) -> Path:
    """``--out``: a file, or a folder (``$OUT`` on the device) that gets ``gpu_<date>.json``."""
    name = f"gpu_{date}.json"
    if not arg:
        return ROOT / "benchmarks" / "results" / name
    p = Path(arg)
    return p / name if p.is_dir() or arg.endswith("/") else p


def pick_sections(ap: argparse.ArgumentParser, chosen: str, skip: str) -> list[str]:
    names = [s for s in chosen.split(",") if s]
    dropped = [s for s in skip.split(",") if s]
    bad = sorted(set(names + dropped) - set(SECTIONS))
    if bad:
        ap.error(f"unknown sections {bad}; choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names and s not in dropped]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="device to check (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized problems (same code paths)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default all, in that order)")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds after which no further section starts (recorded as skipped; "
                         "the first always starts; default 420; 0: no limit)")
    ap.add_argument("--work", default="", help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--out", default="", help="result JSON, or a folder for gpu_<date>.json "
                                              "(default benchmarks/results/gpu_<date>.json)")
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (default cores - 2)")
    args = ap.parse_args(argv)
    import torch
    import torchvision
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible (use --device cpu --tiny for the CPU check)")
    sections = pick_sections(ap, args.sections, args.skip)
    sz = Sizes.tiny() if args.tiny else Sizes()
    workers = args.workers if args.workers >= 0 else max(0, (os.cpu_count() or 2) - 2)
    if args.tiny:
        workers = min(workers, 1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="facelt_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FACELT_QUIET", "1")
    from facelt.utils.progress import set_quiet
    set_quiet(True)
    res: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                 "torch": torch.__version__, "torchvision": torchvision.__version__,
                 "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "tiny": args.tiny,
                 "date": datetime.date.today().isoformat(), "budget_s": args.budget,
                 "sections": sections, "seconds": {}}
    out = result_path(args.out, res["date"])
    t_all = _now()
    elapsed = lambda: _now() - t_all  # noqa: E731
    drift_started = [0.0]

    def drift_may_continue() -> bool:  # another drift variant: within its share and the budget
        in_section = _now() - drift_started[0]
        return in_section < sz_cap and (args.budget <= 0 or args.budget - elapsed() > 90)

    sz_cap = 130.0 if not args.tiny else float("inf")
    steps: dict[str, Callable[[], dict]] = {
        "train": lambda: section_train(work, sz, args.device, workers),
        "extract": lambda: section_extract(work, sz, args.device, _get(res, "train", "checkpoint")),
        "amp_centroid_drift": lambda: section_amp_centroid_drift(work, sz, args.device, workers, res,
                                                                 drift_may_continue),
        "input_pipeline": lambda: section_input_pipeline(work, sz, args.device, workers, res),
        "head": lambda: section_head(sz, args.device),
        "sharded_head": lambda: section_sharded_head(sz, args.device),
        "megaface": lambda: section_megaface(work, sz, args.device),
        "amp": lambda: section_amp(work, sz, args.device),
        "ddp": lambda: section_ddp(work, sz, args.device),
    }
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    threads = torch.get_num_threads()
    if args.tiny:  # tiny ops on a shared CPU: one thread is several times faster than a contended pool
        torch.set_num_threads(1)
    interrupted = False
    try:
        for name in sections:
            if interrupted or (res["seconds"] and args.budget > 0 and elapsed() > args.budget):
                why = "interrupted (SIGTERM)" if interrupted else f"budget of {args.budget:.0f} s spent"
                res[name] = {"skipped": why}
                print(f"[gpu_check] {name}: skipped, {why}", flush=True)
                continue
            print(f"[gpu_check] {name} ... (at {elapsed():.0f} s)", flush=True)
            t = drift_started[0] = _now()
            try:
                res[name] = steps[name]()
            except Interrupted:
                interrupted = True
                res[name] = {"error": f"interrupted (SIGTERM) after {_now() - t:.0f} s in this section"}
            except Exception as exc:  # one failing section must not lose the others' figures
                import traceback
                res[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-3000:]}
            res["seconds"][name] = round(_now() - t, 2)
            print(f"[gpu_check] {name}: {res['seconds'][name]:.1f} s", flush=True)
            write_results(out, res, t_all)
    except Interrupted:  # between sections (while writing)
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        torch.set_num_threads(threads)
    write_results(out, res, t_all)
    print(f"{'figure':<28} value")
    for k, v in summary(res).items():
        print(f"{k:<28} {_fmt(v)}")
    errors = [n for n in sections if isinstance(res.get(n), dict) and "error" in res[n]]
    for n in errors:
        print(f"section {n} failed: {res[n]['error']}", file=sys.stderr)
    for n in sections:
        if _get(res, n, "failed_runs"):
            print(f"section {n}: runs failed: {', '.join(res[n]['failed_runs'])}", file=sys.stderr)
    print(f"results: {out}")
    if interrupted:
        return 124
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
