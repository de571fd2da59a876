"""Weighted k-nearest-neighbour classification: the one kNN of the project.

The training monitor, the evaluate stage and `invprop knn` all call these functions, so
every kNN figure in the project means the same thing (after DINO's `knn_classifier`).
The protocol is NPID's, which InvP's authors use for their monitor
(WangFeng18/InvariancePropagation@a290ae12d6e0ced62c19f0bbc395ded8e5e308df, `kNN.py`):

    sim(q, t) = <q / |q|, t / |t|>                  cosine similarity
    N_k(q)    = the k train vectors with the largest sim to q
    score_c(q) = sum_{t in N_k(q), label(t) = c} exp(sim(q, t) / T)

and the prediction is argmax_c score_c(q) (top-5: the five largest scores).

Rules every caller can rely on:
- Inputs need not be unit-norm (backbone features are not); both sides are L2-normalised
  here, in float32, on the device of `train` (queries are moved there).
- Train rows labelled -1 (unlabeled, e.g. STL-10's unlabeled split) never vote: they are
  removed before the search, so each query gets its k nearest *labelled* neighbours.
- k larger than the number of labelled train rows is clamped to that number.
- Work is chunked over queries (and the chunk shrinks when the train set is huge), so
  10k x 60k or 50k x 1.28M fits in a few hundred MiB.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from invprop.neighbour_search import chunk_rows, topk_chunks

__all__ = ["knn_accuracy", "knn_metrics", "weighted_knn_scores"]


def _prepare(train: Tensor, train_labels: Tensor, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes, drop unlabeled train rows, normalise both sides in fp32 on train's device."""
    if train.dim() != 2 or queries.dim() != 2:
        raise ValueError(
            f"train and queries must be 2-D [N, d], got {tuple(train.shape)} and "
            f"{tuple(queries.shape)}"
        )
    if train.shape[1] != queries.shape[1]:
        raise ValueError(
            f"train has dimension {train.shape[1]} but queries have {queries.shape[1]}"
        )
    if train_labels.shape != (train.shape[0],):
        raise ValueError(
            f"train_labels must have shape [{train.shape[0]}] to match train, got "
            f"{tuple(train_labels.shape)}"
        )
    device = train.device
    train_labels = train_labels.to(device=device, dtype=torch.long)
    labelled = train_labels >= 0
    if not bool(labelled.all()):
        train, train_labels = train[labelled], train_labels[labelled]
    if train.shape[0] == 0:
        raise ValueError("the train set has no labelled rows (all labels are -1)")
    train = F.normalize(train.float(), dim=1)
    queries = F.normalize(queries.to(device).float(), dim=1)
    return train, train_labels, queries


def _neighbours(
    train: Tensor, queries: Tensor, k: int, chunk_size: int
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Yield (query slice, top-k similarities [q, k] descending, train indices [q, k]): the
    exact chunked search of the graph stage's torch backend, at most `chunk_size` queries
    per chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return topk_chunks(train, queries, k, chunk_rows(train.shape[0], chunk_size))


def _votes(
    top_sims: Tensor, top_labels: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """Class scores [q, C] from the first k of the sorted neighbours."""
    weights = (top_sims[:, :k] / temperature).exp()
    scores = torch.zeros(top_sims.shape[0], num_classes, device=top_sims.device)
    return scores.scatter_add_(1, top_labels[:, :k], weights)


def _check_k(k: int, temperature: float, num_classes: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


@torch.no_grad()
def weighted_knn_scores(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted-kNN class scores of each query.

    train: [N, d] reference vectors (any norm); train_labels: LongTensor [N] in
    [0, num_classes) or -1 for unlabeled rows, which never vote; queries: [Q, d].
    Returns float32 [Q, num_classes] on train's device: score_c = sum over the k most
    cosine-similar labelled train rows of class c of exp(sim / temperature).
    """
    _check_k(k, temperature, num_classes)
    train, train_labels, queries = _prepare(train, train_labels, queries)
    if int(train_labels.max()) >= num_classes:
        raise ValueError(
            f"train_labels has class {int(train_labels.max())} but num_classes = {num_classes}"
        )
    k = min(k, train.shape[0])
    scores = torch.empty(queries.shape[0], num_classes, device=train.device)
    for rows, top_sims, top_ids in _neighbours(train, queries, k, chunk_size):
        scores[rows] = _votes(top_sims, train_labels[top_ids], k, temperature, num_classes)
    return scores


@torch.no_grad()
def knn_accuracy(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy of weighted kNN for every k in `ks`, from one top-max(ks) search.

    Because the search returns neighbours sorted by similarity, the first k of the
    top-max(ks) list are exactly the top-k, so every k costs one scatter, not a new search.
    Queries labelled -1 are not counted. Returns {k: {"top1": .., "top5": ..}} (fractions
    in [0, 1]). A query counts for top-5 when its class is among the five highest scores
    and got at least one vote (with k = 1 only one class has votes, so top-5 = top-1
    instead of depending on how zero scores tie); with fewer than five classes top-5 is
    top-C.
    """
    ks = list(dict.fromkeys(int(k) for k in ks))
    if not ks:
        raise ValueError("ks must name at least one k")
    for k in ks:
        _check_k(k, temperature, num_classes)
    if query_labels.shape != (queries.shape[0],):
        raise ValueError(
            f"query_labels must have shape [{queries.shape[0]}] to match queries, got "
            f"{tuple(query_labels.shape)}"
        )
    train, train_labels, queries = _prepare(train, train_labels, queries)
    query_labels = query_labels.to(device=train.device, dtype=torch.long)
    if max(int(train_labels.max()), int(query_labels.max())) >= num_classes:
        raise ValueError(f"a label is >= num_classes = {num_classes}")
    counted = query_labels >= 0
    if not bool(counted.any()):
        raise ValueError("no query has a label (all query labels are -1)")
    queries, query_labels = queries[counted], query_labels[counted]

    clamped = {k: min(k, train.shape[0]) for k in ks}
    top_n = min(5, num_classes)
    hits = {k: torch.zeros(2, dtype=torch.long, device=train.device) for k in ks}
    search_k = max(clamped.values())
    for rows, top_sims, top_ids in _neighbours(train, queries, search_k, chunk_size):
        top_labels = train_labels[top_ids]
        target = query_labels[rows, None]
        for k in ks:
            scores = _votes(top_sims, top_labels, clamped[k], temperature, num_classes)
            best_scores, best = scores.topk(top_n, dim=1)
            # A class nobody voted for is never a prediction (its zero score would tie).
            correct = (best == target) & (best_scores > 0)
            hits[k][0] += correct[:, 0].sum()
            hits[k][1] += correct.any(dim=1).sum()
    total = queries.shape[0]
    return {k: {"top1": int(h[0]) / total, "top5": int(h[1]) / total} for k, h in hits.items()}


def knn_metrics(
    prefix: str,
    train: Tensor,
    train_labels: Tensor,
    test: Tensor,
    test_labels: Tensor,
    ks: list[int],
    temperature: float,
    num_classes: int,
    device: torch.device,
) -> dict[str, float]:
    """Weighted kNN for every k in `ks`: {prefix}/k{K}/{top1,top5} and {prefix}/seconds."""
    start = time.perf_counter()
    result = knn_accuracy(
        train.to(device),
        train_labels.to(device),
        test.to(device),
        test_labels.to(device),
        ks,
        temperature,
        num_classes,
    )
    out: dict[str, float] = {}
    for k, scores in result.items():
        out[f"{prefix}/k{k}/top1"] = scores["top1"]
        out[f"{prefix}/k{k}/top5"] = scores["top5"]
    out[f"{prefix}/seconds"] = round(time.perf_counter() - start, 3)
    return out
