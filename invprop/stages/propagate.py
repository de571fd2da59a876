"""The propagate stage: which positives invariance propagation finds, and how pure they are.

Reads  ``artifacts/graph/<tag>/graph.npz`` + ``stats.json`` and the embeddings it was built
       from (checked: same N, same sha256); the pretrain snapshots' memory banks
       (``models/pretrain/snapshots/epoch_NNNN.pt`` and ``final.pt``) with the prepared
       train labels (``data/prepared/<dataset>``).
Writes ``artifacts/propagation/<tag>/positives.npz`` (CSR over the N train anchors):
           indptr      int64 [N+1]  row i is ids[indptr[i]:indptr[i+1]]
           ids         int32 [nnz]  exact BFS positives within propagate.hops hops of the
                                    graph's first propagate.k neighbours, anchor excluded,
                                    ordered by hop (then by discovery)
           hop         int8  [nnz]  1-based BFS distance of each positive
           hard_indptr int64 [N+1], hard_ids int32: the P = propagate.n_pos least similar
                                    positives (all of them when fewer), hardest first
           easy_indptr int64 [N+1], easy_ids int32: the P most similar, easiest first
       ``artifacts/propagation/<tag>/stats.json`` and ``reports/propagate_<tag>.json``.

Statistics: see invprop.positive_sets. ``epochs`` repeats the last-hop figures for every
pretrain snapshot, walking the bank's own neighbour table with the bank's vectors.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from invprop.checkpoint import load_checkpoint
from invprop.config import Config
from invprop.errors import InvpropError
from invprop.io import file_sha256
from invprop.positive_sets import (
    bank_tables,
    last_hop_summary,
    propagation_stats,
    table_coverage,
)
from invprop.workspace import (
    GRAPH_FILE,
    PRETRAIN,
    graph_dir,
    load_checked_graph,
    prepared_train_labels,
    save_propagation,
    write_stage_report,
)

__all__ = ["epoch_stats", "run"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def epoch_stats(cfg: Config, root: str | Path = ".") -> list[dict[str, Any]]:
    """Last-hop purity of all / hard / easy positives and table coverage per snapshot."""
    rows = []
    labels_cache: dict[str, np.ndarray] = {}
    paths = PRETRAIN.under(root).tagged_checkpoints()
    if not paths:
        warnings.warn(
            "no pretrain snapshots or final.pt under models/pretrain: purity against epoch "
            "is empty (set pretrain.snapshot_epochs and run pretrain)",
            stacklevel=2,
        )
    for tag, path in paths:
        state = load_checkpoint(path)
        vectors, neighbours = bank_tables(state, str(path))
        dataset = state.get("config", {}).get("data", {}).get("name", cfg.data.name)
        if dataset not in labels_cache:
            labels_cache[dataset] = prepared_train_labels(dataset, root)
        k = neighbours.shape[1]
        stats, _ = propagation_stats(
            neighbours,
            vectors,
            labels_cache[dataset],
            cfg.propagate.hops,
            cfg.propagate.n_pos,
            where=str(path),
        )
        summary = last_hop_summary(stats)
        rows.append(
            {
                "tag": tag,
                "epoch": state.get("epoch"),
                "path": str(path),
                "k": k,
                "hops": cfg.propagate.hops,
                "n_pos": stats["n_pos"],
                "coverage": table_coverage(neighbours),
                **summary,
            }
        )
        log(
            f"propagate: {tag} (epoch {state.get('epoch')}): coverage {rows[-1]['coverage']:.3f}, "
            f"purity all {_fmt(summary['purity']['all'])} hard {_fmt(summary['purity']['hard'])}"
        )
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------
# Stage


def run(cfg: Config, tag: str = "final") -> dict[str, Any]:
    """Propagate over the graph of ``tag`` and over every snapshot's bank; write the stats."""
    p = cfg.propagate
    start = time.perf_counter()
    graph, graph_stats, emb = load_checked_graph(tag)
    width = graph["ids"].shape[1]
    if p.k > width:
        raise InvpropError(
            f"propagate.k = {p.k} but artifacts/graph/{tag} has only k = {width} neighbours "
            "per node; rerun the graph stage with graph.k >= propagate.k"
        )
    log(f"propagate {tag}: exact BFS from {emb.n} anchors, k={p.k}, hops={p.hops}, P={p.n_pos}")
    stats, csr = propagation_stats(
        graph["ids"][:, : p.k], emb.train_vectors, emb.train_labels, p.hops, p.n_pos, collect=True
    )
    assert csr is not None
    graph_seconds = time.perf_counter() - start
    epochs = epoch_stats(cfg)
    stats |= {
        "tag": tag,
        "graph_seconds": graph_seconds,
        "seconds": time.perf_counter() - start,
        "chance_purity": graph_stats.get("chance_purity"),
        "embeddings_sha256": emb.sha256,
        "graph_sha256": file_sha256(graph_dir(tag) / GRAPH_FILE),
        "epochs": epochs,
    }
    # Timings go to the report only: equal inputs give an equal artifact.
    save_propagation(
        tag, csr, {k: v for k, v in stats.items() if k not in ("graph_seconds", "seconds")}
    )
    report = {
        "tag": tag,
        "n": stats["n"],
        "k": stats["k"],
        "hops": stats["hops"],
        "n_pos": stats["n_pos"],
        "chance_purity": stats["chance_purity"],
        **last_hop_summary(stats),
        "new_purity_per_hop": [row["new"]["purity"] for row in stats["per_hop"]],
        "epochs": [
            {
                "tag": row["tag"],
                "epoch": row["epoch"],
                "coverage": row["coverage"],
                "purity": row["purity"],
            }
            for row in epochs
        ],
        "seconds": stats["seconds"],
    }
    write_stage_report(f"propagate_{tag}", report)
    last = report["purity"]
    log(
        f"propagate {tag}: purity within {p.hops} hops: all {_fmt(last['all'])}, "
        f"hard {_fmt(last['hard'])}, easy {_fmt(last['easy'])} in {stats['seconds']:.1f} s"
    )
    return stats
