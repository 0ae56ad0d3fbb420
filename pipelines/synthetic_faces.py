"""SYNTHETIC face identities for demos and tests (no real person, no real photo).

Every identity here is SYNTHETIC: a random parametric cartoon "face" drawn with OpenCV, fully
determined by an integer identity seed -- background and skin colours, face-ellipse shape, hair
band, eyebrows, eyes, nose, mouth, optional beard / glasses, and a low-frequency skin texture.
Each image of an identity varies the pose (small rotation, scale, shift, horizontal squash),
the expression (small feature jitter), the colour (brightness / contrast / per-channel gain),
the sharpness (Gaussian blur) and adds sensor noise, so identities are learnable but not trivial.

Images are 112x112 (or ``size``) BGR uint8, the insightface crop size.  Training sets are written
in the insightface RecordIO layout (``prefix.rec`` / ``prefix.idx`` / ``property``) through
:class:`facelt.data.recordio.InsightfaceRecWriter`, one image at a time (never all in memory), with
a ``<prefix>.manifest.json`` that says the data is synthetic and how it was made.

Identity seeds live in separate namespaces (``train``, ``distractor``), so synthetic distractor
identities are disjoint from training identities by construction; probe images of any identity
are drawn from an image stream separate from the one that made its training images.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from facelt.data.recordio import InsightfaceRecWriter, IRHeader, RecordWriter, pack
from facelt.utils.io import write_json
from facelt.utils.progress import progress

#: Seed namespaces: identities of different roles never share a parameter stream.
ROLES = {"train": 0, "distractor": 1}
#: Image streams: an identity's training images and its probe images never share a stream.
_STREAM_TRAIN, _STREAM_PROBE = 0, 1
_REF = 112.0  # geometry below is written for a 112-pixel canvas and scaled to ``size``


def identity_seed(seed: int, index: int, role: str = "train") -> int:
    """The 64-bit seed of SYNTHETIC identity ``index`` of ``role`` in dataset ``seed``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    ss = np.random.SeedSequence([int(seed), ROLES[role], int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def _image_rng(id_seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([id_seed, 7919, stream])))


@dataclass(frozen=True)
class FaceParams:
    """The parameters of one SYNTHETIC identity (coordinates on a 112-pixel canvas)."""

    bg_top: tuple
    bg_bottom: tuple
    skin: tuple
    hair: tuple
    iris: tuple
    lips: tuple
    center: tuple          # face-ellipse centre (x, y)
    axes: tuple            # face-ellipse half axes (ax, ay)
    hair_depth: float      # how far the hair band comes down from the top of the face
    hair_tilt: float       # fringe tilt in degrees
    eye_y: float
    eye_dx: float          # half distance between the eyes
    eye_axes: tuple
    brow_gap: float
    brow_tilt: float
    brow_thick: int
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_h: float
    beard: bool
    glasses: bool
    texture: np.ndarray    # (112, 112) float32 skin texture in [-1, 1]


def _colour(rng: np.random.Generator, lo: Sequence[int], hi: Sequence[int]) -> tuple:
    return tuple(float(rng.uniform(a, b)) for a, b in zip(lo, hi))


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A few random plane waves: an identity-specific low-frequency skin pattern in [-1, 1]."""
    yy, xx = np.mgrid[0:int(_REF), 0:int(_REF)].astype(np.float32) / _REF
    tex = np.zeros_like(xx)
    for _ in range(3):
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(2.0, 9.0)
        phase = rng.uniform(0, 2 * math.pi)
        tex += np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    return (tex / 3.0).astype(np.float32)


def face_params(id_seed: int) -> FaceParams:
    """Draw the parameters of the SYNTHETIC identity with seed ``id_seed``."""
    rng = np.random.Generator(np.random.PCG64(id_seed))
    tone = rng.uniform(0.0, 1.0)  # dark .. light skin, BGR with R > G > B
    skin = (40 + 150 * tone + rng.uniform(-15, 15), 70 + 140 * tone + rng.uniform(-15, 15),
            110 + 130 * tone + rng.uniform(-10, 10))
    return FaceParams(
        bg_top=_colour(rng, (0, 0, 0), (255, 255, 255)),
        bg_bottom=_colour(rng, (0, 0, 0), (255, 255, 255)),
        skin=tuple(min(255.0, s) for s in skin),
        hair=_colour(rng, (0, 0, 0), (200, 200, 230)),
        iris=_colour(rng, (10, 10, 10), (200, 160, 120)),
        lips=_colour(rng, (40, 40, 110), (140, 120, 220)),
        center=(56 + rng.uniform(-3, 3), 60 + rng.uniform(-3, 3)),
        axes=(rng.uniform(30, 40), rng.uniform(40, 50)),
        hair_depth=rng.uniform(6, 24),
        hair_tilt=rng.uniform(-15, 15),
        eye_y=rng.uniform(47, 55),
        eye_dx=rng.uniform(12, 20),
        eye_axes=(rng.uniform(4, 7.5), rng.uniform(2, 4.5)),
        brow_gap=rng.uniform(5, 10),
        brow_tilt=rng.uniform(-12, 12),
        brow_thick=int(rng.integers(1, 4)),
        nose_len=rng.uniform(9, 18),
        nose_w=rng.uniform(4, 10),
        mouth_y=rng.uniform(78, 90),
        mouth_w=rng.uniform(8, 16),
        mouth_h=rng.uniform(1.5, 5),
        beard=bool(rng.random() < 0.25),
        glasses=bool(rng.random() < 0.2),
        texture=_texture(rng),
    )


def _pt(x: float, y: float, k: float) -> tuple:
    return (int(round(x * k * 16)), int(round(y * k * 16)))  # 4-bit sub-pixel precision


def _ax(a: float, b: float, k: float) -> tuple:
    return (max(1, int(round(a * k * 16))), max(1, int(round(b * k * 16))))


def _base_face(p: FaceParams, size: int) -> np.ndarray:
    """The static part of identity ``p`` (background, neck, textured face, beard, hair), float32."""
    k = size / _REF
    aa, sh = cv2.LINE_AA, 4
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img = (np.asarray(p.bg_top, np.float32) * (1 - ramp) + np.asarray(p.bg_bottom, np.float32) * ramp)
    img = np.ascontiguousarray(np.broadcast_to(img, (size, size, 3)))
    cx, cy = p.center
    ax, ay = p.axes
    # neck and shoulders, then the face with its texture
    cv2.rectangle(img, _pt(cx - ax * 0.45, cy, k), _pt(cx + ax * 0.45, _REF, k), p.skin, -1, aa, sh)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, _pt(cx, cy, k), _ax(ax, ay, k), 0, 0, 360, 255, -1, aa, sh)
    tex = p.texture if size == int(_REF) else cv2.resize(p.texture, (size, size))
    skin = np.asarray(p.skin, np.float32) * (1.0 + 0.12 * tex[..., None])
    m = (mask.astype(np.float32) / 255.0)[..., None]
    img = img * (1 - m) + skin * m
    if p.beard:
        beard = np.zeros_like(mask)
        cv2.ellipse(beard, _pt(cx, cy + ay * 0.35, k), _ax(ax * 0.85, ay * 0.62, k), 0, 0, 180, 255, -1, aa, sh)
        b = (beard.astype(np.float32) / 255.0)[..., None] * m * 0.8
        img = img * (1 - b) + np.asarray(p.hair, np.float32) * b
    # hair band: the top of the face ellipse above a tilted fringe line
    top = cy - ay
    hair = np.zeros_like(mask)
    cv2.ellipse(hair, _pt(cx, cy, k), _ax(ax + 3, ay + 4, k), 0, 180, 360, 255, -1, aa, sh)
    t = math.tan(math.radians(p.hair_tilt))
    fringe = top + p.hair_depth
    poly = np.array([_pt(0, fringe - t * cx, k), _pt(_REF, fringe + t * (_REF - cx), k),
                     _pt(_REF, _REF, k), _pt(0, _REF, k)], np.int32)
    cv2.fillPoly(hair, [poly], 0, aa, sh)
    h = (hair.astype(np.float32) / 255.0)[..., None]
    img = img * (1 - h) + np.asarray(p.hair, np.float32) * h
    return img


def _draw_face(p: FaceParams, base: np.ndarray, jit: np.ndarray) -> np.ndarray:
    """Draw the features of ``p`` frontal on a copy of ``base``; ``jit`` is the expression jitter."""
    img = base.copy()
    size = img.shape[0]
    k = size / _REF
    aa, sh = cv2.LINE_AA, 4
    cx = p.center[0]
    # features (each shifted by the per-image expression jitter)
    ey = p.eye_y + jit[0]
    for side in (-1, 1):
        ex = cx + side * (p.eye_dx + jit[1])
        cv2.ellipse(img, _pt(ex, ey, k), _ax(p.eye_axes[0], p.eye_axes[1] * (1 + 0.2 * jit[2]), k),
                    0, 0, 360, (235, 235, 235), -1, aa, sh)
        cv2.circle(img, _pt(ex + jit[3], ey, k), max(1, int(round(p.eye_axes[1] * 0.8 * k * 16))),
                   p.iris, -1, aa, sh)
        by = ey - p.brow_gap - p.eye_axes[1]
        dy = side * math.tan(math.radians(p.brow_tilt)) * p.eye_axes[0]
        cv2.line(img, _pt(ex - p.eye_axes[0] * 1.2, by + dy, k), _pt(ex + p.eye_axes[0] * 1.2, by - dy, k),
                 p.hair, max(1, int(round(p.brow_thick * k))), aa, sh)
        if p.glasses:
            cv2.circle(img, _pt(ex, ey, k), max(1, int(round((p.eye_axes[0] + 3) * k * 16))),
                       (30, 30, 30), max(1, int(round(k))), aa, sh)
    ny = ey + p.nose_len
    nose = np.array([_pt(cx, ey + 2, k), _pt(cx - p.nose_w / 2, ny, k), _pt(cx + p.nose_w / 2, ny, k)], np.int32)
    shade = tuple(0.75 * c for c in p.skin)
    cv2.polylines(img, [nose], False, shade, max(1, int(round(k))), aa, sh)
    my = p.mouth_y + jit[0]
    cv2.ellipse(img, _pt(cx, my, k), _ax(p.mouth_w * (1 + 0.1 * jit[4]), p.mouth_h * (1 + 0.4 * jit[2]), k),
                0, 0, 360, p.lips, -1, aa, sh)
    return img


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image pose, colour, blur and noise variation; float32 in, uint8 out."""
    size = img.shape[0]
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-4, 4, 2) * size / _REF
    yaw = rng.uniform(-0.08, 0.08)  # horizontal squash: a crude out-of-plane turn
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 0] *= 1.0 - abs(yaw)
    m[:, 2] += shift + np.array([yaw * size / 2, 0.0])
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain = (rng.uniform(0.85, 1.15) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    offset = (128.0 * (1.0 - gain) + rng.uniform(-20, 20)).astype(np.float32)
    img *= gain                 # contrast and per-channel colour gain around mid-grey
    img += offset               # and a brightness shift
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    # sensor noise: zero-mean uniform with std 1.5..5 grey levels (4x cheaper to draw than normal)
    noise = rng.random(img.shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(rng.uniform(1.5, 5.0) * math.sqrt(12.0))
    img += noise
    return cv2.convertScaleAbs(np.clip(img, 0, 255, out=img))


def render_identity_images(identity_seed: int, n: int, size: int = 112,
                           rng: Optional[np.random.Generator] = None) -> list[np.ndarray]:
    """``n`` BGR uint8 ``size`` x ``size`` images of the SYNTHETIC identity ``identity_seed``.

    The identity (its face parameters) comes from ``identity_seed`` alone; the per-image pose,
    expression, colour, blur and noise come from ``rng`` (a fresh stream of the identity when
    ``None``).
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    if rng is None:
        rng = _image_rng(identity_seed, _STREAM_TRAIN)
    return list(_iter_images(identity_seed, n, size, rng))


def _iter_images(id_seed: int, n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield ``n`` images of SYNTHETIC identity ``id_seed`` one at a time (the identity's static
    part is drawn once)."""
    p = face_params(id_seed)
    base = _base_face(p, size)
    for _ in range(n):
        jit = rng.uniform(-1.0, 1.0, 5).astype(np.float32)
        yield _augment(_draw_face(p, base, jit), rng)


def long_tail_counts(num_identities: int, max_count: int, min_count: int, alpha: float,
                     seed: int) -> np.ndarray:
    """Images per SYNTHETIC identity, following a truncated Pareto law (a long tail).

    The law: a continuous Pareto of shape ``alpha`` and scale ``min_count`` truncated to
    ``[min_count, max_count + 1)``; a count is the floor of a draw, so it lies in
    ``[min_count, max_count]`` and ``P(count >= k) = ((m/k)^a - (m/(M+1))^a) / (1 - (m/(M+1))^a)``.
    Draws are stratified (the r-th of n uses ``u = (r + U) / n``), so the empirical distribution is
    within ``1/n`` of the law for any ``n``; the identities come in a seeded random order.
    """
    if num_identities < 1 or not (1 <= min_count <= max_count) or alpha <= 0:
        raise ValueError("need num_identities >= 1, 1 <= min_count <= max_count and alpha > 0")
    rng = np.random.Generator(np.random.PCG64(seed))
    u = (np.arange(num_identities) + rng.random(num_identities)) / num_identities
    m, top = float(min_count), float(max_count + 1)
    tail = (m / top) ** alpha
    x = m * (1.0 - u * (1.0 - tail)) ** (-1.0 / alpha)
    counts = np.clip(np.floor(x), min_count, max_count).astype(np.int64)
    return rng.permutation(counts)


def _encode(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only on a broken install
        raise RuntimeError("OpenCV could not JPEG-encode an image")
    return buf.tobytes()


def write_plain_rec(prefix: str | os.PathLike, images: Sequence[np.ndarray] | np.ndarray,
                    labels: Sequence[int] | np.ndarray, quality: int = 95) -> None:
    """A plain rec (no identity records): one JPEG record a row, key = row, header label = its
    label (the evaluation sets of the demo)."""
    os.makedirs(os.path.dirname(os.fspath(prefix)) or ".", exist_ok=True)
    with RecordWriter(f"{prefix}.rec", f"{prefix}.idx") as w:
        for i, (img, lab) in enumerate(zip(images, labels)):
            w.write(i, pack(IRHeader(0, float(lab), i, 0), _encode(img, quality)))


def _write_identities(prefix: str | os.PathLike, counts: np.ndarray, seed: int, role: str,
                      quality: int, size: int, desc: str) -> dict:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 1).any():
        raise ValueError("counts must be a non-empty 1-d array of positive image counts")
    total = int(counts.sum())
    # the writer renames its files into place only once complete (removed on an exception)
    with InsightfaceRecWriter(prefix, num_images=total, image_size=(size, size)) as writer, \
            progress(total=total, desc=desc, unit="img") as bar:
        for label, c in enumerate(counts.tolist()):
            sid = identity_seed(seed, label, role)
            for img in _iter_images(sid, c, size, _image_rng(sid, _STREAM_TRAIN)):
                writer.add_image(label, _encode(img, quality))  # one image in memory at a time
                bar.update(1)
    manifest = {
        "synthetic": True,
        "description": "SYNTHETIC parametric cartoon faces drawn with OpenCV by "
                       "pipelines.synthetic_faces; no real person or photo.",
        "role": role, "seed": int(seed), "image_size": [size, size], "jpeg_quality": int(quality),
        "num_identities": int(counts.size), "num_images": total,
    }
    if role == "train":
        manifest["counts"] = counts.tolist()
    else:
        manifest["images_per_identity"] = int(counts[0])
    write_json(f"{os.fspath(prefix)}.manifest.json", manifest)
    return manifest


def write_synthetic_rec(prefix: str | os.PathLike, counts: Sequence[int] | np.ndarray, seed: int,
                        quality: int = 95, size: int = 112) -> dict:
    """Write a SYNTHETIC training set: identity ``i`` (label ``i``) gets ``counts[i]`` JPEG images.

    Output is the insightface layout ``prefix.rec`` / ``prefix.idx`` / ``<folder>/property`` plus
    ``prefix.manifest.json`` (marked synthetic); images are streamed one by one.  Returns the
    manifest.
    """
    return _write_identities(prefix, np.asarray(counts), seed, "train", quality, size, "synthetic faces")


def write_synthetic_distractors(prefix: str | os.PathLike, num_identities: int, seed: int,
                                images_per_identity: int = 1, quality: int = 95,
                                size: int = 112) -> dict:
    """Write SYNTHETIC distractor identities, disjoint from every training identity of ``seed``.

    MegaFace-style: ``num_identities`` identities from the ``distractor`` seed namespace (never the
    ``train`` one), ``images_per_identity`` each, in the insightface layout at ``prefix`` (labels
    are distractor indices ``0..num_identities-1``), with a manifest.  Give it a folder of its own
    (the layout's ``property`` file is one per folder).  Returns the manifest.
    """
    if num_identities < 1 or images_per_identity < 1:
        raise ValueError("need num_identities >= 1 and images_per_identity >= 1")
    counts = np.full(num_identities, images_per_identity, dtype=np.int64)
    return _write_identities(prefix, counts, seed, "distractor", quality, size, "synthetic distractors")


def synthetic_probes(identities: Sequence[int] | np.ndarray, images_per_identity: int, seed: int,
                     size: int = 112, stream: int = _STREAM_PROBE) -> tuple[np.ndarray, np.ndarray]:
    """New images of SYNTHETIC training-namespace identities, for probe (query) sets.

    ``identities`` are training-namespace indices: an index below the training set's identity
    count probes a seen identity (with images it was never trained on: a separate image stream),
    an index at or above it probes an identity unseen in training.  Either way the identities
    are disjoint from :func:`write_synthetic_distractors`'.  Returns ``(images, identity_ids)``
    with images ``(N, size, size, 3)`` BGR uint8.  ``seed`` must be the training set's seed (it
    defines the identities); ``stream`` (>= 1, never 0 = the training images) picks another set of
    new images of the same identities.
    """
    if stream == _STREAM_TRAIN:
        raise ValueError("stream 0 is the training images' stream; probes need another one")
    ids = np.asarray(identities, dtype=np.int64).reshape(-1)
    if images_per_identity < 1:
        raise ValueError("images_per_identity must be >= 1")
    images = np.empty((ids.size * images_per_identity, size, size, 3), np.uint8)
    row = 0
    for i in ids.tolist():
        sid = identity_seed(seed, i, "train")
        for img in render_identity_images(sid, images_per_identity, size, _image_rng(sid, stream)):
            images[row] = img
            row += 1
    return images, np.repeat(ids, images_per_identity)
