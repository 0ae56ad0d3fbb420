"""RecordDataset over the MXNet-written faces.rec (tests/data/recordio)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.data

from facelt.data.rec_dataset import RecordDataset

DATA = Path(__file__).resolve().parent / "data" / "recordio"  # MXNet-written, copied into the repo


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((DATA / "expected.json").read_text())["faces"]["records"]


def _pixels(tensor: torch.Tensor) -> np.ndarray:
    """[-1, 1] CHW tensor back to HWC uint8."""
    return torch.round((tensor + 1.0) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()


def test_labels_and_tensors(expected):
    ds = RecordDataset(DATA / "faces", train=False)
    assert len(ds) == 12 and ds.num_classes == 4
    assert ds.labels.tolist() == [int(expected[str(k)]["label"]) for k in range(1, 13)]
    assert ds.labels.tolist()[:4] == [0, 0, 0, 1]
    for i in range(len(ds)):
        image, label, index = ds[i]
        assert image.shape == (3, 112, 112) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0 and image.min() < 0 < image.max()
        assert (label, index) == (int(ds.labels[i]), i)


def test_pixels_survive_normalisation_bgr_and_rgb(expected):
    bgr = RecordDataset(DATA / "faces", train=False, rgb=False)
    rgb = RecordDataset(DATA / "faces", train=False, rgb=True)
    for i, key in enumerate(range(1, 13)):
        want = expected[str(key)]
        if not want.get("pixels_bgr_sha256"):
            continue  # JPEG pixels depend on the decoder build; PNG pixels are exact
        pixels = _pixels(bgr[i][0])
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == want["pixels_bgr_sha256"]
        assert pixels.mean() == pytest.approx(want["pixels_bgr_mean"])
        assert torch.equal(rgb[i][0], bgr[i][0].flip(0))  # RGB = BGR with channels reversed


def test_train_flip_is_random_and_horizontal():
    plain = RecordDataset(DATA / "faces", train=False)[0][0]
    mirrored = plain.flip(2)
    assert not torch.equal(plain, mirrored)
    train = RecordDataset(DATA / "faces", train=True)
    torch.manual_seed(0)
    seen = []
    for _ in range(16):
        image = train[0][0]
        assert torch.equal(image, plain) or torch.equal(image, mirrored)
        seen.append(torch.equal(image, mirrored))
    assert any(seen) and not all(seen)
    no_flip = RecordDataset(DATA / "faces", train=True, flip=False)
    assert all(torch.equal(no_flip[0][0], plain) for _ in range(8))


def test_dataloader_workers_reopen_the_file(expected):
    ds = RecordDataset(DATA / "faces", train=False)
    ds[0]  # the parent opens the file before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    labels, indices = [], []
    for images, lab, idx in loader:
        assert images.shape == (len(lab), 3, 112, 112)
        labels += lab.tolist()
        indices += idx.tolist()
    assert indices == list(range(12)) and labels == ds.labels.tolist()
