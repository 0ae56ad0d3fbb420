"""Benchmark: face evaluation from features at real scale.

Not a test.  Two parts, each measured in its own child process (wall time and peak RSS of the
``facelt`` command, which includes Python start-up and imports):

* ``ijb``    -- an IJB-C-sized case in insightface's layout (``--dir``, ~1.2 GB): 469,375 images in
  23,124 templates (media of 1..8 images), 15,658,489 template pairs (genuine = same identity),
  512-d raw features (identity centre + noise, random norms and detector scores); then
  ``facelt ijb --features ... --json``.
* ``verify`` -- a 6,000-pair ``.bin`` (LFW's size; the 12,000 images are one tiny JPEG, unused
  from features) and 12,000 x 512 features; ``facelt verify --features ... --json``, plus the
  protocol alone in-process (no imports, no unpickling).

    .venv/bin/python benchmarks/bench_ijb.py [--dir /tmp/facelt_ijb_bench] [--part ijb|verify|all]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES, TEMPLATES, PAIRS, DIM = 469_375, 23_124, 15_658_489, 512


def generate_ijb(d: Path, images: int, templates: int, pairs: int, dim: int) -> None:
    tag = d / f"ready_{images}_{templates}_{pairs}_{dim}"
    if tag.exists():
        return
    meta = d / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    identities = templates // 5
    t_ident = rng.integers(0, identities, templates)          # template -> identity
    img_t = np.sort(np.r_[np.arange(templates), rng.integers(0, templates, images - templates)])
    # media: runs of 1..8 consecutive images inside a template
    media = np.empty(images, dtype=np.int64)
    m, prev = 0, -1
    left = 0
    for i, t in enumerate(img_t.tolist()):
        if t != prev or left == 0:
            m += 1
            left = int(rng.integers(1, 9))
            prev = t
        media[i] = m
        left -= 1
    names = [f"{i}.jpg" for i in range(images)]
    scores = rng.uniform(0.5, 1.0, images)
    with open(meta / "ijbc_name_5pts_score.txt", "w") as fh:
        pts = " ".join(["50.0"] * 10)
        fh.writelines(f"{n} {pts} {s:.4f}\n" for n, s in zip(names, scores))
    with open(meta / "ijbc_face_tid_mid.txt", "w") as fh:
        fh.writelines(f"{n} {t + 1} {mm}\n" for n, t, mm in zip(names, img_t.tolist(), media.tolist()))
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    mm_f = np.lib.format.open_memmap(d / "features.npy", mode="w+", dtype=np.float32,
                                     shape=(images, dim))
    for a in range(0, images, 65536):
        b = min(a + 65536, images)
        x = centres[t_ident[img_t[a:b]]] + 12.0 * rng.standard_normal((b - a, dim), dtype=np.float32)
        mm_f[a:b] = x * rng.uniform(5, 30, (b - a, 1)).astype(np.float32)
    mm_f.flush()
    del mm_f
    with open(meta / "ijbc_template_pair_label.txt", "w") as fh:
        for a in range(0, pairs, 1 << 20):
            n = min(1 << 20, pairs - a)
            t1 = rng.integers(0, templates, n)
            t2 = rng.integers(0, templates, n)
            lab = (t_ident[t1] == t_ident[t2]).astype(np.int64)
            block = np.stack([t1 + 1, t2 + 1, lab], axis=1)
            fh.write("\n".join(" ".join(map(str, r)) for r in block.tolist()) + "\n")
    tag.touch()


def generate_verify(d: Path, pairs: int = 6000, dim: int = DIM) -> None:
    import cv2
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    rng = np.random.default_rng(1)
    issame = [bool(i % 2 == 0) for i in range(pairs)]
    (d / "lfw.bin").write_bytes(pickle.dumps(([jpg.tobytes()] * (2 * pairs), issame), protocol=4))
    x = rng.standard_normal((2 * pairs, dim), dtype=np.float32)
    same = np.flatnonzero(np.asarray(issame))
    x[2 * same + 1] = x[2 * same] + 1.2 * rng.standard_normal((len(same), dim), dtype=np.float32)
    np.save(d / "lfw_features.npy", x)


def run_child(cmd: list[str]) -> dict:
    t = time.perf_counter()
    code = ("import resource, sys, runpy; sys.argv = ['facelt'] + sys.argv[1:];"
            "from facelt.cli import main; rc = main(sys.argv[1:]);"
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr);"
            "sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACELT_QUIET": "1"}
    p = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}):\n{p.stderr}")
    rss = [int(ln.split()[1]) for ln in p.stderr.splitlines() if ln.startswith("MAXRSS_KB")][0]
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(rss / 1024, 1),
            "result": json.loads(p.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="/tmp/facelt_ijb_bench")
    ap.add_argument("--part", choices=["ijb", "verify", "all"], default="all")
    ap.add_argument("--images", type=int, default=IMAGES)
    ap.add_argument("--templates", type=int, default=TEMPLATES)
    ap.add_argument("--pairs", type=int, default=PAIRS)
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    if args.part in ("verify", "all"):
        generate_verify(d)
        from facelt.faces.verification import read_bin, verification_metrics
        _, issame = read_bin(d / "lfw.bin")
        feats = np.load(d / "lfw_features.npy")
        t = time.perf_counter()
        verification_metrics(feats, issame)
        proto = time.perf_counter() - t
        r = run_child(["verify", "--bin", str(d / "lfw.bin"), "--features",
                       str(d / "lfw_features.npy"), "--json"])
        print(f"verify 6,000 pairs from features: protocol alone {proto:.3f} s; "
              f"`facelt verify` process {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB; "
              f"accuracy {r['result']['accuracy']:.4f}")
    if args.part in ("ijb", "all"):
        t = time.perf_counter()
        generate_ijb(d, args.images, args.templates, args.pairs, DIM)
        print(f"IJB case ready in {time.perf_counter() - t:.0f} s under {d}")
        r = run_child(["ijb", "--root", str(d), "--target", "IJBC", "--features",
                       str(d / "features.npy"), "--json", "--out", str(d / "out")])
        res = r["result"]
        print(f"ijb {res['images']:,} images, {res['templates']:,} templates, {res['pairs']:,} "
              f"pairs: `facelt ijb` process {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB")
        print(json.dumps(res["tar_at_far"]))


if __name__ == "__main__":
    main()
