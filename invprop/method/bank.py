"""Memory bank V and k-NN table G of InvP, as buffers of one module.

Both live in ``state_dict()`` so checkpoints, resume, the embed and graph stages all restore
them by name. Follows ``MemoryBank_v1`` and ``InvariancePropagationLoss.update_nn`` in
objective.py of WangFeng18/InvariancePropagation (commit
bd8f5f77dc9809db8e66b4071768e059a9204f73), except that the table starts at -1 ("unknown")
instead of 0, k is a parameter instead of 4, and the bank can be filled by a forward pass.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invprop.method.loss import bank_similarities

__all__ = ["MemoryBank", "knn_table", "neighbours_excluding_self", "table_purity"]


def _own_rows(rows: Tensor) -> Tensor:
    """One process: the batch is the whole batch."""
    return rows


def neighbours_excluding_self(top_ids: Tensor, anchors: Tensor, k: int) -> Tensor:
    """k nearest neighbours from a similarity-sorted top-(k+1) list, dropping the anchor.

    top_ids: LongTensor [B, >= k+1] sorted by decreasing similarity; anchors: [B].
    Returns LongTensor [B, k]: the anchor is removed when present, otherwise the (k+1)-th
    entry is dropped. Same set as the authors' ``update_nn`` (which moves the (k+1)-th entry
    into the anchor's slot); here the similarity order is kept.
    """
    top = top_ids[:, : k + 1]
    is_self = (top == anchors.unsqueeze(1)).to(torch.uint8)
    order = torch.sort(is_self, dim=1, stable=True).indices  # non-self first, order kept
    return top.gather(1, order[:, :k])


@torch.no_grad()
def knn_table(
    vectors: Tensor, k: int, chunk_size: int = 1024, col_chunk_size: int = 65536
) -> Tensor:
    """Exact k-NN table of the rows of ``vectors`` [n, d] by dot product, self excluded.

    Returns LongTensor [n, k] sorted by decreasing similarity. Blocks of chunk_size x
    col_chunk_size similarities are computed with a running top-k, so memory stays bounded
    (256 MiB of fp32 per block with the defaults) for n = 1.28M.
    """
    n = vectors.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} rows to build a k-NN table, got n={n}")
    vectors = vectors.float()
    out = torch.empty(n, k, dtype=torch.long, device=vectors.device)
    for r0 in range(0, n, chunk_size):
        query = vectors[r0 : r0 + chunk_size]
        rows = torch.arange(r0, r0 + query.shape[0], device=vectors.device)
        best_v = torch.full((query.shape[0], k), -math.inf, device=vectors.device)
        best_i = torch.zeros((query.shape[0], k), dtype=torch.long, device=vectors.device)
        for c0 in range(0, n, col_chunk_size):
            block = bank_similarities(query, vectors[c0 : c0 + col_chunk_size])
            cols = block.shape[1]
            local = rows - c0  # column of each row's own entry in this block, if inside
            inside = (local >= 0) & (local < cols)
            idx = local.clamp(0, cols - 1).unsqueeze(1)
            own = torch.where(inside.unsqueeze(1), -math.inf, block.gather(1, idx))
            block.scatter_(1, idx, own)
            v, i = block.topk(min(k, cols), dim=1)
            merged_v = torch.cat([best_v, v], dim=1)
            merged_i = torch.cat([best_i, i + c0], dim=1)
            best_v, pick = merged_v.topk(k, dim=1)
            best_i = merged_i.gather(1, pick)
        out[r0 : r0 + query.shape[0]] = best_i
    return out


def table_purity(neighbours: Tensor, labels: Tensor) -> float | None:
    """Share of a row's filled table entries (not -1) that carry the row's label, averaged
    over labelled rows (label >= 0) with at least one filled entry; None when there are none.

    neighbours: LongTensor [n, k]; labels: LongTensor [n], on the same device.
    """
    valid = neighbours >= 0
    same = valid & (labels[neighbours.clamp(min=0)] == labels.unsqueeze(1))
    rows = (labels >= 0) & valid.any(dim=1)
    if not bool(rows.any()):
        return None
    share = same.sum(1).double() / valid.sum(1).clamp(min=1).double()
    return float(share[rows].mean())


class MemoryBank(nn.Module):
    """Memory bank ``vectors`` (float32 [n, dim]) and k-NN table ``neighbours`` (int64 [n, k]).

    ``neighbours[i]`` holds the ids of the k bank entries most similar to sample i when it was
    last seen (self excluded); -1 marks a row never filled. Both are registered buffers, so
    ``state_dict()`` carries them and ``.to(device)`` moves them.
    """

    vectors: Tensor
    neighbours: Tensor

    def __init__(self, n: int, dim: int, k: int) -> None:
        super().__init__()
        if n < 1 or dim < 1 or k < 1:
            raise ValueError(f"need n, dim, k >= 1, got n={n}, dim={dim}, k={k}")
        if n <= k + 1:
            raise ValueError(f"need n > k + 1 (top-(k+1) per row), got n={n}, k={k}")
        self.register_buffer("vectors", torch.zeros(n, dim))
        self.register_buffer("neighbours", torch.full((n, k), -1, dtype=torch.long))

    @property
    def n(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def k(self) -> int:
        return self.neighbours.shape[1]

    def extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}, k={self.k}"

    def digest(self) -> str:
        """sha256 of the vectors' and the table's bytes: equal banks, equal digests (DDP
        ranks compare theirs at the end of training)."""
        return self.digest_of(self.state_dict())

    @staticmethod
    def digest_of(state: dict[str, Tensor]) -> str:
        """`digest` of a bank's state dict (e.g. a checkpoint's "bank")."""
        digest = hashlib.sha256()
        for name in ("vectors", "neighbours"):
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def init_random(self, generator: torch.Generator) -> None:
        """Authors' init: vectors ~ U[-s, s], s = 1/sqrt(dim/3), not normalised; table = -1.

        Drawn on the generator's device, then copied to the bank's device.
        """
        s = 1.0 / math.sqrt(self.dim / 3)
        draw = torch.rand(self.n, self.dim, generator=generator, device=generator.device)
        self.vectors.copy_(draw.mul_(2 * s).sub_(s))
        self.neighbours.fill_(-1)

    @torch.no_grad()
    def init_from(
        self, embeddings: Tensor, chunk_size: int = 1024, col_chunk_size: int = 65536
    ) -> None:
        """Forward init: vectors = normalised embeddings [n, dim]; table = exact k-NN of them.

        Makes the neighbours meaningful from step one (docs/method.md, "Choices against the
        authors' code"). Memory stays bounded by chunking (see :func:`knn_table`).
        """
        if tuple(embeddings.shape) != tuple(self.vectors.shape):
            raise ValueError(
                f"embeddings shape {tuple(embeddings.shape)} != bank {tuple(self.vectors.shape)}"
            )
        self.vectors.copy_(F.normalize(embeddings.float(), dim=1))
        self.rebuild_table(self.vectors, chunk_size, col_chunk_size)

    @torch.no_grad()
    def rebuild_table(
        self, vectors: Tensor | None = None, chunk_size: int = 1024, col_chunk_size: int = 65536
    ) -> None:
        """Table = exact k-NN of `vectors` [n, d] (default: the bank itself), self excluded.

        The once-per-epoch alternatives to the online refresh (pretrain.table_refresh): the
        bank against itself, or clean un-augmented embeddings of the current network.
        """
        source = self.vectors if vectors is None else vectors
        if source.shape[0] != self.n:
            raise ValueError(f"need {self.n} rows to rebuild the table, got {source.shape[0]}")
        self.neighbours.copy_(knn_table(source, self.k, chunk_size, col_chunk_size))

    def similarities(self, embeddings: Tensor) -> Tensor:
        """S = embeddings [B, dim] @ vectors^T in float32 -> [B, n]."""
        return bank_similarities(embeddings, self.vectors)

    def filled(self) -> Tensor:
        """BoolTensor [n]: rows of the table already filled (no -1)."""
        return (self.neighbours >= 0).all(dim=1)

    @torch.no_grad()
    def update(
        self,
        indices: Tensor,
        embeddings: Tensor,
        sim: Tensor,
        momentum: float,
        gather: Callable[[Tensor], Tensor] = _own_rows,
        refresh_table: bool = True,
    ) -> None:
        """Refresh the batch's table rows, then their vectors (call after the losses).

        indices: LongTensor [B]; embeddings: [B, dim] (normalised here again);
        sim: [B, n], similarities of the NEW embeddings to the OLD bank.
        G[i] <- top-(k+1) of sim[i] without i (k entries); V[i] <- normalize(m V[i] + (1-m) v_i).
        ``gather`` concatenates every rank's rows (``invprop.distributed.all_gather_rows``),
        so under DDP each rank writes the whole global batch and the banks stay identical;
        only the [B, k] table rows travel, never the [B, n] similarities.
        ``indices`` must be distinct (true for a sampler without replacement); with repeats,
        which write wins is undefined. Not checked, since checking would sync the host.
        ``refresh_table`` False leaves the table alone (it is rebuilt once per epoch instead).
        """
        batch = gather(indices)
        if refresh_table:
            top = sim.detach().float().topk(self.k + 1, dim=1).indices
            rows = gather(neighbours_excluding_self(top, indices, self.k))
            self.neighbours.index_copy_(0, batch, rows)
        v = gather(F.normalize(embeddings.detach().float(), dim=1))
        indices = batch
        mixed = momentum * self.vectors.index_select(0, indices) + (1.0 - momentum) * v
        self.vectors.index_copy_(0, indices, F.normalize(mixed, dim=1))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Fail with the expected and found n, d, k when a checkpoint's bank does not fit."""
        vectors = state_dict.get(prefix + "vectors")
        neighbours = state_dict.get(prefix + "neighbours")
        if vectors is not None and neighbours is not None:
            vs, gs = tuple(vectors.shape), tuple(neighbours.shape)
            if vs != tuple(self.vectors.shape) or gs != tuple(self.neighbours.shape):
                raise ValueError(
                    "MemoryBank state does not fit this bank: expected "
                    f"n={self.n}, d={self.dim}, k={self.k}, got vectors {vs} "
                    f"(n={vs[0]}, d={vs[-1]}) and neighbours {gs} (n={gs[0]}, k={gs[-1]})"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
