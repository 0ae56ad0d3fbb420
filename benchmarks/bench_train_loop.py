"""Benchmark: facelt's training loop against a bare PyTorch loop on the same model and data (CPU).

Not a test.  Setup (not timed): generate the built-in demo dataset (``pipelines.demo_data``) under
``--dir``, load ``configs/demo_list.yaml`` over it, then for each stage build its parts with
:func:`facelt.train.stage.build_stage` (network, optimizer, loss, the sampler and loader
``StageTrainer.run`` uses) and :func:`facelt.train.stage.init_head_from_data` (centroid
computation is setup).  Stage 2 starts from random weights (``stage2.init_from=none``): where the
backbone comes from does not change the cost of a step.

Timed: ``--rounds`` rounds of, alternately, one ``train_one_epoch`` call capped at ``--steps``
steps (its non-finite check, ``.item()`` bookkeeping, grad scaler and progress bar included;
no validation, no checkpoint) and the same number of steps of a bare loop over the SAME loader on
a copy of the same network (``copy.deepcopy`` of the trainer's net before any step), with an SGD
of the same lr / momentum / weight decay:

    for x, y, _ in loader: out = net(x, y); loss = CE(out["logits"], y) [+ w * centroid loss]
                            opt.zero_grad(); loss.backward(); opt.step()

The bare loop's objective is the stage's own (stage 2 adds ``w * DiscCentroidLoss`` on the head's
centroids, as facelt does), so the difference is the loop's overhead, not a different loss.  One
untimed warm-up run of each side comes first.  Reports median images/s of each side over the
rounds and the ratio facelt / bare (goal: overhead < 10%, i.e. ratio > 0.9).

    FACELT_QUIET=1 .venv/bin/python benchmarks/bench_train_loop.py [--steps 25] [--rounds 5]
        [--threads 1] [--dir /tmp/facelt_train_bench]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("FACELT_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from facelt.config import Config, load_config  # noqa: E402
from facelt.losses import DiscCentroidLoss  # noqa: E402
from facelt.train.loop import train_one_epoch  # noqa: E402
from facelt.train.stage import StageParts, build_stage, init_head_from_data  # noqa: E402
from pipelines.demo_data import DemoSpec, make_demo_dataset  # noqa: E402


def bench_config(data: Path, steps: int, batch: int) -> Config:
    """The demo recipe over ``data``, on CPU, both stages capped at ``steps`` per epoch."""
    overrides = [f"data.root={data}", f"data.splits_dir={data}", "device=cpu",
                 "data.num_workers=0", "stage2.init_from=none"]
    for s in (1, 2):
        overrides += [f"stage{s}.max_steps_per_epoch={steps}", f"stage{s}.batch_size={batch}"]
    return load_config(ROOT / "configs" / "demo_list.yaml", overrides)


def prepare(cfg: Config, stage: int, out: Path) -> StageParts:
    """A stage's parts, its head initialised, ready for the first epoch."""
    parts = build_stage(cfg, stage, out=out)
    init_head_from_data(parts)
    return parts


def bare_epoch(net: nn.Module, opt: torch.optim.Optimizer, loader, sampler, epoch: int,
               steps: int, centroid_loss: DiscCentroidLoss | None, weight: float) -> int:
    """Plain PyTorch loop for ``steps`` batches; returns the number of images seen."""
    sampler.set_epoch(epoch)
    net.train()
    seen = 0
    for step, (x, y, _) in enumerate(loader):
        if step >= steps:
            break
        y = torch.as_tensor(y).long()
        out = net(x, y)
        loss = F.cross_entropy(out["logits"], y)
        if centroid_loss is not None:
            loss = loss + weight * centroid_loss(out["features"], y, net.head.centroids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += y.shape[0]
    return seen


def bench_stage(cfg: Config, stage: int, out: Path, steps: int, rounds: int) -> dict:
    parts = prepare(cfg, stage, out)
    loader, sampler = parts.loader, parts.sampler
    if len(loader) < steps:
        raise SystemExit(f"stage {stage}: the loader has {len(loader)} batches < --steps {steps}; "
                         f"use a bigger --max-count / --classes or fewer --steps")
    st = parts.st
    bare = copy.deepcopy(parts.net)
    opt = torch.optim.SGD([p for p in bare.parameters() if p.requires_grad], lr=st.classifier_lr,
                          momentum=st.momentum, weight_decay=st.weight_decay)
    closs = (DiscCentroidLoss(st.centroid_loss.margin, st.centroid_loss.repel_weight)
             if parts.loss.centroid is not None else None)
    facelt_ips, bare_ips = [], []
    for r in range(rounds + 1):  # round 0 is the warm-up
        t = time.perf_counter()
        m = train_one_epoch(parts, r)
        f_ips = m["images"] / (time.perf_counter() - t)
        t = time.perf_counter()
        n = bare_epoch(bare, opt, loader, sampler, r, steps, closs, st.centroid_loss.weight)
        b_ips = n / (time.perf_counter() - t)
        if r > 0:
            facelt_ips.append(f_ips)
            bare_ips.append(b_ips)
    ratios = [f / b for f, b in zip(facelt_ips, bare_ips)]
    return {"stage": stage, "head": st.head, "images": steps * st.batch_size,
            "facelt": statistics.median(facelt_ips), "bare": statistics.median(bare_ips),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="training steps per timed run")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each side, after 1 warm-up")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--classes", type=int, default=24, help="demo identities")
    ap.add_argument("--max-count", type=int, default=300, help="images of the largest class")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/facelt_train_bench"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    data = args.dir / "data"
    make_demo_dataset(data, DemoSpec(num_classes=args.classes, max_count=args.max_count))
    cfg = bench_config(data, args.steps, args.batch)
    print(f"setup: demo data ({args.classes} classes, largest {args.max_count}) in {data}, "
          f"{time.perf_counter() - t:.1f} s; {cfg.model.backbone} at {cfg.data.image_size}px, "
          f"batch {args.batch}, {args.steps} steps per run, median of {args.rounds} alternating "
          f"runs after 1 warm-up, {args.threads} thread(s)")
    print(f"{'stage':<6} {'head':<7} {'facelt img/s':>12} {'bare img/s':>11} {'facelt/bare':>11} "
          f"{'(min..max)':>14}")
    for s in args.stages:
        r = bench_stage(cfg, s, args.dir / "out", args.steps, args.rounds)
        print(f"{r['stage']:<6} {r['head']:<7} {r['facelt']:12.1f} {r['bare']:11.1f} "
              f"{r['ratio']:11.3f} {r['ratio_min']:6.3f}..{r['ratio_max']:.3f}   "
              f"overhead {100 * (1 - r['ratio']):+.1f}%")


if __name__ == "__main__":
    main()
