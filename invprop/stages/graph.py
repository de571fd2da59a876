"""The graph stage: the k-NN graph of the train embeddings and what it says about them.

Reads  ``artifacts/embeddings/<tag>/embeddings.npz`` (+ ``meta.json``), written by embed.
Writes ``artifacts/graph/<tag>/graph.npz``:
           ids    int64   [N, k]  neighbour ids, most similar first, self excluded
           sims   float32 [N, k]  inner products of the L2-normalised embeddings
           labels int64   [N]     train labels (-1 = unlabelled)
       ``artifacts/graph/<tag>/stats.json``: label purity at k = 1..graph.k, in-degree
           distribution (hubs), backend/index/recall/seconds, and the sha256 of the
           embeddings file it was built from (the propagate stage checks it);
       ``reports/graph_<tag>.json``: the headline figures.

Label purity at k is the share of an anchor's first k neighbours that carry its label,
averaged over the anchors that have a label (unlabelled neighbours count as other labels).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from invprop.config import Config
from invprop.errors import InvpropError
from invprop.neighbour_search import knn_graph
from invprop.workspace import embeddings_dir, load_embeddings, save_graph, write_stage_report

__all__ = [
    "chance_purity",
    "gini",
    "graph_stats",
    "headline_figures",
    "in_degree_stats",
    "label_purity_at_k",
    "run",
]

HUBS = 10


RUN_KEYS = ("device", "search_seconds", "seconds")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Statistics (numpy; exact counts)


def label_purity_at_k(ids: np.ndarray, labels: np.ndarray) -> list[float | None]:
    """Purity at k = 1..K: mean over labelled anchors of the share of their first k (valid)
    neighbours with the same label. ids [N, K] (-1 skipped); labels [N] (-1 = none)."""
    valid = ids >= 0
    neighbour_labels = labels[np.where(valid, ids, 0)]
    same = valid & (neighbour_labels == labels[:, None])
    hits = np.cumsum(same, axis=1)
    counted = np.cumsum(valid, axis=1)
    out: list[float | None] = []
    labelled = labels >= 0
    for col in range(ids.shape[1]):
        rows = labelled & (counted[:, col] > 0)
        if not rows.any():
            out.append(None)
            continue
        out.append(float(np.mean(hits[rows, col] / counted[rows, col])))
    return out


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, -> 1 = one node has all)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, x.size + 1)
    return float(2 * np.sum(ranks * x) / (x.size * x.sum()) - (x.size + 1) / x.size)


def in_degree_stats(ids: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """How often each node is someone's neighbour (k-occurrence): hubs and orphans."""
    n = ids.shape[0]
    degree = np.bincount(ids[ids >= 0], minlength=n)
    top = np.argsort(-degree, kind="stable")[:HUBS]
    return {
        "k": int(ids.shape[1]),
        "mean": float(degree.mean()),
        "max": int(degree.max()),
        "percentiles": {str(p): float(np.percentile(degree, p)) for p in (50, 90, 99, 99.9)},
        "gini": gini(degree),
        "never_neighbour": int((degree == 0).sum()),
        "never_neighbour_share": float((degree == 0).mean()),
        "hubs": [
            {
                "id": int(i),
                "in_degree": int(degree[i]),
                "label": None if labels is None else int(labels[i]),
            }
            for i in top
        ],
    }


def chance_purity(labels: np.ndarray) -> float | None:
    """Purity of a random pair of distinct labelled nodes: sum_c n_c (n_c - 1) / (n (n - 1))."""
    labelled = labels[labels >= 0]
    if labelled.size < 2:
        return None
    counts = np.bincount(labelled).astype(np.float64)
    return float(np.sum(counts * (counts - 1)) / (labelled.size * (labelled.size - 1)))


def graph_stats(ids: np.ndarray, sims: np.ndarray, labels: np.ndarray, prop_k: int) -> dict:
    purity = label_purity_at_k(ids, labels)
    finite = np.where(np.isfinite(sims), sims, np.nan)
    return {
        "n": int(ids.shape[0]),
        "k": int(ids.shape[1]),
        "labelled": int((labels >= 0).sum()),
        "purity_at_k": purity,
        "chance_purity": chance_purity(labels),
        "in_degree": in_degree_stats(ids, labels),
        "in_degree_at_propagate_k": in_degree_stats(ids[:, :prop_k], labels),
        "similarity": {
            "first_mean": float(np.nanmean(finite[:, 0])),
            "kth_mean": float(np.nanmean(finite[:, -1])),
        },
        "missing_entries": int((ids < 0).sum()),
    }


# ---------------------------------------------------------------------------------------
# Stage


def run(cfg: Config, tag: str = "final") -> dict[str, Any]:
    """Build the k-NN graph of the train embeddings of ``tag``; write graph.npz + stats."""
    g = cfg.graph
    emb = load_embeddings(embeddings_dir(tag))
    if g.k >= emb.n:
        raise InvpropError(
            f"graph.k = {g.k} needs more than k train embeddings, {emb.path} has {emb.n}; "
            "lower graph.k"
        )
    dim = emb.train_vectors.shape[1]
    log(f"graph {tag}: {emb.n} x {dim} embeddings, k={g.k}, {g.backend}/{g.index}")
    options: dict[str, Any] = {"seed": cfg.seed}
    if g.index == "ivf":
        options |= {"nlist": g.ivf_nlist, "nprobe": g.ivf_nprobe}
    elif g.index == "hnsw":
        options |= {"m": g.hnsw_m}
    start = time.perf_counter()
    built = knn_graph(
        emb.train_vectors, g.k, g.backend, g.index, recall_queries=g.recall_queries, **options
    )
    stats = graph_stats(built.ids, built.sims, emb.train_labels, min(cfg.propagate.k, g.k))
    stats |= {
        "tag": tag,
        "dim": int(emb.train_vectors.shape[1]),
        "backend": built.backend,
        "index": built.index,
        "device": built.device,
        "recall": built.recall,
        "recall_queries": None if built.recall is None else min(g.recall_queries, emb.n),
        "index_options": {k: v for k, v in options.items() if k != "seed"},
        "search_seconds": built.seconds,
        "seconds": time.perf_counter() - start,
        "embeddings": {
            "path": str(emb.path),
            "sha256": emb.sha256,
            "dataset": emb.dataset,
            "checkpoint_sha256": emb.meta.get("checkpoint_sha256"),
        },
    }
    # Timings and the device go to the report only: equal inputs give an equal artifact.
    save_graph(
        tag,
        {"ids": built.ids, "sims": built.sims, "labels": emb.train_labels},
        {k: v for k, v in stats.items() if k not in RUN_KEYS},
    )
    headline = headline_figures(stats, cfg.propagate.k)
    write_stage_report(f"graph_{tag}", headline)
    log(
        f"graph {tag}: purity@1 {_fmt(headline['purity_at_1'])}, "
        f"purity@{g.k} {_fmt(headline['purity_at_k'])}, "
        f"recall {_fmt(built.recall)}, {built.seconds:.1f} s search"
    )
    return stats


def headline_figures(stats: dict[str, Any], prop_k: int) -> dict[str, Any]:
    purity = stats["purity_at_k"]
    prop_k = min(prop_k, len(purity))
    return {
        "tag": stats["tag"],
        "n": stats["n"],
        "k": stats["k"],
        "backend": stats["backend"],
        "index": stats["index"],
        "recall": stats["recall"],
        "seconds": stats["seconds"],
        "purity_at_1": purity[0],
        "purity_at_k": purity[-1],
        "purity_at_propagate_k": purity[prop_k - 1],
        "chance_purity": stats["chance_purity"],
        "in_degree_gini": stats["in_degree"]["gini"],
        "in_degree_max": stats["in_degree"]["max"],
        "never_neighbour_share": stats["in_degree"]["never_neighbour_share"],
        "embeddings_sha256": stats["embeddings"]["sha256"],
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
