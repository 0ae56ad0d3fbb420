"""ImageNet-pretrained ResNet weights from a local file (never downloaded).

Two file kinds load into a backbone with torchvision's module names (``conv1``, ``bn1``,
``layer1`` .. ``layer4``, no ``fc``):

``torchvision``
    torchvision's published state dicts (e.g. ``resnet152-394f9c45.pth``, IMAGENET1K_V1), or any
    training checkpoint holding one: a plain dict, or wrapped under ``state_dict`` / ``model`` /
    ``state_dict_best['feat_model']`` (the OLTR reference's own checkpoints), keys possibly
    prefixed ``module.`` (DataParallel / DDP).  Input: RGB in [0, 1], normalised with mean
    (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

``caffe``
    The OLTR reference's ``caffe_resnet152.pth`` (its README links it; it is ruotianluo/
    pytorch-resnet's ``convert.py --mode pth`` conversion of Kaiming He's Caffe ResNet-152).
    What differs from a torchvision file, and what this loader does about it:

    * key names: none.  The converter built a torchvision ResNet and filled its state dict, so the
      names are torchvision's (``layer3.35.bn2.running_var``, ``layer2.0.downsample.0.weight``);
      there are no ``num_batches_tracked`` buffers (they keep the backbone's value, and are not
      reported as missing).  The OLTR reference copies keys by exact name and *silently* keeps
      random weights for any absent key; here absent keys are an error (or reported, with
      ``strict=False``).
    * input normalisation: none.  ``--mode pth`` folded Caffe's BGR / [0, 255] / mean-pixel input
      into ``conv1`` (channels reversed, scaled by 255 * std), so the file expects torchvision's
      RGB [0, 1] mean/std input, which is what the OLTR reference feeds it.  (The other
      conversion, ``--mode caffe``, expects BGR [0, 255] minus (103.939, 116.779, 123.68); that
      file cannot be told apart by its keys, so name it with care.)
    * stride placement: Caffe's ResNet strides the first 1x1 convolution (``conv1``) of the first
      bottleneck of ``layer2..4`` and pools with ``MaxPool2d(3, 2, padding=0, ceil_mode=True)``;
      torchvision strides the 3x3 ``conv2`` and pools with padding 1.  The OLTR reference loads
      the Caffe weights into the torchvision layout unchanged (the paper's Places-LT numbers come
      from that), and so does this loader by default; ``caffe_layout=True`` converts the backbone
      in place to the Caffe layout so the network computes exactly what it was trained as.

``fc.*`` keys (the 1000-way ImageNet classifier) are always dropped.  Shapes must match exactly.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facelt.errors import CheckpointError
from facelt.models.state import diff_state

TORCHVISION_RESNET152_URL = "https://download.pytorch.org/models/resnet152-394f9c45.pth"
OLTR_CAFFE_RESNET152_URL = ("https://drive.google.com/uc?export=download&"
                            "id=0B7fNdx_jAqhtckNGQ2FLd25fa3c")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMATS = ("auto", "torchvision", "caffe")
_WRAPPERS = ("state_dict", "model", "net", "backbone")
_MAX_LISTED = 10


def _where_to_get(path: Path) -> str:
    return (f"pretrained weights file {path} does not exist. facelt never downloads weights; get "
            f"the file yourself and pass its path: torchvision's ImageNet ResNet-152 "
            f"(IMAGENET1K_V1) is {TORCHVISION_RESNET152_URL} (other depths: the urls in "
            f"torchvision.models.ResNet*_Weights); the OLTR reference's Caffe ResNet-152 "
            f"(caffe_resnet152.pth) is the Google Drive file linked from the README of "
            f"github.com/zhmiao/OpenLongTailRecognition-OLTR ({OLTR_CAFFE_RESNET152_URL})")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: plain, or under a known wrapper key."""
    for _ in range(3):
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        if "state_dict_best" in obj and isinstance(obj["state_dict_best"], Mapping) \
                and "feat_model" in obj["state_dict_best"]:
            obj = obj["state_dict_best"]["feat_model"]
            continue
        inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: no state dict of tensors found (top level: {keys}); expected "
                          f"a dict of tensors, possibly under 'state_dict', 'model' or "
                          f"state_dict_best['feat_model']")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone.", "feat_model."):
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _detect_format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown weights format {fmt!r}; expected one of "
                              f"{', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    # Both files use torchvision's key names; the OLTR file is known by its name.
    return "caffe" if "caffe" in path.name.lower() else "torchvision"


def to_caffe_layout(backbone: nn.Module) -> None:
    """Move the stride of the first bottleneck of ``layer2..4`` to its 1x1 ``conv1`` and make the
    stem max-pool Caffe's (3x3, stride 2, no padding, ceil mode), in place."""
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(backbone, name)[0]
        if not hasattr(block, "conv3"):
            raise CheckpointError("caffe_layout needs a bottleneck ResNet (ResNet-50/101/152); "
                                  f"{name}[0] is a {type(block).__name__}")
        stride = block.conv2.stride
        block.conv1.stride, block.conv2.stride = stride, (1, 1)
    backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)


def _listing(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_pretrained_backbone(backbone: nn.Module, path: str | os.PathLike, fmt: str = "auto",
                             strict: bool = True, caffe_layout: bool = False) -> dict[str, Any]:
    """Load ImageNet weights from ``path`` into ``backbone`` (torchvision names, no fc).

    ``fmt``: ``"torchvision"``, ``"caffe"`` (the OLTR reference's ``caffe_resnet152.pth``) or
    ``"auto"`` (``caffe`` when the file name contains 'caffe').  ``fc.*`` is dropped.  A shape
    mismatch is a :class:`CheckpointError`; so are missing or unexpected keys unless
    ``strict=False``, which loads the rest and lists them in the report.  ``caffe_layout`` (caffe
    only) converts the backbone to the Caffe stride layout first.

    Returns ``{"path", "format", "loaded", "missing", "unexpected", "dropped", "input"}``
    (``input``: color order, value range, mean and std the weights expect).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(_where_to_get(path))
    kind = _detect_format(path, fmt)
    if caffe_layout and kind != "caffe":
        raise CheckpointError(f"caffe_layout=True needs format 'caffe', but {path} is read as "
                              f"{kind!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors vary by torch version
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from None
    sd = _strip_prefix(_unwrap(obj, path))
    dropped = sorted(k for k in sd if k.startswith("fc."))
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}

    own = backbone.state_dict()
    diff = diff_state(own, sd, optional_suffixes=("num_batches_tracked",))
    missing, unexpected, mismatched = diff.missing, diff.unexpected, diff.mismatched
    if mismatched:
        raise CheckpointError(f"{path}: {len(mismatched)} tensor(s) have the wrong shape for this "
                              f"backbone (another depth or width?): {_listing(mismatched)}")
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path} does not match the backbone: {len(missing)} missing key(s) "
            f"[{_listing(missing)}], {len(unexpected)} unexpected key(s) [{_listing(unexpected)}]; "
            f"pass strict=False to load the matching keys and keep the others as initialised")
    if caffe_layout:
        to_caffe_layout(backbone)
    loadable = {k: v for k, v in sd.items() if k in own}
    backbone.load_state_dict(loadable, strict=False)
    return {
        "path": str(path),
        "format": kind,
        "loaded": len(loadable),
        "missing": missing,
        "unexpected": unexpected,
        "dropped": dropped,
        "caffe_layout": caffe_layout,
        "input": {"color": "RGB", "range": [0.0, 1.0], "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD)},
    }
