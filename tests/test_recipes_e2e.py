"""The ImageNet-LT and Places-LT recipes run end to end on generated 224x224 images (CPU, a few
steps): the configs load, the pretrained-weights path works on weights the test saves, and the
Places-LT stage 2 freezes exactly the backbone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelt.cli import main
from facelt.config import load_config
from facelt.models.checkpoint import load_checkpoint
from facelt.train.stage import build_stage
from tests.conftest import ROOT


def _write_split(root: Path, name: str, counts: dict[int, int], prefix: str) -> Path:
    rng = np.random.default_rng(len(name))
    lines = []
    for label, n in counts.items():
        for i in range(n):
            rel = f"{prefix}/c{label if label >= 0 else 'open'}/{name}_{label}_{i}.png"
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(p)
            lines.append(f"{rel} {label}")
    lst = root / f"{name}.txt"
    lst.write_text("\n".join(lines) + "\n")
    return lst


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    _write_split(root, "train", {0: 3, 1: 2, 2: 1}, "train")
    _write_split(root, "val", {0: 1, 1: 1, 2: 1}, "val")
    _write_split(root, "test", {0: 1, 1: 1, 2: 1}, "val")
    _write_split(root, "open", {-1: 2}, "open")
    return root


def _over(root: Path, extra: list[str]) -> list[str]:
    over = [f"data.root={root}", f"data.splits_dir={root}", f"data.open_root={root}",
            "data.train=train.txt", "data.val=val.txt", "data.test=test.txt", "data.open=open.txt",
            "data.num_workers=0", "device=cpu", "stage1.epochs=1", "stage2.epochs=1",
            "stage1.batch_size=2", "stage2.batch_size=2", "stage1.max_steps_per_epoch=1",
            "stage2.max_steps_per_epoch=1", "eval.batch_size=4"] + extra
    return [a for o in over for a in ("--set", o)]


def test_imagenet_lt_recipe_runs(tiny_benchmark, tmp_path):
    cfg = load_config(ROOT / "configs" / "imagenet_lt.yaml")
    assert cfg.model.backbone == "resnet10" and cfg.stage1.epochs == 30 and cfg.stage2.epochs == 60
    assert cfg.stage2.lr_step == 20 and cfg.stage2.backbone_lr == 0.01 and cfg.stage2.classifier_lr == 0.1
    assert cfg.stage2.sampler == "class_aware" and cfg.stage2.attention
    assert main(["train", "--dataset", "imagenet_lt", "--out", str(tmp_path),
                 *_over(tiny_benchmark, [])]) == 0
    s2 = load_checkpoint(tmp_path / "stage2" / "checkpoint.pt")
    assert s2["num_classes"] == 1000 and s2["model"]["head.centroids"].shape == (1000, 512)
    # class names from the train folders (train/c<label>/...); classes without images keep their index
    assert s2["class_names"][:4] == ["c0", "c1", "c2", "3"] and len(s2["class_names"]) == 1000
    assert main(["classify", "--dataset", "imagenet_lt", *_over(tiny_benchmark, []),
                 "--checkpoint", str(tmp_path / "stage2" / "checkpoint.pt"),
                 "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "report.json").is_file()


def test_places_lt_pretrained_and_freezing(tiny_benchmark, tmp_path):
    import torchvision
    weights = tmp_path / "resnet152-test.pth"
    ref = torchvision.models.resnet152(weights=None).state_dict()
    torch.save(ref, weights)
    over = _over(tiny_benchmark, [f"model.pretrained={weights}", "model.pretrained_format=torchvision"])
    cfg = load_config(ROOT / "configs" / "places_lt.yaml", over[1::2])
    # the pretrained weights are what stage 1 starts from
    parts = build_stage(cfg, 1, out=tmp_path / "probe")
    own = parts.net.body.backbone.state_dict()
    for k in ("conv1.weight", "layer4.2.conv3.weight", "layer3.35.bn2.running_mean"):
        assert torch.equal(own[k], ref[k]), k

    assert main(["train", "--dataset", "places_lt", "--out", str(tmp_path / "run"), *over]) == 0
    # stage 2 starts from stage 1's best-on-val weights (the reference's state_dict_best)
    s1 = load_checkpoint(tmp_path / "run" / "stage1" / "best.pt")["model"]
    s2 = load_checkpoint(tmp_path / "run" / "stage2" / "checkpoint.pt")["model"]
    backbone = [k for k in s1 if k.startswith("body.backbone.")]
    assert len(backbone) > 900
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k in backbone:  # frozen weights; BN statistics re-estimated (train() mode, the reference)
        if not k.endswith(stats):
            assert torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s1["body.backbone.bn1.running_mean"], s2["body.backbone.bn1.running_mean"])
    trainable = [k for k in s2 if k.startswith(("body.attention.", "head.")) and k != "head.centroids"]
    changed = [k for k in trainable if k.startswith("head.") or k.startswith("body.attention.")]
    assert any(not torch.equal(s2[k], torch.zeros_like(s2[k])) for k in changed)
    # use_fc: ReLU(Linear(2048 -> 512)) from stage 1, still trained; centroids live in 512-d
    assert not torch.equal(s1["body.fc_add.fc.weight"], s2["body.fc_add.fc.weight"])
    assert s2["head.centroids"].shape == (365, 512)
    # the attention output conv started at zero and has been updated by the one step
    assert s2["body.attention.nonlocal_block.out.weight"].abs().sum() > 0


def test_missing_pretrained_file_is_a_clear_error(tiny_benchmark, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "resnet152-394f9c45.pth"
    rc = main(["train", "--dataset", "places_lt", "--stage", "1", "--out", str(tmp_path / "r"),
               *_over(tiny_benchmark, [f"model.pretrained={missing}"])])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err
