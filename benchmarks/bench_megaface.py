"""Benchmark: MegaFace challenge-1 evaluation at full scale (3,530 probes x 1M x 512 float32).

Not a test.  Generates random L2-normalised features on disk (``--dir``, ~2 GB at 1M rows), then runs
three things, each in its own child process so that each one's peak RSS is measured alone:

* ``eval``  -- the whole ``eval_megaface`` evaluation (streamed exact search over the memmap file);
* ``faiss`` -- one ``faiss.IndexFlatIP`` holding the gallery, ``search(k=10)`` (the usual approach);
* ``numpy`` -- an independent plain-numpy rank-1: chunked matmul, running max per probe.

Prints wall times, the eval / faiss ratio (goal <= 1.1), whether rank-1 is identical to numpy's,
and peak RSS (goal <= 1 GiB for eval).  ``--rows 100000`` for a quick run.

    .venv/bin/python benchmarks/bench_megaface.py [--rows 1000000] [--dir /tmp/facelt_megaface_bench]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(d: Path, rows: int, probes: int, identities: int, dim: int, spread: float) -> None:
    """Random unit distractors; probes = identity centre + noise (so rank-1 is neither 0 nor 1)."""
    d.mkdir(parents=True, exist_ok=True)
    tag = d / f"ready_{rows}_{probes}_{identities}_{dim}_{spread}"
    if tag.exists():
        return
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(d / "D.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for a in range(0, rows, 65536):
        x = rng.standard_normal((min(65536, rows - a), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        mm[a:a + len(x)] = x
    mm.flush()
    del mm
    ids = np.arange(probes) % identities
    centres = rng.standard_normal((identities, dim), dtype=np.float32) / np.sqrt(dim)
    p = centres[ids] + spread * rng.standard_normal((probes, dim), dtype=np.float32) / np.sqrt(dim)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    np.save(d / "P.npy", p.astype(np.float32))
    with open(d / "P.csv", "w") as fh:
        fh.write("path,identity,gender\n")
        for i, k in enumerate(ids):
            fh.write(f"id{k}/id{k}_{i}.png,id{k},{'mf'[k % 2]}\n")
    tag.touch()


def child_eval(d: Path, rows: int, chunk: int) -> dict:
    from eval_megaface.evaluate import MegaFaceEvalConfig, run_evaluation
    t = time.perf_counter()
    rep = run_evaluation(MegaFaceEvalConfig(gallery_sizes=[rows], probe_features=d / "P.npy",
                                    probe_list=d / "P.csv", distractor_features=d / "D.npy",
                                    chunk_rows=chunk))
    return {"seconds": time.perf_counter() - t, "rank1": rep["rank1"], "trials": rep["trials"]}


def child_faiss(d: Path, rows: int, chunk: int) -> dict:
    import faiss
    q = np.load(d / "P.npy")
    xb = np.load(d / "D.npy", mmap_mode="r")
    t = time.perf_counter()
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    t_add = time.perf_counter() - t
    index.search(q, 10)
    return {"seconds": time.perf_counter() - t, "add_seconds": t_add}


def child_numpy(d: Path, rows: int, chunk: int) -> dict:
    """Independent rank-1: hit when the genuine score beats the best distractor score (ties miss)."""
    from facelt.features.files import l2_normalize
    t = time.perf_counter()
    p = l2_normalize(np.load(d / "P.npy"))
    ids = np.array([line.split(",")[1] for line in (d / "P.csv").read_text().splitlines()[1:]])
    xb = np.load(d / "D.npy", mmap_mode="r")
    best = np.full(len(p), -np.inf, np.float32)
    for a in range(0, rows, chunk // 4):
        x = l2_normalize(np.array(xb[a:a + chunk // 4]))
        for b in range(0, len(p), 1024):
            np.maximum(best[b:b + 1024], (p[b:b + 1024] @ x.T).max(axis=1), out=best[b:b + 1024])
    hits = trials = 0
    for ident in np.unique(ids):
        m = np.flatnonzero(ids == ident)
        g = p[m] @ p[m].T
        off = ~np.eye(len(m), dtype=bool)
        hits += int(((g > best[m][:, None]) & off).sum())
        trials += int(off.sum())
    return {"seconds": time.perf_counter() - t, "rank1": hits / trials, "trials": trials}


def _reset_peak_rss() -> None:
    """Linux keeps the RSS high-water mark across fork + exec, so a child would report the parent's
    peak (e.g. after it wrote the 2 GB data file); writing 5 to clear_refs resets it (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 2 ** 30
    return float("nan")


def run_child(mode: str, args: argparse.Namespace) -> dict:
    """Run one mode in a fresh process; returns its JSON result plus its own peak RSS."""
    cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--dir", str(args.dir),
           "--chunk-rows", str(args.chunk_rows)]
    env = dict(os.environ, FACELT_QUIET="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed with status {proc.returncode}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    # the child's own high-water mark (reset at its start); ru_maxrss would include the parent's
    res["peak_rss_gib"] = res.pop("own_peak_rss_gib")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=3530)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--spread", type=float, default=1.8, help="probe noise / identity centre ratio")
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/facelt_megaface_bench"))
    ap.add_argument("--child", choices=("eval", "faiss", "numpy"))
    args = ap.parse_args()
    if args.child:
        fn = {"eval": child_eval, "faiss": child_faiss, "numpy": child_numpy}[args.child]
        _reset_peak_rss()
        res = fn(args.dir, args.rows, args.chunk_rows)
        res["own_peak_rss_gib"] = _peak_rss_gib()
        print(json.dumps(res))
        return
    t = time.perf_counter()
    generate(args.dir, args.rows, args.probes, args.identities, args.dim, args.spread)
    print(f"data: {args.probes} probes x {args.rows:,} distractors x {args.dim} in {args.dir} "
          f"({time.perf_counter() - t:.1f} s to prepare)")
    ev, fa, npy = (run_child(m, args) for m in ("eval", "faiss", "numpy"))
    print(f"eval_megaface : {ev['seconds']:7.1f} s  peak RSS {ev['peak_rss_gib']:.2f} GiB  "
          f"rank-1 {ev['rank1']:.6f} over {ev['trials']:,} trials")
    print(f"faiss flat    : {fa['seconds']:7.1f} s  peak RSS {fa['peak_rss_gib']:.2f} GiB  "
          f"(add {fa['add_seconds']:.1f} s + search k=10)")
    print(f"numpy chunked : {npy['seconds']:7.1f} s  peak RSS {npy['peak_rss_gib']:.2f} GiB  "
          f"rank-1 {npy['rank1']:.6f}")
    print(f"ratio eval / faiss flat = {ev['seconds'] / fa['seconds']:.3f} (goal <= 1.1)")
    print(f"rank-1 identical to numpy: {ev['rank1'] == npy['rank1'] and ev['trials'] == npy['trials']}")
    print(f"eval peak RSS <= 1 GiB: {ev['peak_rss_gib'] <= 1.0}")


if __name__ == "__main__":
    main()
