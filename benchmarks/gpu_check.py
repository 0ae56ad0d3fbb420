"""The prepared GPU check: run facelt's CUDA paths once and measure them against baselines of the same run.

Not a test (a test runs ``--device cpu --tiny`` so the script cannot rot).  One command, at most
8 minutes on one H200; it writes ``benchmarks/results/gpu_<date>.json`` (``--out`` to change) and
prints a table.  Sections (``--sections`` to pick):

``train``    IResNet-50 at 112x112, batch 256, AMP (bf16 and fp16), SYNTHETIC identities in a RecordIO
             file decoded by facelt's loader (workers = cores - 2): images/s of facelt's trainer
             (stage 1 and stage 2) against a bare PyTorch loop on the same model, data and loader
             settings, and against the same loop fed one pre-decoded batch already on the device
             (the compute ceiling); model FLOPs utilisation (fwd+bwd FLOPs per image, counted by
             ``torch.utils.flop_counter``, x images/s over the device's dense peak); loss finite.
``amp``      AMP vs fp32 loss curves of the trainer over 200 steps on a small problem.
``head``     the OLTR meta-embedding head at K = 74,500, d = 512, B = 256 against a linear head:
             step-time ratio and peak memory (``torch.cuda.max_memory_allocated``).
``megaface`` 3,530 probes x 1,000,000 x 512 distractors: facelt's evaluation (streamed search on the
             device) against one plain matmul + topk over the same data (the floor, with and
             without the host-to-device copy); rank-1 identical to the CPU path.
``ddp``      a 1-process torchrun run (NCCL on CUDA, gloo on CPU) through a stage-2 epoch with
             mid-epoch checkpoints, killed after the first one and resumed with ``--resume``.
``extract``  feature extraction (flip-sum + L2 into a memmap) images/s on the device.

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

SECTIONS = ("train", "amp", "head", "megaface", "ddp", "extract")

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

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(backbone="small_cnn", image_size=32, batch=16, identities=20, images_per_identity=6,
                   steps=3, warmup=1, head_classes=500, head_dim=64, head_batch=32, mf_probes=60,
                   mf_identities=12, mf_rows=3000, mf_dim=32, amp_steps=20, ddp_steps=6)


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


def bare_loop(cfg, prefix: Path, num_classes: int, sz: Sizes, device: str, dtype: Optional[str],
              predecoded: bool) -> dict:
    """A plain PyTorch loop over the same model, dataset and loader settings as the trainer's stage
    1 (or one pre-decoded batch on the device): the baseline the trainer is measured against."""
    import torch
    import torch.nn.functional as F
    from facelt.data.build import make_loader
    from facelt.data.rec_dataset import RecordDataset
    from facelt.models.build import build_net
    torch.manual_seed(0)
    net = build_net(cfg, 1, num_classes).to(device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    use_amp = dtype is not None and device == "cuda"
    amp_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == "fp16")
    ds = RecordDataset(prefix, train=True)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True,
                                             num_samples=(sz.steps + sz.warmup + 1) * sz.batch)
    loader = make_loader(ds, sz.batch, cfg.data.num_workers, sampler=sampler, drop_last=True,
                         pin=device == "cuda")
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


def section_megaface(work: Path, sz: Sizes, device: str) -> dict:
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    d = megaface_files(work, sz)
    backend = "torch" if device == "cuda" else "blas"
    cfg = dict(gallery_sizes=[sz.mf_rows], probe_features=d / "P.npy", probe_list=d / "P.csv",
               distractor_features=d / "D.npy")
    t = _now()
    rep = run_evaluation(MegaFaceEvalConfig(**cfg, backend=backend))
    dev_s = _now() - t
    floor = megaface_floor(d, device)
    t = _now()
    cpu = run_evaluation(MegaFaceEvalConfig(**cfg, backend="blas"))
    cpu_s = _now() - t
    return {"probes": sz.mf_probes, "rows": sz.mf_rows, "dim": sz.mf_dim, "backend": backend,
            "facelt_s": dev_s, "floor_s": floor["seconds_with_copy"],
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
    """1-process torchrun (NCCL on CUDA): stage 1, then stage 2 with mid-epoch checkpoints, killed
    after the first one, resumed with --resume to the end."""
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
    r1 = subprocess.run(cmd("1"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r1.returncode != 0:
        return {"ok": False, "stage": 1, "stderr": r1.stderr[-2000:]}
    ckpt = out / "stage2" / "checkpoint.pt"
    proc = subprocess.Popen(cmd("2"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = False
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if _partial_checkpoint(ckpt):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
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
        "head_ratio": (res.get("head") or {}).get("head_ratio"),
        "megaface_1m_s": (res.get("megaface") or {}).get("facelt_s"),
        "megaface_ratio_vs_floor": (res.get("megaface") or {}).get("ratio_vs_floor"),
        "extract_img_s": (res.get("extract") or {}).get("img_s"),
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="device to check (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized problems (same code paths)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    ap.add_argument("--work", default="", help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--out", default="", help="result JSON (default benchmarks/results/gpu_<date>.json)")
    ap.add_argument("--workers", type=int, default=-1, help="loader workers (default cores - 2)")
    args = ap.parse_args(argv)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible (use --device cpu --tiny for the CPU check)")
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        ap.error(f"unknown sections {bad}; choose from {SECTIONS}")
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
                 "torch": torch.__version__, "tiny": args.tiny,
                 "date": datetime.date.today().isoformat(), "seconds": {}}
    t_all = _now()
    steps: dict[str, Callable[[], dict]] = {
        "train": lambda: section_train(work, sz, args.device, workers),
        "amp": lambda: section_amp(work, sz, args.device),
        "head": lambda: section_head(sz, args.device),
        "megaface": lambda: section_megaface(work, sz, args.device),
        "ddp": lambda: section_ddp(work, sz, args.device),
        "extract": lambda: section_extract(work, sz, args.device,
                                           (res.get("train") or {}).get("checkpoint")),
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        t = _now()
        try:
            res[name] = steps[name]()
        except Exception as exc:  # one failing section must not lose the others' figures
            import traceback
            res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        res["seconds"][name] = round(_now() - t, 2)
        print(f"[gpu_check] {name}: {res['seconds'][name]:.1f} s", flush=True)
    res["seconds"]["total"] = round(_now() - t_all, 2)
    res.update(summary(res))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu_{res['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    os.replace(tmp, out)
    print(f"{'figure':<28} value")
    for k, v in summary(res).items():
        print(f"{k:<28} {_fmt(v)}")
    errors = [n for n in sections if isinstance(res.get(n), dict) and "error" in res[n]]
    for n in errors:
        print(f"section {n} failed: {res[n]['error']}", file=sys.stderr)
    print(f"results: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
