"""facelt.data.device_decode on the CPU: batches decoded by torchvision.io.decode_jpeg (the call
that runs nvJPEG on a GPU) equal RecordDataset's OpenCV pixels, flips and labels, over the
MXNet-written faces.rec (JPEG and PNG records mixed)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facelt.data.build import make_loader
from facelt.data.device_decode import (EncodedRecordDataset, collate_encoded, decode_batch,
                                       decoded_batches)
from facelt.data.rec_dataset import RecordDataset
from facelt.data.recordio import IRHeader, RecordWriter, pack
from facelt.errors import DataError

DATA = Path(__file__).resolve().parent / "data" / "recordio"


@pytest.mark.parametrize("rgb,channels", [(True, 3), (False, 3), (True, 1)])
def test_decoded_batch_equals_record_dataset(rgb, channels):
    cpu = RecordDataset(DATA / "faces", train=False, rgb=rgb, channels=channels)
    enc = EncodedRecordDataset(DATA / "faces", train=False, rgb=rgb, channels=channels)
    batch = collate_encoded([enc[i] for i in range(len(enc))])
    # which records go to the JPEG decoder: the formats MXNet's writer recorded
    formats = json.loads((DATA / "expected.json").read_text())["faces"]["records"]
    assert batch.jpeg.tolist() == [formats[str(int(k))]["format"] == ".jpg" for k in enc.keys]
    assert 0 < int(batch.jpeg.sum()) < len(enc)
    x = decode_batch(batch, "cpu", rgb=rgb, channels=channels)
    want = torch.stack([cpu[i][0] for i in range(len(cpu))])
    assert x.shape == (12, channels, 112, 112) and x.dtype == torch.float32
    assert torch.equal(x, want)
    assert batch.labels.tolist() == [cpu[i][1] for i in range(len(cpu))]
    assert batch.indices.tolist() == list(range(12))


def test_training_flips_follow_the_cpu_pipeline():
    cpu = RecordDataset(DATA / "faces", train=True)
    enc = EncodedRecordDataset(DATA / "faces", train=True)
    order = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    torch.manual_seed(7)
    want = list(make_loader(cpu, 4, 0, sampler=order))
    torch.manual_seed(7)
    got = list(decoded_batches(make_loader(enc, 4, 0, sampler=order, collate_fn=collate_encoded),
                               "cpu"))
    assert len(got) == len(want) == 3
    for (x, y, i), (wx, wy, wi) in zip(got, want):
        assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(i, wi)
    # and some images were mirrored: flips are drawn, not skipped
    plain = RecordDataset(DATA / "faces", train=False)
    rows = torch.cat([x for x, _, _ in got])
    mirrored = [torch.equal(rows[n], plain[k][0].flip(2)) for n, k in enumerate(order)]
    assert 0 < sum(mirrored) < len(order)


def test_images_of_different_sizes_are_refused(tmp_path):
    prefix = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    with RecordWriter(f"{prefix}.rec", f"{prefix}.idx") as w:
        for i, size in enumerate((16, 24)):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            w.write(i, pack(IRHeader(0, 0.0, i, 0), cv2.imencode(".jpg", img)[1].tobytes()))
    enc = EncodedRecordDataset(prefix, train=False)
    with pytest.raises(DataError, match=r"batch 0.*different sizes"):
        next(decoded_batches(make_loader(enc, 2, 0, collate_fn=collate_encoded), "cpu"))
