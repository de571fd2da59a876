"""What invariance propagation finds for every anchor, and how pure it is.

Exact propagation (invprop.method.propagation) from every node of a k-NN graph or of a
memory bank's neighbour table, with the hard and easy positives selected from each set;
the propagate stage, `invprop propagate|bank` and the neighbourhood view all use it.

Statistics. For hop h = 1..hops, ``cumulative`` describes the set within h hops and the P
hard / easy positives selected from it; ``new`` describes the nodes first reached at hop h.
``size`` is the mean set size over all anchors; ``purity`` is the share of a set's members
that carry the anchor's label, averaged over the anchors that have a label and a non-empty
set (unlabelled members count as other labels).

Selection is :func:`invprop.method.loss.select_positives`, the function training uses; it
takes [B, n] similarities, so :func:`select_from_sims` feeds it per-candidate similarities.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invprop.errors import InvpropError
from invprop.logs import get_logger, progress, track
from invprop.method.bank import table_purity
from invprop.method.loss import select_positives
from invprop.method.propagation import Propagation, max_positives, propagate_concat, propagate_exact

__all__ = [
    "KINDS",
    "AnchorPositives",
    "bank_stats",
    "bank_tables",
    "last_hop_summary",
    "positives_of",
    "propagation_stats",
    "select_from_sims",
    "table_coverage",
]

LOG = get_logger("propagate")
KINDS = ("all", "hard", "easy")
CHUNK = 2048
CHUNK_SLOTS = 1 << 22


# ---------------------------------------------------------------------------------------
# Core: propagation + selection for a block of anchors


def select_from_sims(
    prop: Propagation, cand_sims: Tensor, n_pos: int, mode: str, max_hop: int | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`select_positives` on per-candidate similarities instead of full [B, n] rows.

    prop: Propagation [B, C]; cand_sims: float [B, C], similarity of each candidate slot to
    its anchor. Only members with hop <= max_hop compete (all when None). Re-indexes the
    candidates as slots 0..C-1 so cand_sims plays the role of the [B, n] matrix, then maps
    the chosen slots back to bank ids. P is capped at C. Returns (ids [B, P], mask [B, P]).
    """
    b, c = prop.ids.shape
    mask = prop.mask if max_hop is None else prop.mask & (prop.hop <= max_hop)
    slots = torch.arange(c, device=prop.ids.device).expand(b, c)
    chosen, chosen_mask = select_positives(
        cand_sims, Propagation(slots, mask, prop.hop), min(n_pos, c), mode
    )
    return prop.ids.gather(1, chosen), chosen_mask


@dataclass
class ChunkResult:
    """One block of anchors: their exact propagation and the similarity of each slot."""

    anchors: Tensor  # [b]
    prop: Propagation  # [b, C]
    sims: Tensor  # [b, C] float32 (0 where masked)


def _propagate_chunks(
    neighbours: Tensor, vectors: Tensor, hops: int, anchors: Tensor, chunk: int = CHUNK
) -> Iterator[ChunkResult]:
    # at most ~4M candidate slots per block, so wide sets (large k or hops) fit in memory
    chunk = max(1, min(chunk, CHUNK_SLOTS // max_positives(neighbours.shape[1], hops)))
    for start in range(0, anchors.shape[0], chunk):
        block = anchors[start : start + chunk]
        prop = propagate_exact(neighbours, block, hops)
        member = vectors.index_select(0, prop.ids.reshape(-1)).view(*prop.ids.shape, -1)
        sims = torch.einsum("bcd,bd->bc", member, vectors.index_select(0, block))
        yield ChunkResult(block, prop, torch.where(prop.mask, sims, 0.0))


def _as_tensors(
    neighbours: np.ndarray | Tensor, vectors: np.ndarray | Tensor
) -> tuple[Tensor, Tensor]:
    g = torch.as_tensor(
        np.asarray(neighbours) if not isinstance(neighbours, Tensor) else neighbours
    )
    v = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors)
    if g.dim() != 2 or v.dim() != 2 or g.shape[0] != v.shape[0]:
        raise InvpropError(
            f"neighbour table {tuple(g.shape)} and vectors {tuple(v.shape)} do not fit: "
            "need [N, k] and [N, d] with the same N"
        )
    if g.numel() and (int(g.max()) >= g.shape[0] or int(g.min()) < -1):
        raise InvpropError(
            f"neighbour table holds ids outside [-1, {g.shape[0] - 1}]; it does not belong "
            "to these vectors"
        )
    return g.long().contiguous(), v.float().contiguous()


@dataclass
class AnchorPositives:
    """What propagation finds for one anchor (ids with their hop and similarity)."""

    anchor: int
    ids: np.ndarray  # [m] by hop, then discovery order
    hop: np.ndarray  # [m]
    sims: np.ndarray  # [m]
    hard_ids: np.ndarray  # [<=P] hardest first
    hard_sims: np.ndarray
    easy_ids: np.ndarray  # [<=P] easiest first
    easy_sims: np.ndarray


def positives_of(
    neighbours: np.ndarray | Tensor,
    vectors: np.ndarray | Tensor,
    anchor: int,
    hops: int,
    n_pos: int,
) -> AnchorPositives:
    """Propagated, hard and easy positives of one anchor (same code as the stage)."""
    g, v = _as_tensors(neighbours, vectors)
    if not 0 <= anchor < g.shape[0]:
        raise InvpropError(f"index {anchor} is out of range: the graph has {g.shape[0]} nodes")
    (res,) = _propagate_chunks(g, v, hops, torch.tensor([anchor]))
    m = res.prop.mask[0]
    hard, hard_mask = select_from_sims(res.prop, res.sims, n_pos, "hard")
    easy, easy_mask = select_from_sims(res.prop, res.sims, n_pos, "easy")
    hard, easy = hard[0][hard_mask[0]], easy[0][easy_mask[0]]
    anchor_vec = v[anchor]
    return AnchorPositives(
        anchor=anchor,
        ids=res.prop.ids[0][m].numpy(),
        hop=res.prop.hop[0][m].numpy(),
        sims=res.sims[0][m].numpy(),
        hard_ids=hard.numpy(),
        hard_sims=(v[hard] @ anchor_vec).numpy(),
        easy_ids=easy.numpy(),
        easy_sims=(v[easy] @ anchor_vec).numpy(),
    )


# ---------------------------------------------------------------------------------------
# Statistics


class _Accumulator:
    """Sums for mean set size (over all anchors) and mean purity (over eligible anchors)."""

    def __init__(self, labels: Tensor | None) -> None:
        self.labels = labels
        self.sums: dict[tuple[str, int, str], list[float]] = {}

    def add(self, key: tuple[str, int, str], own: Tensor | None, size: Tensor, same: Tensor | None):
        """own [b] anchor labels; size [b] set sizes; same [b] members with the anchor's label."""
        entry = self.sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])  # size, anchors, purity, rows
        entry[0] += float(size.sum())
        entry[1] += size.shape[0]
        if own is None or same is None:
            return
        rows = (own >= 0) & (size > 0)
        entry[2] += float((same[rows].double() / size[rows].double()).sum())
        entry[3] += float(rows.sum())

    def size(self, key: tuple[str, int, str]) -> float:
        total, anchors, _, _ = self.sums[key]
        return total / anchors if anchors else 0.0

    def purity(self, key: tuple[str, int, str]) -> float | None:
        _, _, total, rows = self.sums[key]
        return total / rows if rows else None


def _col(h: int, counts: Tensor | None) -> Tensor | None:
    """Column of hop h of a [b, hops] count table (None passes through)."""
    return None if counts is None else counts[:, h - 1]


def _same_label(labels: Tensor | None, own: Tensor | None, ids: Tensor, mask: Tensor):
    """[b, c] members of (ids, mask) that carry their anchor's label (None without labels)."""
    if labels is None or own is None:
        return None
    return (labels[ids] == own.unsqueeze(1)) & mask


def _labels_tensor(labels: np.ndarray | None, n: int, where: str) -> Tensor | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise InvpropError(
            f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {n} nodes; the labels "
            "come from another dataset or split: rerun the stages from prepare"
        )
    if not (labels >= 0).any():
        return None
    return torch.as_tensor(labels.astype(np.int64))


def propagation_stats(
    neighbours: np.ndarray | Tensor,
    vectors: np.ndarray | Tensor,
    labels: np.ndarray | None,
    hops: int,
    n_pos: int,
    collect: bool = False,
    chunk: int = CHUNK,
    where: str = "propagation",
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Exact propagation from every node; per-hop sizes and purities (see the module doc).

    neighbours [N, k] int (-1 skipped), vectors [N, d] (similarity = inner product), labels
    [N] (-1 = none; None = no labels). With ``collect`` also returns the CSR arrays of
    positives.npz. Returns (stats, csr or None).
    """
    g, v = _as_tensors(neighbours, vectors)
    n, k = g.shape
    acc = _Accumulator(_labels_tensor(labels, n, where))
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("ids", "hop", "count", "hard", "hard_count", "easy", "easy_count")
    }
    anchors_all = torch.arange(n)
    labels_t = acc.labels
    with torch.no_grad(), progress(f"{where}: propagating", n, "anchors", LOG) as shown:
        for res in _propagate_chunks(g, v, hops, anchors_all, chunk):
            shown.advance(res.anchors.shape[0], res.anchors.shape[0])
            a, prop = res.anchors, res.prop
            own = None if labels_t is None else labels_t[a]
            # members and same-label members per hop, by scatter: column h-1 = hop h
            slots = torch.zeros(a.shape[0], hops + 1, dtype=torch.long)
            new_size = slots.scatter_add(1, prop.hop, prop.mask.long())[:, 1:]
            same = _same_label(labels_t, own, prop.ids, prop.mask)
            new_same = None if same is None else slots.scatter_add(1, prop.hop, same.long())[:, 1:]
            cum_size = new_size.cumsum(1)
            cum_same = None if new_same is None else new_same.cumsum(1)
            for h in range(1, hops + 1):
                acc.add(("new", h, "all"), own, _col(h, new_size), _col(h, new_same))
                acc.add(("cumulative", h, "all"), own, _col(h, cum_size), _col(h, cum_same))
                for mode in ("hard", "easy"):
                    if n_pos >= max_positives(k, h) and not (collect and h == hops):
                        # P covers every possible member within h hops: the whole set
                        acc.add(("cumulative", h, mode), own, _col(h, cum_size), _col(h, cum_same))
                        continue
                    ids, mask = select_from_sims(prop, res.sims, n_pos, mode, max_hop=h)
                    chosen_same = _same_label(labels_t, own, ids, mask)
                    acc.add(
                        ("cumulative", h, mode),
                        own,
                        mask.sum(1),
                        None if chosen_same is None else chosen_same.sum(1),
                    )
                    if collect and h == hops:
                        parts[mode].append(ids[mask].numpy().astype(np.int32))
                        parts[f"{mode}_count"].append(mask.sum(1).numpy())
            if collect:
                parts["ids"].append(prop.ids[prop.mask].numpy().astype(np.int32))
                parts["hop"].append(prop.hop[prop.mask].numpy().astype(np.int8))
                parts["count"].append(prop.mask.sum(1).numpy())
    per_hop = []
    for h in range(1, hops + 1):
        cumulative: dict[str, Any] = {}
        for kind in KINDS:
            prefix = "" if kind == "all" else f"{kind}_"
            cumulative[f"{prefix}size"] = acc.size(("cumulative", h, kind))
            cumulative[f"{prefix}purity"] = acc.purity(("cumulative", h, kind))
        new = {"size": acc.size(("new", h, "all")), "purity": acc.purity(("new", h, "all"))}
        per_hop.append({"hop": h, "cumulative": cumulative, "new": new})
    stats = {
        "n": n,
        "k": k,
        "hops": hops,
        "n_pos": min(n_pos, max_positives(k, hops)),
        "max_positives": max_positives(k, hops),
        "labelled": 0 if acc.labels is None else int((acc.labels >= 0).sum()),
        "per_hop": per_hop,
    }
    csr = None
    if collect:

        def indptr(counts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)

        csr = {
            "indptr": indptr(parts["count"]),
            "ids": np.concatenate(parts["ids"]),
            "hop": np.concatenate(parts["hop"]),
            "hard_indptr": indptr(parts["hard_count"]),
            "hard_ids": np.concatenate(parts["hard"]),
            "easy_indptr": indptr(parts["easy_count"]),
            "easy_ids": np.concatenate(parts["easy"]),
        }
    return stats, csr


def last_hop_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Sizes and purities of all / hard / easy positives within the last hop."""
    last = stats["per_hop"][-1]["cumulative"]
    return {
        "purity": {kind: last["purity" if kind == "all" else f"{kind}_purity"] for kind in KINDS},
        "size": {kind: last["size" if kind == "all" else f"{kind}_size"] for kind in KINDS},
    }


# ---------------------------------------------------------------------------------------
# Memory banks of checkpoints


def bank_tables(state: dict[str, Any], where: str) -> tuple[Tensor, Tensor]:
    """(vectors float [n, d], neighbour table int64 [n, k]) of a checkpoint's memory bank."""
    bank = state.get("bank")
    if not isinstance(bank, dict) or "vectors" not in bank or "neighbours" not in bank:
        raise InvpropError(
            f"{where} has no memory bank (state['bank'] with vectors and neighbours); "
            "pass a checkpoint written by the pretrain stage"
        )
    vectors, neighbours = bank["vectors"], bank["neighbours"]
    if vectors.dim() != 2 or neighbours.dim() != 2 or vectors.shape[0] != neighbours.shape[0]:
        raise InvpropError(
            f"{where}: bank vectors {tuple(vectors.shape)} and neighbours "
            f"{tuple(neighbours.shape)} do not fit (need [n, d] and [n, k])"
        )
    return vectors.float(), neighbours.long()


def table_coverage(neighbours: Tensor) -> float:
    """Share of the table's rows that are filled (hold at least one id, not all -1)."""
    return float((neighbours >= 0).any(dim=1).double().mean()) if neighbours.shape[0] else 0.0


def bank_stats(
    state: dict[str, Any],
    labels: np.ndarray | None = None,
    hops: int | None = None,
    where: str = "checkpoint",
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """What a checkpoint's memory bank holds.

    - norms of the bank vectors (min / mean / max; 1 once a row has been updated);
    - coverage: share of table rows filled (not -1), and of entries;
    - concat duplicate rate: share of the authors' concatenated candidates (k + ... + k^hops
      per anchor, hops = the run's pretrain.hops unless given) that repeat an earlier
      candidate of the same anchor or are the anchor itself;
    - neighbour purity: share of table entries with the anchor's label (labelled anchors
      with a filled row), when labels are given.
    """
    vectors, neighbours = bank_tables(state, where)
    if hops is None:
        hops = int(state.get("config", {}).get("pretrain", {}).get("hops", 3))
    n, k = neighbours.shape
    norms = vectors.norm(dim=1)
    candidates = repeats = 0
    with torch.no_grad():
        for start in track(range(0, n, chunk), f"{where}: duplicates", unit="blocks"):
            anchors = torch.arange(start, min(start + chunk, n))
            concat = propagate_concat(neighbours, anchors, hops)
            exact = propagate_exact(neighbours, anchors, hops)
            # distinct non-anchor candidates == the exact BFS set
            candidates += int(concat.mask.sum())
            repeats += int(concat.mask.sum()) - int(exact.mask.sum())
    purity = None
    label_t = _labels_tensor(labels, n, where)
    if label_t is not None:
        purity = table_purity(neighbours, label_t)
    return {
        "n": n,
        "dim": int(vectors.shape[1]),
        "k": k,
        "hops": hops,
        "epoch": state.get("epoch"),
        "norms": {
            "min": float(norms.min()),
            "mean": float(norms.mean()),
            "max": float(norms.max()),
        },
        "coverage": table_coverage(neighbours),
        "entry_coverage": float((neighbours >= 0).double().mean()),
        "concat_candidates": candidates,
        "concat_duplicate_rate": repeats / candidates if candidates else None,
        "neighbour_purity": purity,
    }
