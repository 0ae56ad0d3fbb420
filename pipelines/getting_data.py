"""What each benchmark needs on disk, where to get it, and the next command to run.

:func:`missing_data_message` looks (cheaply: a few file checks, no full list read) whether a
recipe's training data is there; when it is not, it returns one message naming what is missing,
what to download and the command to run next. The CLI turns it into a ``DataError`` (exit 2)
before any work starts. MegaFace (no recipe, feature files) has :data:`MEGAFACE_HOWTO`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from facelt.config import Config
from facelt.data.build import split_location
from facelt.data.lists import read_list

#: per recipe name: what the data is and where it comes from; the next commands
HOWTO = {
    "ms1m_lt": (
        "MS1M-LT is sampled from MS1M-ArcFace: get 'faces_emore' (train.rec, train.idx, property) "
        "from insightface's dataset zoo (github.com/deepinsight/insightface, recognition/_datasets_)",
        "facelt prepare --dataset ms1m_lt --source FACES_EMORE_DIR --out DATA/ms1m_lt, then "
        "facelt train --dataset ms1m_lt --data-root DATA/ms1m_lt"),
    "places_lt": (
        "Places-LT needs the Places365-Standard images (places2.csail.mit.edu, 'Places365-Standard' "
        "high-resolution or 256x256 train and val images; the open set: Places-Extra69); "
        "the Places-LT split lists ship with facelt (nothing to prepare); the ImageNet ResNet-152 "
        "weights are the reference's caffe_resnet152.pth (linked from the OLTR README; or "
        "torchvision's resnet152-394f9c45.pth with --set model.pretrained_format=torchvision)",
        "facelt train --dataset places_lt --data-root PLACES365_DIR "
        "--set data.open_root=PLACES_EXTRA69_DIR --set model.pretrained=caffe_resnet152.pth"),
    "imagenet_lt": (
        "ImageNet-LT needs the ImageNet-2012 train/val images (image-net.org) and the "
        "ImageNet-2010 val images for the open set; val/test/open lists ship with facelt; "
        "ImageNet_LT_train.txt is the OLTR release's (also in classifier-balancing's "
        "data/ImageNet_LT/)",
        "facelt prepare --dataset imagenet_lt --train-list ImageNet_LT_train.txt --out SPLITS "
        "(without the file: --source IMAGENET/train rebuilds one, NOT the official split), then "
        "facelt train --dataset imagenet_lt --data-root IMAGENET "
        "--set data.train=SPLITS/ImageNet_LT_train.txt"),
}

HOWTO["fashion_lt"] = (
    "Fashion-LT is built from the Fashion-MNIST IDX files: on Debian/Ubuntu "
    "'apt-get install dataset-fashion-mnist' puts them in /usr/share/datasets/fashion-mnist "
    "(or download them from github.com/zalandoresearch/fashion-mnist and pass --source DIR)",
    "facelt prepare --dataset fashion_lt --out data/fashion_lt, then "
    "facelt train --dataset fashion_lt")

# the face-team recipe trains on the same MS1M-LT data
HOWTO["ms1m_lt_iresnet50"] = (
    HOWTO["ms1m_lt"][0],
    HOWTO["ms1m_lt"][1].replace("facelt train --dataset ms1m_lt ",
                                "facelt train --dataset ms1m_lt_iresnet50 "))

MEGAFACE_HOWTO = (
    "MegaFace challenge 1 needs the FaceScrub probe images (with facescrub_actors.txt / "
    "facescrub_actresses.txt) and the MegaFace 1M distractor set (megaface.cs.washington.edu), "
    "aligned to 112x112 ('facelt align'). Next: facelt megaface-probes --root FACESCRUB "
    "--actors facescrub_actors.txt --actresses facescrub_actresses.txt --out probes.csv; "
    "facelt extract-features --checkpoint CKPT --images FACESCRUB --out probes.npy (and "
    "--images MEGAFACE --out distractors.npy); then facelt megaface-eval --gallery 1M "
    "--probe-list probes.csv --probe-features probes.npy --distractor-features distractors.npy")

#: list images looked at to tell "no data here" from a few missing files (reported elsewhere)
SAMPLED_IMAGES = 3


def _missing_train_source(cfg: Config) -> Optional[str]:
    """What of the training data is absent (None: it looks present)."""
    data = cfg.data
    loc = split_location(data, "train")
    if loc is None:
        return "no training split is configured (data.train is empty)"
    if data.format == "rec":
        absent = [p for p in (Path(f"{loc}.rec"), Path(f"{loc}.idx")) if not p.is_file()]
        return f"{', '.join(str(p) for p in absent)} not found" if absent else None
    if not loc.is_file():
        return f"the training list {loc} (data.train) was not found"
    root = Path(data.root) if data.root else Path(".")
    if not root.is_dir():
        return f"the image folder {root} (data.root) was not found"
    items = read_list(loc).items[:SAMPLED_IMAGES]
    if items and not any((root / item).is_file() for item in items):
        return (f"none of the first images of {loc} is under data.root {root} "
                f"(e.g. {root / items[0]})")
    return None


def missing_data_message(cfg: Config) -> Optional[str]:
    """One message when recipe ``cfg``'s training data is absent: what is missing, what to get,
    the next command; None when the data looks present or the recipe is no known benchmark."""
    if cfg.name not in HOWTO:
        return None
    missing = _missing_train_source(cfg)
    if missing is None:
        return None
    what, next_cmd = HOWTO[cfg.name]
    return f"{cfg.name} data not found: {missing}. {what}. Next: {next_cmd}"
