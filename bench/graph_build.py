"""Benchmarks of the k-NN graph and propagation; prints one JSON object per line.

    python bench/graph_build.py compare            # 60k x 128: faiss vs scikit-learn vs torch
    python bench/graph_build.py scale --sizes 60000,200000
    python bench/graph_build.py scale --sizes 1000000 --exact-sample 2000
    python bench/graph_build.py bfs                # propagation cost against N, k and hops
    python bench/graph_build.py all --max-n 200000 # everything up to 200k points

Data: synthetic unit vectors around random cluster centres (like embeddings). Every line
carries the machine's thread count and load average, since a busy machine skews timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np

from invprop.neighbour_search import build_faiss_index, knn_graph, recall_at_k
from invprop.neighbour_search import drop_self as drop_self_pair


def emit(**fields: Any) -> None:
    fields |= {
        "threads": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(fields), flush=True)


def clustered(n: int, d: int, clusters: int = 100, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """n unit vectors in d dims around `clusters` random centres, built in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        x = centres[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, d), np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------


def compare(n: int, d: int, k: int, repeat: int) -> None:
    """Exact k-NN graph three ways on the same data; self excluded in each.

    The three methods run in turn ``repeat`` times and the best time of each counts (fairer
    on a machine that other work shares)."""
    x = clustered(n, d)
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, value in _compare_once(x, k).items():
            best[name] = min(best.get(name, np.inf), value)
    others = min(best["sklearn_brute"], best["torch_matmul_topk"])
    emit(
        bench="compare",
        summary=True,
        n=n,
        k=k,
        repeat=repeat,
        faiss_seconds=round(best["faiss_flat"], 3),
        sklearn_seconds=round(best["sklearn_brute"], 3),
        torch_seconds=round(best["torch_matmul_topk"], 3),
        speedup_vs_sklearn=round(best["sklearn_brute"] / best["faiss_flat"], 2),
        speedup_vs_torch=round(best["torch_matmul_topk"] / best["faiss_flat"], 2),
        speedup_vs_best_other=round(others / best["faiss_flat"], 2),
        target_under_15s=best["faiss_flat"] < 15,
        target_1_5x=others / best["faiss_flat"] >= 1.5,
    )


def _compare_once(x: np.ndarray, k: int) -> dict[str, float]:
    from sklearn.neighbors import NearestNeighbors

    n, d = x.shape
    seconds: dict[str, float] = {}
    start = time.perf_counter()  # whole call: checks, search, self removal
    faiss_graph = knn_graph(x, k, backend="faiss")
    seconds["faiss_flat"] = time.perf_counter() - start
    emit(
        bench="compare", method="faiss_flat", n=n, d=d, k=k, seconds=round(seconds["faiss_flat"], 3)
    )

    def sklearn_ids() -> np.ndarray:
        nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean", n_jobs=-1)
        return nn.fit(x).kneighbors(x, return_distance=False)[:, 1:]  # self first (distance 0)

    for method, ids_of in (
        ("sklearn_brute", sklearn_ids),
        ("torch_matmul_topk", lambda: knn_graph(x, k, backend="torch").ids),
    ):
        start = time.perf_counter()
        ids = ids_of()
        seconds[method] = time.perf_counter() - start
        emit(
            bench="compare",
            method=method,
            n=n,
            d=d,
            k=k,
            seconds=round(seconds[method], 3),
            agreement_with_faiss=round(recall_at_k(ids, faiss_graph.ids), 5),
        )
    return seconds


def scale(sizes: list[int], d: int, k: int, exact_sample: int, exact_full_max: int) -> None:
    """Exact vs IVF vs HNSW: build and search time, memory, recall@k against exact."""
    import faiss

    from invprop.neighbour_search import faiss_settings

    for n in sizes:
        with faiss_settings(None):  # the threads and BLAS blocks knn_graph uses
            _scale_one(faiss, n, d, k, exact_sample, exact_full_max)


def _scale_one(faiss: Any, n: int, d: int, k: int, exact_sample: int, exact_full_max: int) -> None:
    """One N: exact, IVF and HNSW, each built and searched with the same data."""
    x = clustered(n, d, clusters=max(100, n // 1000))
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(n, min(exact_sample, n), replace=False))
    exact_full = n <= exact_full_max
    # exact: the reference for recall (on the sample), and its cost
    before = rss_bytes()
    start = time.perf_counter()
    index = build_faiss_index(x, "flat", {}, 0)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _, ids = index.search(x if exact_full else x[sample], k + 1)
    search_s = time.perf_counter() - start
    exact_ids = drop_self(ids[sample] if exact_full else ids, sample)
    emit(
        bench="scale",
        index="flat",
        n=n,
        d=d,
        k=k,
        build_s=round(build_s, 3),
        search_s=round(search_s if exact_full else search_s * n / len(sample), 3),
        search_extrapolated_from=None if exact_full else len(sample),
        index_bytes=int(faiss.serialize_index(index).nbytes),
        rss_delta_bytes=rss_bytes() - before,
        recall=1.0,
    )
    del index, ids
    nlist = int(4 * np.sqrt(n))
    for name, options in (
        ("ivf", {"nlist": nlist, "nprobe": 16}),
        ("hnsw", {"m": 32, "ef_construction": 80, "ef_search": 64}),
    ):
        before = rss_bytes()
        start = time.perf_counter()
        index = build_faiss_index(x, name, options, 0)
        build_s = time.perf_counter() - start
        if name == "hnsw":
            index.hnsw.efSearch = max(options["ef_search"], 2 * (k + 1))
        start = time.perf_counter()
        _, ids = index.search(x, k + 1)
        search_s = time.perf_counter() - start
        emit(
            bench="scale",
            index=name,
            n=n,
            d=d,
            k=k,
            options=options,
            build_s=round(build_s, 3),
            search_s=round(search_s, 3),
            index_bytes=int(faiss.serialize_index(index).nbytes),
            rss_delta_bytes=rss_bytes() - before,
            recall=round(recall_at_k(drop_self(ids[sample], sample), exact_ids), 4),
            recall_queries=len(sample),
        )
        del index, ids


def drop_self(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return drop_self_pair(ids, np.zeros(ids.shape, np.float32), rows)[0]


def bfs(sizes: list[int], ks: list[int], hop_counts: list[int], n_pos: int, repeat: int) -> None:
    """Exact propagation from every node of a random k-regular table (bfs_s), and the
    propagate stage's whole computation on it (stage_stats_s: BFS, similarities, hard/easy
    selection at every hop, CSR); best of ``repeat``."""
    import torch

    from invprop.method.propagation import propagate_exact
    from invprop.positive_sets import propagation_stats

    for n in sizes:
        rng = np.random.default_rng(0)
        vectors = clustered(n, 128)
        for k in ks:
            table = rng.integers(0, n, (n, k))
            g = torch.from_numpy(table)
            for hops in hop_counts:
                width = sum(k**h for h in range(1, hops + 1))
                bfs_s = stats_s = np.inf
                for _ in range(repeat):
                    start = time.perf_counter()
                    for first in range(0, n, 2048):
                        propagate_exact(g, torch.arange(first, min(first + 2048, n)), hops)
                    bfs_s = min(bfs_s, time.perf_counter() - start)
                    start = time.perf_counter()
                    propagation_stats(table, vectors, None, hops, min(n_pos, width), collect=True)
                    stats_s = min(stats_s, time.perf_counter() - start)
                emit(
                    bench="bfs",
                    n=n,
                    k=k,
                    hops=hops,
                    width=width,
                    bfs_s=round(bfs_s, 3),
                    anchors_per_s=round(n / bfs_s),
                    stage_stats_s=round(stats_s, 3),
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["compare", "scale", "bfs", "all"])
    parser.add_argument("--n", type=int, default=60_000, help="points for compare")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--repeat", type=int, default=1, help="compare and bfs: rounds, the best time counts"
    )
    parser.add_argument("--sizes", default="60000,200000,1000000", help="N values for scale")
    parser.add_argument("--max-n", type=int, default=None, help="skip scale sizes above this")
    parser.add_argument(
        "--exact-sample",
        type=int,
        default=2000,
        help="exact queries above --exact-full-max (and recall queries)",
    )
    parser.add_argument(
        "--exact-full-max", type=int, default=200_000, help="largest N searched exactly in full"
    )
    parser.add_argument("--bfs-sizes", default="20000,100000")
    parser.add_argument("--bfs-k", default="4,8")
    parser.add_argument("--bfs-hops", default="2,3")
    parser.add_argument("--n-pos", type=int, default=20)
    args = parser.parse_args()

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v]

    sizes = [n for n in ints(args.sizes) if args.max_n is None or n <= args.max_n]
    if args.part in ("compare", "all"):
        compare(args.n, args.dim, args.k, args.repeat)
    if args.part in ("scale", "all"):
        scale(sizes, args.dim, args.k, args.exact_sample, args.exact_full_max)
    if args.part in ("bfs", "all"):
        bfs(ints(args.bfs_sizes), ints(args.bfs_k), ints(args.bfs_hops), args.n_pos, args.repeat)


if __name__ == "__main__":
    main()
