"""Top-k distractor search, streamed: the kernel that makes 3,530 x 1M x 512 fast and small.

A MegaFace trial (p, g) is decided by the genuine score sim(p, g) and the probe's k largest
distractor scores alone (rank(p, g) < k  iff  sim(p, g) > k-th largest distractor score), so the
gallery is never indexed whole: its rows are read chunk by chunk (one reusable buffer), each chunk is
searched exactly for the k best per probe (a BLAS matmul reduced by faiss's heaps on CPU, faiss on
GPU when one is visible), and a running top-k per probe is merged.  Nested gallery sizes cost one pass: the
gallery of size n is the first n rows of a fixed order, so the order is walked segment by segment
and the running top-k is copied at each size boundary.

Approximate faiss indexes (IVF-Flat, HNSW, IVF-SQ8) are offered for comparison; their candidates
are re-scored exactly, and :func:`top1_agreement` measures them against the exact search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from facelt.features.files import FeatureFile, iter_row_chunks, l2_normalize
from facelt.utils.progress import progress

DEFAULT_CHUNK_ROWS = 65536
APPROX_INDEXES = ("ivf", "hnsw", "sq8")
_NUMPY_BLOCK_ELEMS = 32 * 1024 * 1024  # probe x rows score-block budget (128 MB float32)


@dataclass
class TopK:
    """Per-probe best distractor scores (descending, ``-inf`` padded) and their row ids (``-1``)."""

    scores: np.ndarray  # (nq, k) float32 (float64 after :func:`rescore`)
    ids: np.ndarray     # (nq, k) int64

    @classmethod
    def empty(cls, nq: int, k: int) -> "TopK":
        return cls(np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64))

    def copy(self) -> "TopK":
        return TopK(self.scores.copy(), self.ids.copy())

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Fold in candidate ``(nq, m)`` scores / ids, keeping the best k (ties: earlier first)."""
        k = self.scores.shape[1]
        s = np.concatenate((self.scores, scores.astype(np.float32, copy=False)), axis=1)
        i = np.concatenate((self.ids, ids.astype(np.int64, copy=False)), axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        self.scores = np.take_along_axis(s, order, axis=1)
        self.ids = np.take_along_axis(i, order, axis=1)


def dot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner products over the last axis in float64 by one fixed routine (elementwise product, then
    numpy's pairwise sum), so that two equal vector pairs always score exactly equal. Genuine and
    distractor scores both go through it: a tie is then a true tie, and counts as a miss."""
    return (a.astype(np.float64) * b.astype(np.float64)).sum(-1)


def rescore(queries: np.ndarray, ff: FeatureFile, top: "TopK", normalize: bool = True,
            chunk: int = 1024) -> "TopK":
    """The kept top-k distractors of each query scored again with :func:`dot64` and re-sorted.

    The search ranks in float32 by BLAS, whose rounding depends on blocking; only k rows per query
    are re-read (``read_rows``), normalised exactly as the search normalised them.
    """
    q = np.asarray(queries, dtype=np.float32)
    scores = np.full(top.scores.shape, -np.inf)
    for s in range(0, len(q), chunk):
        ids = top.ids[s:s + chunk]
        valid = ids >= 0
        if not valid.any():
            continue
        uniq, inv = np.unique(ids[valid], return_inverse=True)
        rows = ff.read_rows(uniq)
        if normalize:
            l2_normalize(rows, out=rows)
        got = np.full(ids.shape, -np.inf)
        qi = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[valid]
        got[valid] = dot64(q[s:s + chunk][qi], rows[inv])
        scores[s:s + chunk] = got
    order = np.argsort(-scores, axis=1, kind="stable")
    return TopK(np.take_along_axis(scores, order, axis=1), np.take_along_axis(top.ids, order, axis=1))


BACKENDS = ("blas", "faiss", "faiss-gpu", "torch", "numpy")


def default_backend(device: str = "auto") -> str:
    """``faiss-gpu`` when faiss sees a GPU; else, with ``device="cuda"``, ``torch`` (matmul + topk
    on the GPU); else ``faiss`` (``faiss.knn``: 0.69 to 0.75 x the time of ``blas`` for 3,530
    FaceScrub-sized queries against a 65,536-row chunk at d = 512, k = 1 / 10 / 100, with no
    score buffer; benchmarks/README.md). torch is imported only for ``cuda``: a CPU evaluation
    stays free of torch's memory (about 0.5 GiB of RSS)."""
    import faiss
    if device != "cpu" and faiss.get_num_gpus() > 0:
        return "faiss-gpu"
    return "torch" if device == "cuda" else "faiss"


class ChunkSearcher:
    """Exact top-k inner-product search of a query set against one block of rows at a time.

    Backends: ``blas`` -- scores by a BLAS matmul (numpy), a probe block at a time into one reused
    buffer, reduced to the top k by faiss's C++ heaps (multi-threaded); ``faiss`` -- ``faiss.knn``
    (note: faiss only switches to BLAS from 128,000 queries on, below that it is its slower SIMD
    loop); ``faiss-gpu`` -- ``faiss.knn_gpu``; ``torch`` -- ``torch.matmul`` + ``torch.topk`` on
    ``device`` (CUDA when visible: the queries are copied there once, each block once, probe blocks
    bounded by ``block_elems`` scores); ``numpy`` -- matmul + ``argpartition`` (reference).
    """

    def __init__(self, backend: Optional[str] = None, block_elems: int = _NUMPY_BLOCK_ELEMS,
                 device: Optional[str] = None):
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown search backend {self.backend!r}; choose from {BACKENDS}")
        self.block_elems = block_elems
        self.device = device
        self._gpu_res = None
        self._scores: Optional[np.ndarray] = None
        self._torch_queries = None  # (numpy queries it was made from, device tensor)

    def __call__(self, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, local_ids)``, each ``(nq, min(k, len(block)))``, best first."""
        kk = min(k, len(block))
        if kk == 0:
            return (np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64))
        if self.backend == "numpy":
            return _numpy_topk(queries, block, kk, self.block_elems)
        if self.backend == "blas":
            return self._blas_topk(queries, block, kk)
        if self.backend == "torch":
            return self._torch_topk(queries, block, kk)
        import faiss
        if self.backend == "faiss-gpu":
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            return faiss.knn_gpu(self._gpu_res, queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        return faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)

    def _blas_topk(self, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss
        nq, nb = len(queries), len(block)
        scores = np.empty((nq, k), np.float32)
        ids = np.empty((nq, k), np.int64)
        heaps = faiss.float_minheap_array_t()  # a min-heap per query keeps its k largest scores
        heaps.k, heaps.nh = k, nq
        heaps.val, heaps.ids = faiss.swig_ptr(scores), faiss.swig_ptr(ids)
        heaps.heapify()
        step = max(1, min(nq, self.block_elems // nb))
        if self._scores is None or self._scores.size < step * nb:
            self._scores = np.empty(step * nb, np.float32)
        for a in range(0, nq, step):
            q = queries[a:a + step]
            s = self._scores[:len(q) * nb].reshape(len(q), nb)
            np.matmul(q, block.T, out=s)
            heaps.addn(nb, faiss.swig_ptr(s), 0, a, len(q))
        heaps.reorder()  # best first
        return scores, ids

    def _torch_topk(self, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self._torch_queries is None or self._torch_queries[0] is not queries:
            self._torch_queries = (queries, torch.from_numpy(queries).to(self.device))
        q = self._torch_queries[1]
        b = torch.from_numpy(block)
        if b.device.type != self.device:
            b = b.pin_memory().to(self.device, non_blocking=True) if self.device == "cuda" else b.to(self.device)
        nq, nb = len(queries), len(block)
        step = max(1, min(nq, self.block_elems // nb))
        scores = torch.empty((nq, k), dtype=torch.float32, device=self.device)
        ids = torch.empty((nq, k), dtype=torch.int64, device=self.device)
        for a in range(0, nq, step):
            s, i = torch.topk(q[a:a + step] @ b.T, k, dim=1, largest=True, sorted=True)
            scores[a:a + step], ids[a:a + step] = s, i
        return scores.cpu().numpy(), ids.cpu().numpy()


def _numpy_topk(queries: np.ndarray, block: np.ndarray, k: int,
                block_elems: int = _NUMPY_BLOCK_ELEMS) -> tuple[np.ndarray, np.ndarray]:
    nq = len(queries)
    out_s = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    step = max(1, block_elems // max(1, len(block)))
    for a in range(0, nq, step):
        s = queries[a:a + step] @ block.T
        if k < s.shape[1]:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        out_s[a:a + step] = np.take_along_axis(ps, order, axis=1)
        out_i[a:a + step] = np.take_along_axis(part, order, axis=1)
    return out_s, out_i


def _as_queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(queries, dtype=np.float32)


def stream_topk(queries: np.ndarray, ff: FeatureFile, order: np.ndarray, sizes: Sequence[int],
                k: int = 10, chunk_rows: int = DEFAULT_CHUNK_ROWS, normalize: bool = True,
                backend: Optional[str] = None, desc: str = "distractors",
                device: Optional[str] = None) -> list[TopK]:
    """Exact top-k distractors per query for each gallery ``order[:n]``, ``n`` in ``sizes``.

    ``order`` lists candidate rows of ``ff`` (the gallery of size n is its first n entries); rows
    are L2-normalised as they are read when ``normalize`` (queries are used as given: normalise
    them first, so that genuine and distractor scores use the very same query vectors).  Returns one :class:`TopK` per size,
    in the order of ``sizes``; ids are row numbers of ``ff``.  Peak memory: one chunk of rows plus
    the search's own blocks.
    """
    sizes = [int(n) for n in sizes]
    if any(n < 0 or n > len(order) for n in sizes):
        raise ValueError(f"gallery sizes {sizes} exceed the {len(order)} candidate rows")
    q = _as_queries(queries)
    searcher = ChunkSearcher(backend, device=device)
    running = TopK.empty(len(q), k)
    snapshots: dict[int, TopK] = {}
    done = 0
    bar = progress(total=max(sizes, default=0), desc=desc, unit="row")
    for n in sorted(set(sizes)):
        for rows, block in iter_row_chunks(ff, order[done:n], chunk_rows, normalize):
            s, local = searcher(q, block, k)
            running.merge(s, rows[local])
            bar.update(len(rows))
        done = n
        snapshots[n] = running.copy()
    bar.close()
    return [snapshots[n] for n in sizes]


# ------------------------------------------------------------------------------- approximate search

def _build_index(kind: str, dim: int, n: int, nlist: Optional[int], hnsw_m: int):
    import faiss
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, ip), 0
    nl = nlist or int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39), 65536))
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nl, ip)
    elif kind == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nl, faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        raise ValueError(f"unknown approximate index {kind!r}; choose from {APPROX_INDEXES}")
    # faiss's Python constructors keep a reference to ``quantizer`` on ``index``.
    return index, nl


def approx_topk(queries: np.ndarray, ff: FeatureFile, gallery: np.ndarray, kind: str, k: int = 10,
                chunk_rows: int = DEFAULT_CHUNK_ROWS, normalize: bool = True,
                nlist: Optional[int] = None, nprobe: int = 32, hnsw_m: int = 32,
                ef_search: int = 128, train_rows: int = 100_000, seed: int = 0) -> TopK:
    """Top-k over the rows ``gallery`` of ``ff`` with an approximate faiss index, re-scored exactly.

    IVF indexes train on up to ``train_rows`` gallery rows (a seeded sample).  The index holds the
    whole gallery (memory: the gallery itself for ``ivf``/``hnsw`` plus HNSW's graph, a quarter for
    ``sq8``).  Candidates' scores are recomputed from the stored features, so only the candidate
    set, not the score, is approximate.
    """
    import faiss
    q = _as_queries(queries)
    gal = np.sort(np.asarray(gallery, dtype=np.int64))
    n = len(gal)
    if n == 0:
        return TopK.empty(len(q), k)
    index, nl = _build_index(kind, ff.dim, n, nlist, hnsw_m)
    if kind in ("ivf", "sq8"):
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(gal, size=min(n, train_rows), replace=False))
        xt = ff.read_rows(sample)
        if normalize:
            l2_normalize(xt, out=xt)
        index.train(xt)
        del xt
        index.nprobe = min(nprobe, nl)
    else:
        index.hnsw.efSearch = max(ef_search, k)
    for _, block in progress(iter_row_chunks(ff, gal, chunk_rows, normalize), desc=f"{kind} add",
                             total=math.ceil(n / chunk_rows), unit="chunk"):
        index.add(block)
    _, local = index.search(q, min(k, n))
    del index
    return _rescore(q, ff, gal, local, k, normalize)


def _rescore(q: np.ndarray, ff: FeatureFile, gal: np.ndarray, local: np.ndarray, k: int,
             normalize: bool) -> TopK:
    valid = local >= 0
    rows = np.where(valid, gal[np.clip(local, 0, None)], -1)
    uniq = np.unique(rows[valid])
    feats = ff.read_rows(uniq)
    if normalize:
        l2_normalize(feats, out=feats)
    pos = np.searchsorted(uniq, np.clip(rows, 0, None))
    scores = np.einsum("qd,qkd->qk", q, feats[np.clip(pos, 0, max(len(uniq) - 1, 0))]) \
        if len(uniq) else np.zeros(rows.shape, np.float32)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    out = TopK.empty(len(q), k)
    out.merge(scores, rows)
    return out


def top1_agreement(approx: TopK, exact: TopK) -> Optional[float]:
    """Fraction of probes whose best distractor is the same row under both searches (None: no probes)."""
    if len(exact.ids) == 0:
        return None
    return float(np.mean(approx.ids[:, 0] == exact.ids[:, 0]))
