"""Benchmark: ``facelt megaface-eval`` as a user runs it, against one bare faiss IndexFlatIP search.

Not a test.  Generates random L2-normalised features on disk (``--dir``; 3,530 probes x ``--rows``
distractors x 512 float32, ~2 GB at 1M rows), then, alternating for ``--repeats`` rounds, runs
each of these as its own process and times it from start to exit:

* ``cli``   -- ``python -m facelt megaface-eval --gallery ROWS ...`` on the feature files, writing
  its report folder (report.json, report.md, the PNG charts), on the CPU;
* ``faiss`` -- a Python process that loads the same files, adds the gallery to one
  ``faiss.IndexFlatIP`` and searches it (``k=10``): the usual approach, with nothing else.

Both pay an interpreter and their imports; the ratio is CLI / faiss wall time, median over the
rounds. Peak RSS is each process's own high-water mark from ``/usr/bin/time -v`` (a small C
parent, so nothing of this script's memory is counted; without it ``ru_maxrss`` of ``os.wait4``,
an upper bound). A plain-numpy rank-1 (chunked matmul, running max per probe) checks the CLI's.

    .venv/bin/python benchmarks/bench_megaface.py [--rows 1000000] [--repeats 3] [--dir /tmp/facelt_megaface_bench]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TIME = "/usr/bin/time"


def generate(d: Path, rows: int, probes: int, identities: int, dim: int, spread: float) -> None:
    """Random unit distractors; probes = identity centre + noise (so rank-1 is neither 0 nor 1)."""
    d.mkdir(parents=True, exist_ok=True)
    tag = d / f"ready_{rows}_{probes}_{identities}_{dim}_{spread}"
    if tag.exists():
        return
    for old in d.glob("ready_*"):
        old.unlink()
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


def child_faiss(d: Path) -> dict:
    """One IndexFlatIP over the gallery (the memory-mapped file added whole), search k=10."""
    import faiss
    q = np.load(d / "P.npy")
    xb = np.load(d / "D.npy", mmap_mode="r")
    t = time.perf_counter()
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    t_add = time.perf_counter() - t
    index.search(q, 10)
    return {"inner_seconds": time.perf_counter() - t, "add_seconds": t_add}


def child_numpy(d: Path, chunk: int = 16384) -> dict:
    """Independent rank-1: hit when the genuine score beats the best distractor score (ties miss)."""
    p = np.load(d / "P.npy")
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    ids = np.array([line.split(",")[1] for line in (d / "P.csv").read_text().splitlines()[1:]])
    xb = np.load(d / "D.npy", mmap_mode="r")
    best = np.full(len(p), -np.inf, np.float32)
    for a in range(0, len(xb), chunk):
        x = np.array(xb[a:a + chunk])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for b in range(0, len(p), 1024):
            np.maximum(best[b:b + 1024], (p[b:b + 1024] @ x.T).max(axis=1), out=best[b:b + 1024])
    hits = trials = 0
    for ident in np.unique(ids):
        m = np.flatnonzero(ids == ident)
        g = p[m] @ p[m].T
        off = ~np.eye(len(m), dtype=bool)
        hits += int(((g > best[m][:, None]) & off).sum())
        trials += int(off.sum())
    return {"rank1": hits / trials, "hits": hits, "trials": trials}


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """``(wall seconds, peak RSS GiB, stdout)`` of ``cmd`` in its own process."""
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT))
    use_time = os.access(TIME, os.X_OK)
    full = [TIME, "-v"] + cmd if use_time else cmd
    t = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    if use_time:
        kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err.decode()).group(1))
    else:  # pragma: no cover -- no /usr/bin/time
        import resource
        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, kib / 2 ** 20, out.decode()


def cli_command(d: Path, rows: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "facelt", "megaface-eval", "--gallery", str(rows),
            "--probe-features", str(d / "P.npy"), "--probe-list", str(d / "P.csv"),
            "--distractor-features", str(d / "D.npy"), "--device", "cpu", "--quiet",
            "--out", str(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=3530)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--spread", type=float, default=1.8, help="probe noise / identity centre ratio")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds of cli and faiss")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/facelt_megaface_bench"))
    ap.add_argument("--child", choices=("generate", "faiss", "numpy"))
    args = ap.parse_args()
    if args.child:
        if args.child == "generate":
            generate(args.dir, args.rows, args.probes, args.identities, args.dim, args.spread)
            res = {}
        else:
            res = (child_faiss if args.child == "faiss" else child_numpy)(args.dir)
        print(json.dumps(res))
        return
    me = [sys.executable, __file__, "--dir", str(args.dir), "--rows", str(args.rows),
          "--probes", str(args.probes), "--identities", str(args.identities), "--dim",
          str(args.dim), "--spread", str(args.spread), "--child"]
    t = time.perf_counter()
    subprocess.run(me + ["generate"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"data: {args.probes} probes x {args.rows:,} distractors x {args.dim} in {args.dir} "
          f"({time.perf_counter() - t:.1f} s to prepare); {args.repeats} alternating rounds")
    out = args.dir / "report_cli"
    rounds = []
    for r in range(args.repeats):
        shutil.rmtree(out, ignore_errors=True)
        c_wall, c_rss, _ = timed(cli_command(args.dir, args.rows, out))
        f_wall, f_rss, f_out = timed(me + ["faiss"])
        inner = json.loads(f_out.strip().splitlines()[-1])
        rounds.append((c_wall, f_wall, c_rss, f_rss))
        print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): facelt megaface-eval {c_wall:6.2f} s ({c_rss:.2f} GiB)   "
              f"faiss flat {f_wall:6.2f} s ({f_rss:.2f} GiB; add {inner['add_seconds']:.2f} s "
              f"+ search, {inner['inner_seconds']:.2f} s inside)   ratio {c_wall / f_wall:.3f}")
    rep = json.loads((out / "report.json").read_text())
    ref = json.loads(subprocess.run(me + ["numpy"], check=True, cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
    ratio = statistics.median(c / f for c, f, _, _ in rounds)
    peak = max(c for _, _, c, _ in rounds)
    print(f"median ratio facelt megaface-eval / faiss IndexFlatIP = {ratio:.3f} (goal <= 1.1)")
    print(f"megaface-eval peak RSS {peak:.2f} GiB (goal <= 1 GiB); faiss flat "
          f"{max(f for _, _, _, f in rounds):.2f} GiB")
    hits = round(rep["rank1"] * rep["trials"])  # report.json rounds its floats
    print(f"rank-1 {rep['rank1']:.6f} over {rep['trials']:,} trials ({hits:,} hits); plain numpy "
          f"{ref['hits']:,} hits: identical {hits == ref['hits'] and rep['trials'] == ref['trials']}")


if __name__ == "__main__":
    main()
