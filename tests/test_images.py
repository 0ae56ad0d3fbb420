"""Transforms and image datasets on small PNG files written by the test."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from facelt.data.images import FolderImages, ListDataset, find_images
from facelt.data.lists import read_list
from facelt.data.transforms import build_transforms, eval_resize
from facelt.errors import ConfigError, DataError


def _solid(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.mark.parametrize("train", [True, False])
def test_rgb_224_and_gray_28_shapes(train):
    torch.manual_seed(0)
    rgb = Image.new("RGB", (300, 200), (10, 200, 30))
    gray = Image.new("L", (40, 30), 90)
    assert build_transforms(224, 3, train)(rgb).shape == (3, 224, 224)
    assert build_transforms(28, 1, train)(gray).shape == (1, 28, 28)


def test_eval_resize_keeps_the_256_over_224_ratio():
    assert eval_resize(224) == 256
    assert eval_resize(112) == 128
    assert eval_resize(28) == 32


def test_test_transform_normalises_with_default_statistics():
    rgb = build_transforms(224, 3, train=False)(Image.new("RGB", (256, 256), (255, 0, 128)))
    want = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for ch, w in enumerate(want):
        assert torch.allclose(rgb[ch], torch.full((224, 224), w), atol=1e-5)
    gray = build_transforms(28, 1, train=False)(Image.new("L", (32, 32), 0))
    assert torch.allclose(gray, torch.full((1, 28, 28), -1.0))  # (0 - 0.5) / 0.5
    custom = build_transforms(28, 1, train=False, mean=(0.0,), std=(1.0,))(Image.new("L", (32, 32), 51))
    assert torch.allclose(custom, torch.full((1, 28, 28), 0.2), atol=1e-6)


def test_gray_train_transform_has_no_saturation_jitter():
    from torchvision.transforms import ColorJitter
    jit = [t for t in build_transforms(28, 1, train=True).transforms if isinstance(t, ColorJitter)]
    assert len(jit) == 1 and jit[0].saturation is None and jit[0].brightness == (0.6, 1.4)
    jit = [t for t in build_transforms(224, 3, train=True).transforms if isinstance(t, ColorJitter)]
    assert jit[0].saturation == (0.6, 1.4) and jit[0].hue is None


@pytest.mark.parametrize("kw", [dict(channels=2), dict(channels=1, mean=(0.5, 0.5, 0.5)),
                                dict(channels=3, std=(0.2, 0.0, 0.2))])
def test_bad_transform_settings_are_config_errors(kw):
    with pytest.raises(ConfigError):
        build_transforms(image_size=28, train=False, **kw)


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "imgs"
    _solid(root / "a b" / "red.png", (20, 16), (255, 0, 0))
    _solid(root / "green.png", (20, 16), (0, 255, 0))
    _solid(root / "gray.png", (20, 16), 200, mode="L")
    (tmp_path / "list.txt").write_text("# comment\na b/red.png 2\ngreen.png 0\n\ngray.png 1\n"
                                       "missing.png 1\nbroken.png 0\n")
    (root / "broken.png").write_bytes(b"this is not a png")
    return tmp_path


def test_list_dataset_labels_indices_and_channel_conversion(image_root):
    lst = read_list(image_root / "list.txt")
    ds = ListDataset(lst, image_root / "imgs", transform=None, channels=3)
    x, y, i = ds[0]
    assert (y, i) == (2, 0) and x.shape == (3, 16, 20)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    x, y, i = ds[2]
    assert (y, i) == (1, 2) and x.shape == (3, 16, 20)  # L image expanded to RGB
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 200 / 255))
    gray = ListDataset(lst, image_root / "imgs", channels=1)
    x, _, _ = gray[0]
    assert x.shape == (1, 16, 20)
    assert abs(x[0, 0, 0].item() - 76 / 255) < 1e-6  # ITU-R 601-2 luma of pure red: 0.299 * 255
    batch = next(iter(DataLoader(torch.utils.data.Subset(ds, [0, 1, 2]), batch_size=3)))
    assert batch[1].tolist() == [2, 0, 1] and batch[2].tolist() == [0, 1, 2]
    sized = ListDataset(lst, image_root / "imgs", build_transforms(28, 1, train=False), channels=1)
    assert sized[1][0].shape == (1, 28, 28)


def test_missing_image_error_names_path_and_list_line(image_root):
    ds = ListDataset(read_list(image_root / "list.txt"), image_root / "imgs")
    with pytest.raises(DataError) as e:
        ds[3]
    msg = str(e.value)
    assert str(image_root / "imgs" / "missing.png") in msg
    assert "entry 3" in msg and "line 6" in msg and "does not exist" in msg


def test_undecodable_image_error_names_path(image_root):
    ds = ListDataset(read_list(image_root / "list.txt"), image_root / "imgs")
    with pytest.raises(DataError) as e:
        ds[4]
    assert str(image_root / "imgs" / "broken.png") in str(e.value)
    assert "line 7" in str(e.value) and "cannot be decoded" in str(e.value)


def test_folder_images_are_unlabelled(image_root):
    paths = find_images(image_root / "imgs")
    assert [p.name for p in paths] == ["red.png", "broken.png", "gray.png", "green.png"]
    good = [p for p in paths if p.name != "broken.png"]
    ds = FolderImages(good, build_transforms(28, 3, train=False), channels=3)
    assert len(ds) == 3
    for i in range(3):
        x, y, idx = ds[i]
        assert x.shape == (3, 28, 28) and y == -1 and idx == i
    with pytest.raises(DataError, match="missing.png"):
        FolderImages([image_root / "imgs" / "missing.png"])[0]
    with pytest.raises(DataError):
        find_images(image_root / "nope")
