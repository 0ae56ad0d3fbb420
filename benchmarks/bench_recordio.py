"""RecordIO read throughput and image decode speed on a generated insightface-layout rec.

    PYTHONPATH=. python benchmarks/bench_recordio.py [--images 2000] [--repeat 3]

Generates N 112x112 JPEGs with OpenCV, packs them with InsightfaceRecWriter, then times (best of
``--repeat``, warm page cache): a raw sequential ``f.read()`` of the whole file, RecordReader.scan,
random-order RecordReader.read, and RecordDataset decode + flip + normalise in one process.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from facelt.data.rec_dataset import RecordDataset
from facelt.data.recordio import InsightfaceRecWriter, RecordReader


def make_rec(prefix: Path, n: int, per_identity: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112),
                      interpolation=cv2.INTER_CUBIC)
    with InsightfaceRecWriter(prefix, num_images=n) as writer:
        for i in range(n):
            noise = rng.integers(-20, 21, base.shape)
            image = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            writer.add_image(i // per_identity, jpeg.tobytes())


def best(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "train"
        make_rec(prefix, args.images)
        rec = prefix.with_suffix(".rec")
        size = rec.stat().st_size
        reader = RecordReader(rec)
        keys = np.random.default_rng(1).permutation(reader.keys)

        def raw() -> int:
            with open(rec, "rb") as fh:
                return len(fh.read())

        def scan() -> int:
            return sum(len(r) for _, r in reader.scan())

        def random_read() -> int:
            return sum(len(reader.read(int(k))) for k in keys)

        dataset = RecordDataset(prefix, train=True)

        def decode() -> int:
            for i in range(len(dataset)):
                dataset[i]
            return len(dataset)

        raw_s, _ = best(raw, args.repeat)
        rows = [("raw f.read() (one call)", raw_s),
                ("RecordReader.scan", best(scan, args.repeat)[0]),
                ("RecordReader.read (random)", best(random_read, args.repeat)[0])]
        decode_s, n = best(decode, args.repeat)
        print(f"rec: {args.images} JPEGs 112x112, {size / 2**20:.1f} MiB, {len(reader)} records")
        print(f"{'':<32}{'MiB/s':>8}{'records/s':>11}{'vs raw':>8}")
        for name, seconds in rows:
            print(f"{name:<32}{size / 2**20 / seconds:>8.0f}{len(reader) / seconds:>11.0f}"
                  f"{raw_s / seconds:>8.2f}")
        print(f"{'decode+flip+normalise (1 proc)':<32}{'':>8}{n / decode_s:>11.0f}  images/s")


if __name__ == "__main__":
    main()
