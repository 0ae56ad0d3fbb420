"""Five-point similarity alignment to the ArcFace crop template.

The template is insightface's ``arcface_dst``: the positions of the left eye, right eye, nose tip,
left mouth corner and right mouth corner (image left/right, i.e. as the face appears in the
photo) in a 112x112 crop.  Other crop sizes follow insightface's ``estimate_norm`` rule:

* a size that is a multiple of 112 scales the template by ``size / 112``;
* otherwise a multiple of 128 scales it by ``size / 128`` and shifts x by ``8 * size / 128``
  (the 112-wide face centred in a 128-wide crop, as in the 128x128 insightface models).

The similarity (rotation + uniform scale + translation, never a reflection) from the detected
landmarks to the template is Umeyama's closed-form least-squares solution, and the crop is
``cv2.warpAffine`` with bilinear interpolation and a black border, exactly as insightface's
``norm_crop`` does (it calls ``skimage``'s ``SimilarityTransform.estimate``, i.e. Umeyama, and
``cv2.warpAffine`` with its default ``INTER_LINEAR`` and ``borderValue=0``).
"""
from __future__ import annotations

import cv2
import numpy as np

from facelt.errors import FaceltError

#: insightface ``arcface_dst`` for a 112x112 crop: (x, y) of left eye, right eye, nose,
#: left mouth corner, right mouth corner.
ARCFACE_DST_112 = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if insightface's template rule covers it, else raise FaceltError."""
    size = int(image_size)
    if size <= 0 or (size % 112 != 0 and size % 128 != 0):
        raise FaceltError(
            f"aligned image size {image_size} is not supported: it must be a multiple of 112 "
            "(e.g. 112, 224) or of 128 (e.g. 128, 256), as in insightface's estimate_norm")
    return size


def template(image_size: int = 112) -> np.ndarray:
    """The five reference points (float64, shape (5, 2)) for a square crop of ``image_size``."""
    size = check_image_size(image_size)
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    # Same arithmetic as insightface: the float32 template times the ratio (in float32), then
    # the x shift; promoted to float64 only afterwards so the matrices agree bit for bit.
    dst = ARCFACE_DST_112 * np.float32(ratio)
    dst[:, 0] += np.float32(shift_x)
    return dst.astype(np.float64)


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise FaceltError(f"{name} must be an (N, 2) array of (x, y) points with N >= 2, "
                          f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FaceltError(f"{name} holds a non-finite coordinate: {arr.tolist()}")
    return arr


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping ``src`` points onto ``dst`` points (Umeyama 1991).

    Returns the 2x3 matrix ``M`` with ``dst ~= M @ [x, y, 1]``: ``M[:, :2] = s * R`` where
    ``R`` is a proper rotation (det +1; a reflection is never produced, even when the best
    unconstrained fit would mirror) and ``s > 0``.
    """
    src = _as_points(src, "source landmarks")
    dst = _as_points(dst, "reference landmarks")
    if src.shape != dst.shape:
        raise FaceltError(f"source landmarks {src.shape} and reference landmarks {dst.shape} "
                          "must have the same shape")
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float((src_c ** 2).sum(axis=1).mean())
    if var_src <= 1e-12:
        raise FaceltError(f"source landmarks all coincide ({src.tolist()}): no alignment exists")

    cov = dst_c.T @ src_c / src.shape[0]
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    # Flip the weakest axis when U V^T would be a reflection; this also covers a rank-1
    # (collinear) covariance, where det(cov) = 0 but det(U) det(V) still decides.
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sing * d).sum()) / var_src
    if scale <= 0:
        raise FaceltError(f"landmarks {src.tolist()} give a degenerate similarity (scale {scale})")
    trans = mu_dst - scale * rot @ mu_src
    return np.hstack([scale * rot, trans[:, None]])


def estimate_norm(landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The 2x3 matrix taking a photo's five landmarks onto the ArcFace template."""
    pts = _as_points(landmarks5, "landmarks")
    if pts.shape != (5, 2):
        raise FaceltError(f"alignment needs 5 landmarks (left eye, right eye, nose, left mouth, "
                          f"right mouth), got shape {pts.shape}")
    return estimate_similarity(pts, template(image_size))


def norm_crop(img: np.ndarray, landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Warp ``img`` (H x W or H x W x C) into an aligned ``image_size`` square crop."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        raise FaceltError(f"expected an H x W (x C) image array, got "
                          f"{getattr(img, 'shape', type(img).__name__)}")
    size = check_image_size(image_size)
    matrix = estimate_norm(landmarks5, size)
    return cv2.warpAffine(img, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
