"""A small IJB folder in insightface's 1:1 layout whose photos align to themselves (test helper).

Each photo's five landmarks are the 112x112 ArcFace template, so the similarity transform the IJB
reader estimates is the identity and the aligned crop is the photo: a test can write the expected
features out from the photos alone."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facelt.faces.align import template


def write_self_aligned_ijb(root: Path, photos: np.ndarray, pairs, target: str = "ijbc"
                           ) -> np.ndarray:
    """``root/loose_crop/<i>.png`` for each RGB photo (uint8, 112x112), photo ``i`` its own media
    ``i`` in template ``1 + i // 2``, detector score ``0.5 + 0.1 i``; ``pairs``: (template a,
    template b, label) rows. Returns the detector scores."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    pts = " ".join(f"{v:.6f}" for v in template(112).reshape(-1))
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
