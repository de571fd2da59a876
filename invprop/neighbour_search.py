"""k-nearest-neighbour search by inner product, behind a registry of backends.

The graph stage turns L2-normalised embeddings into a k-NN graph (``knn_graph``); the
backends differ only in how they find the top-k:

- ``faiss``: ``IndexFlatIP`` (exact, the default), ``IndexIVFFlat`` or ``IndexHNSWFlat``
  (approximate, for millions of points); on a GPU when faiss has GPU support and sees one.
- ``torch``: chunked matmul + topk on the best device; exact only.

``backend="auto"`` takes faiss when it imports, else torch with a warning (never silently);
faiss is optional, so it is imported where it is used.
Approximate indexes report recall@k against an exact search on a random sample of queries.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invprop import names
from invprop.errors import InvpropError
from invprop.logs import track
from invprop.registry import Registry

__all__ = [
    "INDEXES",
    "NEIGHBOUR_BACKENDS",
    "KnnGraph",
    "build_faiss_index",
    "check_vectors",
    "chunk_rows",
    "drop_self",
    "faiss_settings",
    "knn_graph",
    "knn_search",
    "recall_at_k",
    "resolve_backend",
    "topk_chunks",
]

INDEXES = names.NEIGHBOUR_INDEXES
# faiss on a GPU answers at most 2048 neighbours per query.
FAISS_GPU_MAX_K = 2048
# Queries per faiss search call: progress granularity, no effect on the result.
SEARCH_BLOCK = 16_384
IVF_TRAIN_PER_LIST = 64
# Similarity entries per chunk of an exact torch search (2^26 fp32 = 256 MiB).
MAX_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True, eq=False)
class KnnGraph:
    """A k-NN graph, self excluded: ``ids, sims = knn_graph(...)`` unpacks the arrays.

    ids:  int64 [N, k] neighbour ids, most similar first; -1 where an approximate index
          found fewer than k (never for ``flat``).
    sims: float32 [N, k] inner products; -inf where ids is -1.
    recall: recall@k of an approximate index against exact search on ``recall_queries``
          random rows (None for ``flat``, which is exact).
    """

    ids: np.ndarray
    sims: np.ndarray
    backend: str
    index: str
    recall: float | None
    seconds: float
    device: str

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.ids, self.sims))


# ---------------------------------------------------------------------------------------
# Checks


def check_vectors(vectors: Any, what: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 [N, d] array, or a clear error."""
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvpropError(f"{what} must be a non-empty 2-D array [N, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvpropError(f"{what} must hold floats, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvpropError(
            f"{what} has {bad.size} row(s) with NaN or inf (first: row {int(bad[0])}); "
            "the encoder diverged or the file is corrupt: rerun the stage that wrote them"
        )
    return array


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise InvpropError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise InvpropError(f"k = {k} exceeds the {n} points of {what}; lower k (graph.k)")


# faiss's exact search multiplies blocks of 4096 queries x 1024 database rows, then updates
# per-query heaps; 16384-row database blocks cut CPU time by ~30% at 60k points (256 MiB).
FAISS_BLAS_BLOCKS = (4096, 16384)


@contextlib.contextmanager
def faiss_settings(threads: int | None) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads (default: the CPUs this process may use) and
    larger BLAS blocks; both are process-wide in faiss, so they are restored afterwards."""
    import faiss

    if threads is None:
        affinity = getattr(os, "sched_getaffinity", None)
        threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    cvar = faiss.cvar
    before = (
        faiss.omp_get_max_threads(),
        cvar.distance_compute_blas_query_bs,
        cvar.distance_compute_blas_database_bs,
    )
    faiss.omp_set_num_threads(int(threads))
    cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = FAISS_BLAS_BLOCKS
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before[0])
        cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = before[1:]


# ---------------------------------------------------------------------------------------
# Backends: search(database [N, d], queries [Q, d], k, index, options) -> (ids, sims, device)

SearchFn = Callable[
    [np.ndarray, np.ndarray, int, str, dict[str, Any]], tuple[np.ndarray, np.ndarray, str]
]
NEIGHBOUR_BACKENDS: Registry[SearchFn] = Registry(
    "neighbour backend",
    names.NEIGHBOUR_BACKENDS,
    hint=" (or auto: faiss when it is installed, else torch)",
)


def _faiss_gpu_wanted(option: bool | None, k: int, index: str) -> bool:
    import faiss

    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if option is False or not available:
        if option is True:
            warnings.warn("faiss has no GPU support here; searching on the CPU", stacklevel=4)
        return False
    if index == "hnsw":
        return False  # faiss has no GPU HNSW; the CPU index is used
    if k > FAISS_GPU_MAX_K:
        warnings.warn(
            f"faiss on a GPU caps k at {FAISS_GPU_MAX_K}; searching k={k} on the CPU",
            stacklevel=4,
        )
        return False
    return True


def build_faiss_index(
    database: np.ndarray, index: str, options: dict[str, Any], seed: int, gpu: bool = False
) -> Any:
    """A faiss index of kind ``index`` (flat, ivf, hnsw) over ``database``, trained and filled.

    options: nlist, nprobe (ivf); m, ef_construction, ef_search (hnsw). With ``gpu`` the empty
    index moves to GPU 0 first, so IVF k-means and the adds run there too (not HNSW).
    """
    import faiss

    n, d = database.shape
    if index == "flat":
        built = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = int(options.get("nlist", 1024))
        if nlist > max(1, n // 39):
            # faiss k-means wants >= 39 points per list; more lists than that is noise.
            clamped = max(1, n // 39)
            warnings.warn(
                f"ivf nlist={nlist} is too many for {n} points; using nlist={clamped} "
                "(lower graph.ivf_nlist to silence this)",
                stacklevel=4,
            )
            nlist = clamped
        quantizer = faiss.IndexFlatIP(d)
        built = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        built.cp.seed = seed
    elif index == "hnsw":
        built = faiss.IndexHNSWFlat(d, int(options.get("m", 32)), faiss.METRIC_INNER_PRODUCT)
        built.hnsw.efConstruction = int(options.get("ef_construction", 80))
    else:
        raise InvpropError(f"unknown index {index!r}; use one of {', '.join(INDEXES)}")
    if gpu:
        resources = faiss.StandardGpuResources()
        built = faiss.index_cpu_to_gpu(resources, 0, built)
        built.referenced_resources = resources  # keep the GPU memory pool alive with the index
    if index == "ivf":
        # 64 training points per list: k-means quality is flat above ~39 per list, and the
        # cost grows with the sample (faiss' own cap is 256 per list)
        sample = min(n, IVF_TRAIN_PER_LIST * built.nlist)
        rng = np.random.default_rng(seed)
        train = database[np.sort(rng.choice(n, sample, replace=False))] if sample < n else database
        built.train(train)
        built.nprobe = min(int(options.get("nprobe", 16)), built.nlist)
    built.add(database)
    if index == "hnsw":
        built.hnsw.efSearch = int(options.get("ef_search", 64))
    return built


def _query_blocks(n: int, block: int) -> Iterator[slice]:
    """Consecutive row slices of at most `block` queries, with progress."""
    starts = range(0, n, block)
    for start in track(
        starts, "neighbour search", unit="blocks", images=lambda s: min(block, n - s)
    ):
        yield slice(start, min(start + block, n))


@NEIGHBOUR_BACKENDS.register("faiss")
def _faiss_search(
    database: np.ndarray, queries: np.ndarray, k: int, index: str, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, str]:
    with faiss_settings(options.get("threads")):
        gpu = _faiss_gpu_wanted(options.get("gpu"), k, index)
        built = build_faiss_index(database, index, options, int(options.get("seed", 0)), gpu)
        if index == "hnsw":
            built.hnsw.efSearch = max(built.hnsw.efSearch, 2 * k)
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        sims = np.empty((queries.shape[0], k), dtype=np.float32)
        # In blocks only so progress shows; each query's search is independent.
        for rows in _query_blocks(queries.shape[0], SEARCH_BLOCK):
            sims[rows], ids[rows] = built.search(queries[rows], k)
    device = "cuda:0" if gpu else "cpu"
    return ids, sims, device


def chunk_rows(n: int, limit: int | None = None) -> int:
    """Queries per chunk so that one chunk's [rows, n] similarities stay near 256 MiB."""
    return max(1, min(limit or MAX_CHUNK_ELEMENTS, MAX_CHUNK_ELEMENTS // max(1, n)))


@torch.no_grad()
def topk_chunks(
    database: Tensor, queries: Tensor, k: int, chunk: int
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Exact inner-product search, `chunk` queries at a time: yield (query rows, top-k
    similarities [q, k] descending, database ids [q, k]) on the database's device.

    Queries move to that device a chunk at a time; the [chunk, n] similarities go to one
    reused buffer, since a fresh tensor per step costs page faults.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n_queries = queries.shape[0]
    buffer = torch.empty(min(chunk, n_queries), database.shape[0], device=database.device)
    for rows in _query_blocks(n_queries, chunk):
        q = queries[rows].to(database.device)
        block = torch.mm(q, database.T, out=buffer[: q.shape[0]])
        top = block.topk(k, dim=1, largest=True, sorted=True)
        yield rows, top.values, top.indices


@NEIGHBOUR_BACKENDS.register("torch")
def _torch_search(
    database: np.ndarray, queries: np.ndarray, k: int, index: str, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, str]:
    if index != "flat":
        raise InvpropError(
            f"the torch backend searches exactly (index flat) only, got index {index!r}; "
            "use backend faiss for ivf/hnsw (pip install faiss-cpu)"
        )
    device = torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    db = torch.from_numpy(database).to(device)
    # ~256 MiB of fp32 similarities per chunk (1118 rows at n = 60k).
    chunk = int(options.get("chunk_size") or max(1, min(queries.shape[0], chunk_rows(db.shape[0]))))
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    for rows, top_sims, top_ids in topk_chunks(db, torch.from_numpy(queries), k, chunk):
        ids[rows] = top_ids.cpu().numpy()
        sims[rows] = top_sims.cpu().numpy()
    return ids, sims, str(device)


def resolve_backend(backend: str) -> str:
    """``auto`` -> faiss when it imports, else torch (with a warning); check the name."""
    if backend == "auto":
        try:
            import faiss
        except ImportError:
            warnings.warn(
                "faiss is not installed: building the k-NN graph with torch (exact, slower); "
                "pip install faiss-cpu (or faiss-gpu) for speed and approximate indexes",
                stacklevel=3,
            )
            return "torch"
        return "faiss"
    if backend not in NEIGHBOUR_BACKENDS:
        raise NEIGHBOUR_BACKENDS.unknown(backend)
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as exc:
            raise InvpropError(
                "graph.backend = faiss but faiss is not installed; pip install faiss-cpu "
                "or set graph.backend to auto or torch"
            ) from exc
    return backend


# ---------------------------------------------------------------------------------------
# Public API


def knn_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    backend: str = "auto",
    index: str = "flat",
    **index_options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of ``database`` [N, d] with the largest inner product with each query.

    Returns (ids int64 [Q, k], sims float32 [Q, k]), most similar first; nothing excluded.
    index_options: nlist, nprobe (ivf); m, ef_construction, ef_search (hnsw); threads,
    gpu (faiss); device, chunk_size (torch); seed.
    """
    database = check_vectors(database, "database vectors")
    queries = check_vectors(queries, "query vectors")
    if queries.shape[1] != database.shape[1]:
        raise InvpropError(
            f"query dimension {queries.shape[1]} != database dimension {database.shape[1]}; "
            "queries and database must come from the same encoder head"
        )
    _check_k(k, database.shape[0], "the database")
    name = resolve_backend(backend)
    ids, sims, _ = NEIGHBOUR_BACKENDS[name](database, queries, k, index, index_options)
    return ids, sims


def drop_self(ids: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """From top-(k+1) lists [Q, k+1], remove each query's own row id (wherever it sits,
    e.g. behind an exact duplicate); when it is absent, drop the last entry instead."""
    is_self = ids == rows[:, None]
    first = np.argmax(is_self, axis=1)
    drop = np.where(is_self.any(axis=1), first, ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(ids.shape[0]), drop] = False
    k = ids.shape[1] - 1
    return ids[keep].reshape(-1, k), sims[keep].reshape(-1, k)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact k-NN list found by the approximate one (-1 never counts)."""
    if approx.shape != exact.shape:
        raise ValueError(f"shapes differ: {approx.shape} vs {exact.shape}")
    hits = sum(
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist()))
        for a, e in zip(approx, exact, strict=True)
    )
    return hits / max(1, exact.size)


def knn_graph(
    vectors: np.ndarray,
    k: int,
    backend: str = "auto",
    index: str = "flat",
    recall_queries: int = 1000,
    **index_options: Any,
) -> KnnGraph:
    """k-NN graph of the rows of ``vectors`` [N, d] by inner product, each row's self excluded.

    Searches k+1 and removes the row itself wherever it appears (an exact duplicate can tie
    and come first). ``ids, sims = knn_graph(x, k)``: int64 [N, k] and float32 [N, k], most
    similar first. For ivf/hnsw, ``.recall`` is recall@k against exact search on
    ``recall_queries`` random rows (seeded by index_options ``seed``, default 0).
    """
    vectors = check_vectors(vectors)
    n = vectors.shape[0]
    if k >= n:
        raise InvpropError(
            f"k = {k} needs more than k points (self excluded), got N = {n}; lower graph.k"
        )
    _check_k(k, n - 1, "the vectors")
    if index not in INDEXES:
        raise InvpropError(f"unknown index {index!r}; use one of {', '.join(INDEXES)}")
    name = resolve_backend(backend)
    search = NEIGHBOUR_BACKENDS[name]
    start = time.perf_counter()
    ids, sims, device = search(vectors, vectors, k + 1, index, index_options)
    ids, sims = drop_self(ids, sims, np.arange(n))
    seconds = time.perf_counter() - start
    missing = ids < 0
    if missing.any():
        sims[missing] = -np.inf
        warnings.warn(
            f"the {index} index found fewer than k={k} neighbours for "
            f"{int(missing.any(axis=1).sum())} of {n} rows (stored as -1); "
            "raise nprobe / ef_search or use index flat",
            stacklevel=2,
        )
    recall = None
    if index != "flat":
        rng = np.random.default_rng(int(index_options.get("seed", 0)))
        rows = np.sort(rng.choice(n, min(recall_queries, n), replace=False))
        exact_ids, exact_sims, _ = search(vectors, vectors[rows], k + 1, "flat", index_options)
        exact_ids, _ = drop_self(exact_ids, exact_sims, rows)
        recall = recall_at_k(ids[rows], exact_ids)
    return KnnGraph(ids, sims, name, index, recall, seconds, device)
