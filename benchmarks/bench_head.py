"""Benchmark: the OLTR meta-embedding head at identity scale against a plain linear head (CPU).

Not a test.  At K = 74,500 classes, d = 512, batch 256 it times one training step's forward and
backward of

* ``linear``    -- :class:`facelt.models.heads.LinearHead` + cross-entropy (stage 1);
* ``meta``      -- :class:`facelt.models.heads.MetaEmbeddingHead` + cross-entropy
                   + ``w * DiscCentroidLoss`` on the head's centroids (stage 2, w = 0.01);
* ``meta_ce``   -- the meta-embedding head with cross-entropy only (shows the centroid loss's share).

Each variant runs in its own child process (so peak memory is its own): build the head and the
inputs, read the baseline, one warm-up step, ``--repeats`` timed steps; it reports the median
seconds and the peak memory over the baseline (``ru_maxrss`` delta, plus the peak of a 1 ms
``/proc/self/statm`` RSS sampler as a cross-check).  Gradients are dropped between steps
(``zero_grad(set_to_none=True)`` as the trainer does), so the peak includes the parameter
gradients.  The size a ``B x K x d`` float32 tensor would take is printed for contrast.

    .venv/bin/python benchmarks/bench_head.py [--classes 74500] [--dim 512] [--batch 256]
        [--repeats 5] [--threads 2]

Sharded mode (``--sharded N``): the stage-2 objective of the unsharded meta head (one process)
against :class:`facelt.parallel.sharded_heads.ShardedMetaEmbeddingHead` + ``sharded_cross_entropy`` +
``0.01 * ShardedDiscCentroidLoss`` with the classes split over N processes (gloo, each process
``B / N`` rows of the global batch, as under torchrun).  Here memory is the whole head's: the peak
RSS over the RSS before the head is built (parameters, gradients, activations), per rank.  From a
rank's peak and its class count it derives the bytes per class and prints the per-GPU memory of
``--project-classes`` (2M) classes over ``--project-gpus`` (8) GPUs, with and without SGD momentum
buffers (one more copy of the three ``K x d`` tables).

    .venv/bin/python benchmarks/bench_head.py --sharded 2 --classes 1000000 --threads 1 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("linear", "meta", "meta_ce")
CENTROID_LOSS_WEIGHT = 0.01  # the reference configs' weight (facelt's StageConfig default)


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class RssSampler:
    """Background thread that records the highest RSS seen (torch kernels release the GIL)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def child(variant: str, classes: int, dim: int, batch: int, repeats: int, threads: int) -> dict:
    """Time ``repeats`` forward+backward steps of one head variant in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from facelt.losses import DiscCentroidLoss
    from facelt.models.heads import LinearHead, MetaEmbeddingHead

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if variant == "sharded":
        return sharded_child(classes, dim, batch, repeats)
    before_build = _rss_bytes()
    if variant == "linear":
        head = LinearHead(dim, classes)
    else:
        head = MetaEmbeddingHead(dim, classes)
        head.init_centroids(torch.randn(classes, dim))  # stands in for per-class mean features
    centroid_loss = DiscCentroidLoss() if variant == "meta" else None
    v = torch.randn(batch, dim, requires_grad=True)    # the backbone's feature: it gets a gradient
    y = torch.randint(0, classes, (batch,))
    param_bytes = sum(p.numel() * p.element_size() for p in head.parameters())

    def step() -> None:
        head.zero_grad(set_to_none=True)
        v.grad = None
        logits, _ = head(v, y)
        loss = F.cross_entropy(logits, y)
        if centroid_loss is not None:
            loss = loss + CENTROID_LOSS_WEIGHT * centroid_loss(v, y, head.centroids)
        loss.backward()

    base_rss = _rss_bytes()
    times = []
    with RssSampler() as sampler:
        step()  # warm-up (allocator, thread pool, first-touch of the gradient buffers)
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    return {"variant": variant, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "param_bytes": param_bytes,
            "maxrss_delta_bytes": _maxrss_bytes() - base_rss,
            "sampled_peak_delta_bytes": sampler.peak - base_rss,
            "baseline_rss_bytes": base_rss,
            "head_peak_bytes": _maxrss_bytes() - before_build}


def sharded_child(classes: int, dim: int, batch: int, repeats: int) -> dict:
    """One rank of the sharded meta head (RANK / WORLD_SIZE / MASTER_* set by the parent)."""
    import torch
    import torch.distributed as dist

    from facelt.parallel.sharded_heads import ShardedMetaEmbeddingHead
    from facelt.parallel.sharded_losses import ShardedDiscCentroidLoss, sharded_cross_entropy
    from facelt.parallel.process import teardown

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    before_build = _rss_bytes()
    head = ShardedMetaEmbeddingHead(dim, classes)
    head.init_centroids_from_sums(torch.randn(head.local_classes, dim),
                                  torch.ones(head.local_classes))
    centroid_loss = ShardedDiscCentroidLoss()
    rows = batch // world + (1 if rank < batch % world else 0)
    v = torch.randn(rows, dim, requires_grad=True)
    y = torch.randint(0, classes, (rows,))
    param_bytes = sum(p.numel() * p.element_size() for p in head.parameters())

    def step() -> None:
        head.zero_grad(set_to_none=True)
        v.grad = None
        logits, aux = head(v, y)
        loss = sharded_cross_entropy(logits, aux["targets"]) + CENTROID_LOSS_WEIGHT * centroid_loss(
            aux["direct"], aux["targets"], head.centroids, classes)
        loss.backward()

    base_rss = _rss_bytes()
    times = []
    with RssSampler() as sampler:
        step()
        for _ in range(repeats):
            dist.barrier()
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    teardown()
    return {"variant": "sharded", "rank": rank, "world": world, "local_classes": head.local_classes,
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "param_bytes": param_bytes, "maxrss_delta_bytes": _maxrss_bytes() - base_rss,
            "sampled_peak_delta_bytes": sampler.peak - base_rss, "baseline_rss_bytes": base_rss,
            "head_peak_bytes": _maxrss_bytes() - before_build}


def run_sharded(args: argparse.Namespace) -> list[dict]:
    """Start ``args.sharded`` rank processes (gloo on 127.0.0.1) and collect their reports."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for r in range(args.sharded):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(args.sharded), LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--child", "sharded", "--classes", str(args.classes),
               "--dim", str(args.dim), "--batch", str(args.batch), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, env=env))
    out = []
    for r, proc in enumerate(procs):
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"sharded rank {r} failed with status {proc.returncode}")
        out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    return out


def sharded_main(args: argparse.Namespace) -> None:
    gib = 2 ** 30
    print(f"K = {args.classes:,} classes, d = {args.dim}, global batch B = {args.batch}, "
          f"{args.threads} thread(s) per process, median of {args.repeats} steps after 1 warm-up; "
          f"unsharded in one process, then sharded over {args.sharded} processes (gloo)")
    single = run_child("meta", args)
    ranks = run_sharded(args)
    print(f"{'head':<40} {'median s':>9} {'params GiB':>10} {'peak GiB':>9} {'classes':>9}")
    print(f"{'meta + CE + centroid, 1 process':<40} {single['median_s']:9.3f} "
          f"{single['param_bytes'] / gib:10.3f} {single['head_peak_bytes'] / gib:9.3f} "
          f"{args.classes:9d}")
    for r in ranks:
        label = f"sharded, rank {r['rank']} of {r['world']}"
        print(f"{label:<40} {r['median_s']:9.3f} {r['param_bytes'] / gib:10.3f} "
              f"{r['head_peak_bytes'] / gib:9.3f} {r['local_classes']:9d}")
    worst = max(r["head_peak_bytes"] for r in ranks)
    print(f"peak memory, worst rank / unsharded = {worst / single['head_peak_bytes']:.3f}")
    print(f"step time, slowest rank / unsharded = "
          f"{max(r['median_s'] for r in ranks) / single['median_s']:.3f}")
    per_class = max(r["head_peak_bytes"] / r["local_classes"] for r in ranks)
    momentum_per_class = 4 * (3 * args.dim + 1)     # SGD momentum of the three K x d tables + bias
    local = -(-args.project_classes // args.project_gpus)
    print(f"measured bytes per class (worst rank's peak / its classes, B = {args.batch}) = "
          f"{per_class:,.0f}")
    print(f"K = {args.project_classes:,} on {args.project_gpus} GPUs: {local:,} classes per GPU -> "
          f"{local * per_class / gib:.2f} GiB per GPU for the head's step, "
          f"{local * (per_class + momentum_per_class) / gib:.2f} GiB with SGD momentum "
          f"(unsharded on one GPU: {args.project_classes * (per_class + momentum_per_class) / gib:.1f} GiB)")


def run_child(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--classes", str(args.classes),
           "--dim", str(args.dim), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} child failed with status {proc.returncode}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=74_500)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--sharded", type=int, default=0, metavar="N",
                    help="compare the meta head with its class-sharded version over N processes")
    ap.add_argument("--project-classes", type=int, default=2_000_000)
    ap.add_argument("--project-gpus", type=int, default=8)
    ap.add_argument("--child", choices=VARIANTS + ("sharded",), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.classes, args.dim, args.batch, args.repeats,
                               args.threads)))
        return
    if args.sharded:
        sharded_main(args)
        return
    print(f"K = {args.classes:,} classes, d = {args.dim}, batch B = {args.batch}, "
          f"{args.threads} threads, median of {args.repeats} steps after 1 warm-up, "
          f"one fresh process per row")
    res = {v: run_child(v, args) for v in VARIANTS}
    print(f"{'head':<34} {'median s':>9} {'min s':>7} {'max s':>7} {'params MiB':>10} "
          f"{'peak+ MiB':>10} {'sampled+ MiB':>12}")
    labels = {"linear": "linear + CE",
              "meta": "meta-embedding + CE + centroid", "meta_ce": "meta-embedding + CE"}
    for v in VARIANTS:
        r = res[v]
        print(f"{labels[v]:<34} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
              f"{_mib(r['param_bytes']):>10} {_mib(r['maxrss_delta_bytes']):>10} "
              f"{_mib(r['sampled_peak_delta_bytes']):>12}")
    lin, meta, meta_ce = res["linear"], res["meta"], res["meta_ce"]
    print(f"ratio meta / linear (time)        = {meta['median_s'] / lin['median_s']:.2f}"
          f"   (meta CE only / linear = {meta_ce['median_s'] / lin['median_s']:.2f})")
    print(f"ratio meta / linear (peak memory) = "
          f"{meta['maxrss_delta_bytes'] / max(lin['maxrss_delta_bytes'], 1):.2f}")
    bxkxd = args.batch * args.classes * args.dim * 4
    bxk = args.batch * args.classes * 4
    print(f"for contrast: one B x K x d float32 tensor = {bxkxd / 2 ** 30:.2f} GiB; "
          f"one B x K float32 tensor = {bxk / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
