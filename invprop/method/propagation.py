"""Invariance propagation: which bank entries count as positives of an anchor.

Positives are the nodes reachable from the anchor in 1..hops steps of the k-NN table G
(``MemoryBank.neighbours``, int64 [n, k], -1 = row never filled). Two forms:

- ``exact``: a vectorised breadth-first search; each reachable node once, anchor excluded
  (the paper's definition).
- ``concat``: the authors' code, which concatenates neighbour lists hop by hop without
  removing anything, so duplicates and the anchor itself appear among the candidates.

Both return a fixed-shape :class:`Propagation` of width C = k + k^2 + ... + k^hops and never
synchronise the host, so they can run inside a CUDA training step.

Propagators are registered in ``PROPAGATORS`` under the names of ``invprop.names.PROPAGATORS``,
which also declares each one's largest positive set C(k, hops): params validation bounds
``pretrain.n_pos`` by it, and :func:`propagate` checks that every result is that wide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from invprop import names
from invprop.bounds import max_positives
from invprop.registry import Registry

__all__ = [
    "PROPAGATORS",
    "Propagation",
    "Propagator",
    "hop_counts",
    "max_positives",
    "propagate",
    "propagate_all",
    "propagate_concat",
    "propagate_exact",
]


class Propagation(NamedTuple):
    """Fixed-shape positive sets of a batch of anchors (C = ``max_positives(k, hops)``).

    ids:  LongTensor [B, C] bank indices; 0 where ``mask`` is False.
    mask: BoolTensor [B, C] True for a real member of the set.
    hop:  LongTensor [B, C] 1-based hop at which the member was reached; 0 where masked.
    """

    ids: Tensor
    mask: Tensor
    hop: Tensor


def _check_inputs(neighbours: Tensor, anchors: Tensor, hops: int) -> None:
    """Shape/dtype checks only (no data-dependent checks: they would sync the host)."""
    if neighbours.dim() != 2 or neighbours.dtype != torch.long:
        raise ValueError(
            f"neighbours must be int64 [n, k], got {neighbours.dtype} {tuple(neighbours.shape)}"
        )
    if anchors.dim() != 1 or anchors.dtype != torch.long:
        raise ValueError(f"anchors must be int64 [B], got {anchors.dtype} {tuple(anchors.shape)}")
    if anchors.device != neighbours.device:
        raise ValueError(f"anchors on {anchors.device} but neighbours on {neighbours.device}")
    max_positives(neighbours.shape[1], hops)  # validates k and hops


def _expand(neighbours: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Neighbour lists of each node of a [B, c] block -> [B, c*k] children and their mask.

    Children of masked parents and -1 table entries are masked. The order is parent-major
    (parent j's k neighbours sit at j*k .. j*k+k-1), matching the authors' concatenation.
    """
    b, c = ids.shape
    safe = torch.where(mask, ids, 0)  # masked parents read row 0; the result is masked away
    children = neighbours.index_select(0, safe.reshape(-1)).view(b, c, -1)
    child_mask = mask.unsqueeze(-1) & (children >= 0)
    return children.reshape(b, -1), child_mask.reshape(b, -1)


def _first_unseen(
    seen: Tensor, seen_mask: Tensor, cand: Tensor, cand_mask: Tensor, n: int
) -> Tensor:
    """Mask [B, c] of candidates that are valid, not in ``seen`` and first of their id.

    Per row, sort the keys 2*id + is_candidate (invalid entries get id n, so they sort last):
    a seen node sorts before candidates with the same id, and among equal candidates the
    stable sort keeps the leftmost first. A candidate is new iff it opens its run of equal ids.
    """
    s = seen.shape[1]
    ids = torch.cat([seen, cand], dim=1)
    valid = torch.cat([seen_mask, cand_mask], dim=1)
    is_cand = torch.arange(ids.shape[1], device=ids.device) >= s
    key = torch.where(valid, ids, n) * 2 + is_cand
    sorted_key, perm = torch.sort(key, dim=1, stable=True)
    node = sorted_key // 2
    opens_run = torch.ones_like(valid)
    opens_run[:, 1:] = node[:, 1:] != node[:, :-1]
    new_sorted = opens_run & (sorted_key % 2 == 1) & (node < n)
    new = torch.zeros_like(new_sorted).scatter_(1, perm, new_sorted)
    return new[:, s:]


def _compact(ids: Tensor, mask: Tensor, hop: Tensor) -> Propagation:
    """Move valid slots to the front of each row (stable, so hop order is kept); zero the rest."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    mask = mask.gather(1, order)
    ids = torch.where(mask, ids.gather(1, order), 0)
    hop = torch.where(mask, hop.gather(1, order), 0)
    return Propagation(ids, mask, hop)


Propagator = Callable[[Tensor, Tensor, int], Propagation]
PROPAGATORS: Registry[Propagator] = Registry("propagator", names.PROPAGATORS)


@PROPAGATORS.register("exact")
def propagate_exact(neighbours: Tensor, anchors: Tensor, hops: int) -> Propagation:
    """Exact BFS over the k-NN table: distinct nodes within 1..hops steps, anchor excluded.

    neighbours: LongTensor [n, k] (-1 = unknown, skipped); anchors: LongTensor [B].
    Returns a Propagation of width C = max_positives(k, hops); valid members come first in
    each row, ordered by hop, and ``hop`` is the BFS distance at which each was first reached.
    The frontier of hop h holds the nodes first reached at hop h-1 (at most k^(h-1) slots),
    so every shape is fixed and nothing synchronises the host.
    """
    _check_inputs(neighbours, anchors, hops)
    n = neighbours.shape[0]
    frontier = anchors.unsqueeze(1)
    frontier_mask = torch.ones_like(frontier, dtype=torch.bool)
    seen, seen_mask = frontier, frontier_mask  # the anchor counts as seen: never a positive
    ids, masks, hop_ids = [], [], []
    for h in range(1, hops + 1):
        cand, cand_mask = _expand(neighbours, frontier, frontier_mask)
        new = _first_unseen(seen, seen_mask, cand, cand_mask, n)
        ids.append(cand)
        masks.append(new)
        hop_ids.append(torch.full_like(cand, h))
        seen = torch.cat([seen, cand], dim=1)
        seen_mask = torch.cat([seen_mask, new], dim=1)
        frontier, frontier_mask = cand, new
    return _compact(torch.cat(ids, 1), torch.cat(masks, 1), torch.cat(hop_ids, 1))


@PROPAGATORS.register("concat")
def propagate_concat(neighbours: Tensor, anchors: Tensor, hops: int) -> Propagation:
    """The authors' propagation: neighbour lists concatenated hop by hop, nothing removed.

    Transcribes ``InvariancePropagationLoss.propagate`` in objective.py of
    WangFeng18/InvariancePropagation (commit bd8f5f77dc9809db8e66b4071768e059a9204f73; same
    code at 602add6a22fabb5ff12924b190f21911f6aedd5b): start from G[anchor] (k columns), then
    for each column of the previous hop, left to right, append that node's k neighbours. That
    gives k + k^2 + ... + k^hops candidates in which duplicates are kept and the anchor itself
    appears whenever it is reachable (e.g. at hop 2 through any mutual neighbour); all count
    as candidates. Candidates read from -1 entries (and their descendants) are masked; the
    authors' table starts at zeros instead, so there they would be node 0.
    """
    _check_inputs(neighbours, anchors, hops)
    block = anchors.unsqueeze(1)
    block_mask = torch.ones_like(block, dtype=torch.bool)
    ids, masks, hop_ids = [], [], []
    for h in range(1, hops + 1):
        block, block_mask = _expand(neighbours, block, block_mask)
        ids.append(torch.where(block_mask, block, 0))
        masks.append(block_mask)
        hop_ids.append(torch.where(block_mask, h, 0))
    return Propagation(torch.cat(ids, 1), torch.cat(masks, 1), torch.cat(hop_ids, 1))


def propagate(neighbours: Tensor, anchors: Tensor, hops: int, mode: str = "exact") -> Propagation:
    """The positive sets of the propagator named ``mode`` ("exact", "concat", ...).

    Checks the result's width against the largest positive set the propagator declares in
    ``invprop.names.PROPAGATORS`` (a shape, so no host synchronisation): params validation
    trusts that declaration.
    """
    prop = PROPAGATORS[mode](neighbours, anchors, hops)
    declared = names.PROPAGATORS[mode](neighbours.shape[1], hops)
    if prop.ids.shape[1] != declared:
        raise ValueError(
            f"propagator {mode!r} returned sets {prop.ids.shape[1]} wide, but invprop/names.py "
            f"declares its largest positive set as {declared} (k={neighbours.shape[1]}, "
            f"hops={hops}); make the two agree"
        )
    return prop


def propagate_all(
    neighbours: Tensor, hops: int, mode: str = "exact", chunk_size: int = 4096
) -> Iterator[tuple[Tensor, Propagation]]:
    """Propagate from every node of the table in chunks; yields (anchors [b], Propagation).

    Memory per chunk is O(chunk_size * C); used by the propagate stage over the whole bank.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = neighbours.shape[0]
    for start in range(0, n, chunk_size):
        anchors = torch.arange(start, min(start + chunk_size, n), device=neighbours.device)
        yield anchors, propagate(neighbours, anchors, hops, mode)


def hop_counts(prop: Propagation, hops: int) -> Tensor:
    """Members per hop, LongTensor [B, hops] (column h-1 = hop h); ``cumsum(1)`` = within h hops.

    For ``exact`` a member's hop is where it was first reached; for ``concat`` it is the hop
    block of the candidate slot (duplicates counted).
    """
    counts = torch.zeros(prop.hop.shape[0], hops + 1, dtype=torch.long, device=prop.hop.device)
    counts.scatter_add_(1, prop.hop, prop.mask.long())
    return counts[:, 1:]
