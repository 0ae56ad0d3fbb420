"""A small IJB folder in insightface's 1:1 layout whose photos align to themselves (test helper).

Each photo's five landmarks are the 112x112 ArcFace template, so the similarity transform the IJB
reader estimates is the identity and the aligned crop is the photo: a test can write the expected
features out from the photos alone."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from facelt.faces.align import template


def tiny_112_network() -> torch.nn.Module:
    """A seeded 112x112 -> 4 network small enough to export and run in a test (eval mode)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.ReLU(),
                               torch.nn.AvgPool2d(9), torch.nn.Flatten()).eval()


def write_self_aligned_ijb(root: Path, photos: np.ndarray, pairs, target: str = "ijbc",
                           scores: Optional[np.ndarray] = None) -> np.ndarray:
    """``root/loose_crop/<i>.png`` for each RGB photo (uint8, 112x112), photo ``i`` its own media
    ``i`` in template ``1 + i // 2``, detector score ``scores[i]`` (default ``0.5 + 0.1 i``);
    ``pairs``: (template a, template b, label) rows. Returns the detector scores."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    pts = " ".join(f"{v:.6f}" for v in template(112).reshape(-1))
    if scores is None:
        scores = np.round(0.5 + 0.1 * np.arange(len(photos)), 6)
    marks, faces = [], []
    for i, ph in enumerate(photos):
        cv2.imwrite(str(root / "loose_crop" / f"{i}.png"), cv2.cvtColor(ph, cv2.COLOR_RGB2BGR))
        marks.append(f"{i}.png {pts} {scores[i]:.6f}\n")
        faces.append(f"{i}.png {1 + i // 2} {i}\n")
    (root / "meta" / f"{target}_name_5pts_score.txt").write_text("".join(marks))
    (root / "meta" / f"{target}_face_tid_mid.txt").write_text("".join(faces))
    (root / "meta" / f"{target}_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {l}\n" for a, b, l in pairs))
    return scores
