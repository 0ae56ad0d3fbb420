"""One embedding routine for face evaluation: an embedder over uint8 RGB images, flip-sum, L2.

An *image embedder* is any object with ``input_size`` (height, width) and a call
``embedder(images) -> (B, d) float32`` over a batch of ``(B, H, W, 3)`` uint8 **RGB** images of
that size.  Two implementations: :class:`TorchEmbedder` (a facelt network, normalised the way its
training images were) and :class:`facelt.faces.onnx_io.OnnxEmbedder` (an ONNX model, insightface's
convention).  Every face protocol (verification ``.bin``, IJB, ``extract-features --onnx``) embeds
through :func:`flip_sum` / :func:`embed_array` / :func:`embed_to_file` here:

* images whose size differs from the model's are resized (``cv2.INTER_LINEAR``);
* a row is ``embed(x) + embed(mirror(x))`` (insightface's flip test), left unnormalised or L2'd;
* :func:`embed_array` also returns XNorm, insightface's mean L2 norm of the single (unflipped and
  flipped) embeddings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence, Union

import cv2
import numpy as np
import torch

from facelt.errors import DataError

#: insightface's pixel normalisation for face models: ``(x - 127.5) / 127.5`` in [-1, 1].
FACE_MEAN = 127.5
FACE_STD = 127.5


class ImageEmbedder(Protocol):
    """Embeds ``(B, H, W, 3)`` uint8 RGB images of ``input_size`` into ``(B, d)`` float32 rows."""

    input_size: tuple[int, int]

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def check_images(images: np.ndarray, where: str = "images") -> np.ndarray:
    """``images`` as a ``(B, H, W, 3)`` uint8 array, or :class:`DataError` naming ``where``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        raise DataError(f"{where}: expected (B, H, W, 3) uint8 RGB images, got "
                        f"{getattr(images, 'shape', type(images).__name__)} "
                        f"{getattr(images, 'dtype', '')}")
    return images


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 images resized to ``size`` = (height, width); unchanged if they fit."""
    h, w = int(size[0]), int(size[1])
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def mirror(images: np.ndarray) -> np.ndarray:
    """Horizontal flip of ``(B, H, W, C)`` images."""
    return np.ascontiguousarray(images[:, :, ::-1])


def _check_rows(emb: np.ndarray, n: int) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise DataError(f"the embedder returned shape {emb.shape} for {n} images; expected ({n}, d)")
    return emb


def flip_sum(embedder: ImageEmbedder, images: np.ndarray, flip: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(embed(x) + embed(mirror(x)), norms)`` for one batch (``embed(x)`` alone without ``flip``).

    ``norms`` holds the L2 norm of every single embedding computed (``2B`` with ``flip``, the
    unflipped ones first), for XNorm.
    """
    images = resize_images(check_images(images), embedder.input_size)
    a = _check_rows(embedder(images), len(images))
    norms = [np.linalg.norm(a, axis=1)]
    if flip:
        b = _check_rows(embedder(mirror(images)), len(images))
        norms.append(np.linalg.norm(b, axis=1))
        a = a + b
    return a, np.concatenate(norms)


@dataclass(frozen=True)
class Embeddings:
    """Flip-summed embeddings of a set of images and their XNorm."""

    features: np.ndarray  # (N, d) float32, unnormalised
    xnorm: float          # mean L2 norm of the single embeddings (insightface's XNorm)


def embed_array(embedder: ImageEmbedder, images: np.ndarray, batch_size: int = 64,
                flip: bool = True, desc: str = "embed") -> Embeddings:
    """Embed ``(N, H, W, 3)`` uint8 RGB images in batches (flip-summed, not normalised)."""
    from facelt.utils.progress import progress
    check_images(images)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    feats: Optional[np.ndarray] = None
    norm_sum, norm_count = 0.0, 0
    with progress(total=len(images), desc=desc, unit="img") as bar:
        for a in range(0, len(images), batch_size):
            emb, norms = flip_sum(embedder, images[a:a + batch_size], flip)
            if feats is None:
                feats = np.empty((len(images), emb.shape[1]), dtype=np.float32)
            feats[a:a + len(emb)] = emb
            norm_sum += float(norms.sum(dtype=np.float64))
            norm_count += len(norms)
            bar.update(len(emb))
    if feats is None:
        raise DataError("no images to embed")
    return Embeddings(feats, norm_sum / max(norm_count, 1))


def embed_to_file(embedder: ImageEmbedder, batches: Callable[[int], Iterable[np.ndarray]],
                  out: Union[str, Path], num_rows: int, normalize: bool, flip: bool = True,
                  fingerprint: str = "") -> Path:
    """Embed uint8 RGB batches into the stacked ``.npy`` ``out``, resumably (see
    :func:`facelt.features.files.extract_features`); ``batches(first_row)`` yields batches from that row.
    Rows are flip-summed, then L2-normalised when ``normalize``."""
    from facelt.features.files import extract_features
    first = next(iter(batches(0)), None)
    if first is None:
        raise DataError(f"no images to embed into {out}")
    dim = int(flip_sum(embedder, first[:1], flip=False)[0].shape[1])
    return extract_features(lambda x: flip_sum(embedder, x, flip)[0], batches, out, num_rows, dim,
                            flip=False, resume=True, normalize=normalize, fingerprint=fingerprint)


def batched(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack an iterator of equally sized ``(H, W, 3)`` uint8 images into batches."""
    buf: list[np.ndarray] = []
    for img in images:
        buf.append(img)
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


# ------------------------------------------------------------------------------- torch embedder

class TorchEmbedder:
    """A torch network as an :class:`ImageEmbedder`.

    ``net`` is a facelt network (its body ``net.body`` runs) or any module mapping
    ``(B, 3, H, W)`` float to ``(B, d)``.  Pixels become ``(x - mean) / std`` per channel (``mean``/``std`` in 0..255
    units; insightface's 127.5 / 127.5 by default), unless ``preprocess`` (uint8 RGB batch ->
    float tensor) is given.
    """

    def __init__(self, net: torch.nn.Module, device: Union[str, torch.device] = "cpu",
                 input_size: tuple[int, int] = (112, 112),
                 mean: Union[float, Sequence[float]] = FACE_MEAN,
                 std: Union[float, Sequence[float]] = FACE_STD,
                 preprocess: Optional[Callable[[np.ndarray], torch.Tensor]] = None) -> None:
        self.net = net
        self.device = torch.device(device)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = torch.tensor(np.broadcast_to(np.asarray(mean, np.float32), (3,)).copy()).view(1, 3, 1, 1)
        self.std = torch.tensor(np.broadcast_to(np.asarray(std, np.float32), (3,)).copy()).view(1, 3, 1, 1)
        self.preprocess = preprocess
        self.forward = getattr(net, "body", net)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """The network input for a uint8 RGB batch."""
        if self.preprocess is not None:
            return self.preprocess(images)
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
        return (x - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        modes = [(m, m.training) for m in self.net.modules()]  # e.g. a frozen backbone's BN
        self.net.eval()
        try:
            out = self.forward(self.to_tensor(images).to(self.device))
        finally:
            for m, training in modes:
                m.training = training
        return out.detach().float().cpu().numpy()


def embedder_for_checkpoint(net: torch.nn.Module, cfg, device: Union[str, torch.device]
                            ) -> TorchEmbedder:
    """The embedder of a facelt network trained with config ``cfg``: images are presented exactly as
    its test images were (``facelt.data.build.eval_transform``): rec-trained face models get
    RGB ``(x - 127.5) / 127.5`` at ``data.image_size``; list-trained models get their list test
    transform (resize, centre crop, ``data.mean``/``data.std``)."""
    size = (cfg.data.image_size, cfg.data.image_size)
    if cfg.data.format == "rec":
        return TorchEmbedder(net, device, size, FACE_MEAN, FACE_STD)
    from PIL import Image

    from facelt.data.build import eval_transform
    tf = eval_transform(cfg.data)
    mode = "L" if cfg.data.channels == 1 else "RGB"

    def preprocess(images: np.ndarray) -> torch.Tensor:
        return torch.stack([tf(Image.fromarray(img).convert(mode)) for img in images])

    return TorchEmbedder(net, device, size, preprocess=preprocess)



# ------------------------------------------------------------------------------ image sources

@dataclass(frozen=True)
class ImageSource:
    """uint8 RGB images of a rec, a list or a folder, in row order, with their row names."""

    rows: list[str]
    read: Callable[[int], np.ndarray]  # row index -> (H, W, 3) uint8 RGB
    # what the images are read from, for a fingerprint of their content
    # (facelt.utils.fingerprint.image_source_fingerprint): image files or a .rec; index files
    data_files: tuple = ()
    index_files: tuple = ()

    def batches(self, batch_size: int, desc: str = "images") -> Callable[[int], Iterator[np.ndarray]]:
        """``f(first_row)``: batches from that row, resized to the first image's size."""
        from facelt.utils.progress import progress

        def from_row(first: int) -> Iterator[np.ndarray]:
            with progress(total=len(self.rows) - first, desc=desc, unit="img") as bar:
                for a in range(first, len(self.rows), batch_size):
                    imgs = [self.read(i) for i in range(a, min(a + batch_size, len(self.rows)))]
                    h, w = imgs[0].shape[:2]
                    batch = np.stack([im if im.shape[:2] == (h, w) else
                                      cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
                                      for im in imgs])
                    yield batch
                    bar.update(len(batch))
        return from_row


def image_source(rec: Optional[str] = None, list_file: Optional[str] = None, root: str = ".",
                 images: Optional[str] = None) -> ImageSource:
    """The images of an insightface rec prefix, an OLTR list (paths under ``root``) or a folder;
    row names as ``facelt extract-features`` writes them (``PREFIX#key``, list items, relative
    paths)."""
    if rec:
        from facelt.data.rec_dataset import RecordDataset, decode_image
        ds = RecordDataset(rec, train=False)

        def read_rec(i: int) -> np.ndarray:
            key = int(ds.keys[i])
            _, payload = ds.reader.read_unpacked(key)
            return decode_image(payload, rgb=True, where=f"{rec} record {key}")
        from facelt.data.recordio import insightface_paths
        rec_file, idx, prop = insightface_paths(rec)
        return ImageSource([f"{rec}#{int(k)}" for k in ds.keys], read_rec, (rec_file,),
                           (idx,) + ((prop,) if prop.is_file() else ()))
    if list_file:
        from facelt.data.lists import check_files_exist, read_list
        lst = read_list(list_file)
        check_files_exist(lst, root)
        paths = [Path(root) / item for item in lst.items]
        rows = list(lst.items)
        src = files_source(paths, rows)
        return dataclasses.replace(src, index_files=(Path(list_file),))
    else:
        from facelt.data.images import find_images
        found = find_images(images)
        if not found:
            raise DataError(f"no images under {images}")
        paths, rows = found, [str(p.relative_to(images)) for p in found]
    return files_source(paths, rows)


def files_source(paths: Sequence[Union[str, Path]], rows: Optional[Sequence[str]] = None
                 ) -> ImageSource:
    """The image files ``paths`` (read with OpenCV, as RGB) in that order; row names ``rows``
    (default: the paths as given)."""
    paths = [Path(p) for p in paths]
    names = [str(p) for p in paths] if rows is None else [str(r) for r in rows]
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} paths for {len(names)} row names")

    def read_file(i: int) -> np.ndarray:
        from facelt.data.decode import imread
        return cv2.cvtColor(imread(paths[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return ImageSource(names, read_file, tuple(paths))
