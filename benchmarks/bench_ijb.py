"""Benchmark: face evaluation from features at real scale.

Not a test.  Three parts, each measured in its own child process (wall time and peak RSS of the
``facelt`` command, which includes Python start-up and imports):

* ``ijb``    -- an IJB-C-sized case in insightface's layout (``--dir``, ~1.2 GB): 469,375 images in
  23,124 templates (media of 1..8 images), 15,658,489 template pairs (genuine = same identity),
  512-d raw features (identity centre + noise, random norms and detector scores); then
  ``facelt ijb --features ... --json``.
* ``ijb1n`` -- an IJB-C-sized 1:N case (``--dir``/ijb_1n, ~1 GB): the same 469,375 images and
  23,124 templates, of which 1,772 (G1) + 1,759 (G2) enroll one subject each and 19,593 are probe
  templates of those subjects; ``facelt ijb --protocol 1n --features ... --json``.
* ``verify`` -- a 6,000-pair ``.bin`` (LFW's size; the 12,000 images are one tiny JPEG, unused
  from features) and 12,000 x 512 features; ``facelt verify --features ... --json``, plus the
  protocol alone in-process (no imports, no unpickling).

    .venv/bin/python benchmarks/bench_ijb.py [--dir /tmp/facelt_ijb_bench] [--part ijb|ijb1n|verify|all]
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
# IJB-C 1:N (facelt/faces/ijb_1n.py cites the sources): G1 + G2 + probes = the 23,124 templates
G1, G2, PROBES = 1_772, 1_759, 19_593


def write_images_and_features(d: Path, rng: np.random.Generator, t_ident: np.ndarray,
                              identities: int, images: int, dim: int, noise: float = 12.0
                              ) -> np.ndarray:
    """meta/ijbc_name_5pts_score.txt, meta/ijbc_face_tid_mid.txt and features.npy for templates
    ``1..len(t_ident)`` (template t-1 of identity ``t_ident[t-1]``): every template gets one image,
    the rest at random, in media of 1..8 consecutive images; 512-d raw features = identity centre +
    noise, random norms and detector scores.  Returns each image's 0-based template."""
    meta = d / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    templates = len(t_ident)
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
        x = centres[t_ident[img_t[a:b]]] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
        mm_f[a:b] = x * rng.uniform(5, 30, (b - a, 1)).astype(np.float32)
    mm_f.flush()
    del mm_f
    return img_t


def generate_ijb(d: Path, images: int, templates: int, pairs: int, dim: int) -> None:
    tag = d / f"ready_{images}_{templates}_{pairs}_{dim}"
    if tag.exists():
        return
    rng = np.random.default_rng(0)
    identities = templates // 5
    t_ident = rng.integers(0, identities, templates)          # template -> identity
    write_images_and_features(d, rng, t_ident, identities, images, dim)
    with open(d / "meta" / "ijbc_template_pair_label.txt", "w") as fh:
        for a in range(0, pairs, 1 << 20):
            n = min(1 << 20, pairs - a)
            t1 = rng.integers(0, templates, n)
            t2 = rng.integers(0, templates, n)
            lab = (t_ident[t1] == t_ident[t2]).astype(np.int64)
            block = np.stack([t1 + 1, t2 + 1, lab], axis=1)
            fh.write("\n".join(" ".join(map(str, r)) for r in block.tolist()) + "\n")
    tag.touch()


def generate_ijb_1n(d: Path, images: int, g1: int, g2: int, probes: int, dim: int) -> None:
    """IJB-C-sized 1:N lists: subjects 1..g1 enrolled in G1 and g1+1..g1+g2 in G2 by one template
    each (templates 1..g1+g2), then ``probes`` probe templates of random enrolled subjects; the
    CSVs in the published layout (a header, one line per image: template, subject, file)."""
    tag = d / f"ready_1n_{images}_{g1}_{g2}_{probes}_{dim}_noise8"
    if tag.exists():
        return
    rng = np.random.default_rng(2)
    subjects = g1 + g2
    t_ident = np.r_[np.arange(subjects), rng.integers(0, subjects, probes)]
    img_t = write_images_and_features(d, rng, t_ident, subjects, images, dim, noise=8.0)
    kind = np.where(img_t < g1, 0, np.where(img_t < subjects, 1, 2))
    files = ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv")
    for k, name in enumerate(files):
        rows = np.flatnonzero(kind == k)
        with open(d / "meta" / name, "w") as fh:
            fh.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            fh.writelines(f"{t + 1},{s + 1},{i}.jpg\n" for i, t, s in
                          zip(rows.tolist(), img_t[rows].tolist(), t_ident[img_t[rows]].tolist()))
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
    # peak RSS: VmHWM of the child's own address space (Linux); ru_maxrss would also count the
    # parent's memory copied at the fork (large right after generating a case)
    code = ("import resource, sys, runpy; sys.argv = ['facelt'] + sys.argv[1:];"
            "from facelt.cli import main; rc = main(sys.argv[1:]);"
            "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')];"
            "print('MAXRSS_KB', hwm[0] if hwm else "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr);"
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
    ap.add_argument("--part", choices=["ijb", "ijb1n", "verify", "all"], default="all")
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
    if args.part in ("ijb1n", "all"):
        d1 = d / "ijb_1n"
        t = time.perf_counter()
        generate_ijb_1n(d1, args.images, G1, G2, PROBES, DIM)
        print(f"IJB 1:N case ready in {time.perf_counter() - t:.0f} s under {d1}")
        r = run_child(["ijb", "--root", str(d1), "--target", "IJBC", "--features",
                       str(d1 / "features.npy"), "--protocol", "1n", "--json", "--out",
                       str(d1 / "out")])
        res = r["result"]
        print(f"ijb 1:N {res['images']:,} images, {res['probes']:,} probe x "
              f"{res['gallery_templates']:,} gallery templates: `facelt ijb --protocol 1n` process "
              f"{r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB")
        print(json.dumps({k: res[k] for k in ("rank1", "rank5", "rank10", "tpir_at_fpir",
                                              "achieved_fpir")}))


if __name__ == "__main__":
    main()
