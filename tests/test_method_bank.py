"""MemoryBank: init, table refresh, momentum update and state round trip vs plain references."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import exact_table

from invprop.method import (
    MemoryBank,
    bank_similarities,
    knn_table,
    neighbours_excluding_self,
    table_purity,
)


def test_buffers_shapes_and_defaults() -> None:
    bank = MemoryBank(10, 6, 3)
    assert (bank.n, bank.dim, bank.k) == (10, 6, 3)
    assert bank.vectors.dtype == torch.float32 and bank.vectors.shape == (10, 6)
    assert bank.neighbours.dtype == torch.long and bank.neighbours.shape == (10, 3)
    assert (bank.neighbours == -1).all() and not bank.filled().any()
    assert set(bank.state_dict()) == {"vectors", "neighbours"}
    assert list(bank.parameters()) == []
    with pytest.raises(ValueError):
        MemoryBank(4, 6, 3)  # needs n > k + 1


def test_init_random_range_not_normalised_and_seeded() -> None:
    bank = MemoryBank(2000, 128, 4)
    bank.neighbours.fill_(7)
    bank.init_random(torch.Generator().manual_seed(0))
    s = 1 / math.sqrt(128 / 3)
    v = bank.vectors
    assert v.min() >= -s and v.max() <= s
    assert v.min() < -0.99 * s and v.max() > 0.99 * s  # fills the whole range
    assert abs(v.mean().item()) < 0.01
    norms = v.norm(dim=1)
    assert norms.mean().item() == pytest.approx(1.0, abs=0.01)  # ~1 on average, not exactly
    assert (norms - 1).abs().max() > 1e-3
    assert (bank.neighbours == -1).all()
    other = MemoryBank(2000, 128, 4)
    other.init_random(torch.Generator().manual_seed(0))
    assert torch.equal(other.vectors, v)


def brute_force_table(vectors: torch.Tensor, k: int) -> list[set[int]]:
    v = vectors.double()
    sim = v @ v.t()
    sim.fill_diagonal_(-math.inf)
    return [set(row) for row in sim.topk(k, dim=1).indices.tolist()]


@pytest.mark.parametrize(("chunk", "col_chunk"), [(7, 11), (1024, 65536), (1, 3)])
def test_init_from_equals_brute_force(chunk: int, col_chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(53, 8, generator=g) * 3
    bank = MemoryBank(53, 8, 4)
    bank.init_from(emb, chunk_size=chunk, col_chunk_size=col_chunk)
    torch.testing.assert_close(bank.vectors, F.normalize(emb, dim=1))
    assert [set(r) for r in bank.neighbours.tolist()] == brute_force_table(bank.vectors, 4)
    assert bank.filled().all()
    ar = torch.arange(53)
    assert not (bank.neighbours == ar[:, None]).any()  # never its own neighbour
    sims = (bank.vectors[ar[:, None]] * bank.vectors[bank.neighbours]).sum(-1)
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # most similar first


def test_knn_table_handles_duplicate_points() -> None:
    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]]), dim=1)
    table = knn_table(v, 1, chunk_size=2, col_chunk_size=2)
    assert table[:, 0].tolist()[:2] == [1, 0]  # the twin, not itself


def test_neighbours_excluding_self_cases() -> None:
    top = torch.tensor(
        [
            [5, 1, 2, 3, 4],  # anchor 5 first: drop it
            [1, 2, 5, 3, 4],  # anchor in the middle: drop it, keep order
            [1, 2, 3, 4, 5],  # anchor last: drop it
            [1, 2, 3, 4, 6],  # anchor absent: drop the (k+1)-th
        ]
    )
    got = neighbours_excluding_self(top, torch.tensor([5, 5, 5, 5]), 4)
    assert got.tolist() == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]


def test_update_matches_reference_and_excludes_self() -> None:
    g = torch.Generator().manual_seed(2)
    n, d, k, m = 30, 5, 3, 0.3
    bank = MemoryBank(n, d, k)
    bank.init_random(g)
    old = bank.vectors.clone()
    old_table = bank.neighbours.clone()
    idx = torch.tensor([4, 17, 0, 29])
    emb = torch.randn(4, d, generator=g)
    v = F.normalize(emb, dim=1)
    sim = bank_similarities(v, bank.vectors)
    sim[0, 4] = 2.0  # anchor 4 is its own top-1: must not be its neighbour
    bank.update(idx, emb, sim, momentum=m)
    for b, i in enumerate(idx.tolist()):
        row = sim[b].double()
        order = sorted(range(n), key=lambda j: -row[j].item())
        want_nb = [j for j in order[: k + 1] if j != i][:k]
        assert bank.neighbours[i].tolist() == want_nb
        mixed = m * old[i].double() + (1 - m) * v[b].double()
        torch.testing.assert_close(bank.vectors[i].double(), mixed / mixed.norm())
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(bank.vectors[rest], old[rest])  # other rows untouched
    assert torch.equal(bank.neighbours[rest], old_table[rest])
    assert 4 not in bank.neighbours[4].tolist()


def test_update_with_gathered_shares_equals_update_of_the_whole_batch() -> None:
    # Two ranks each hold half of a batch; with `gather` joining their rows, each rank's
    # bank ends as one process's bank after the whole batch (what DDP relies on).
    g = torch.Generator().manual_seed(5)
    bank = MemoryBank(40, 6, 3)
    bank.init_random(g)
    idx = torch.tensor([3, 31, 8, 12, 0, 27])
    emb = torch.randn(6, 6, generator=g)
    sim = bank_similarities(F.normalize(emb, dim=1), bank.vectors)
    whole = copy.deepcopy(bank)
    whole.update(idx, emb, sim, 0.5)

    sent: list[torch.Tensor] = []  # what rank 1 contributes, in the order update gathers

    def record(rows: torch.Tensor) -> torch.Tensor:
        sent.append(rows)
        return rows

    copy.deepcopy(bank).update(idx[3:], emb[3:], sim[3:], 0.5, gather=record)
    received = iter(sent)
    bank.update(idx[:3], emb[:3], sim[:3], 0.5, gather=lambda t: torch.cat([t, next(received)]))
    assert torch.equal(bank.neighbours, whole.neighbours)
    torch.testing.assert_close(bank.vectors, whole.vectors, rtol=0, atol=0)


def test_update_without_table_refresh_moves_vectors_only() -> None:
    g = torch.Generator().manual_seed(3)
    bank = MemoryBank(25, 4, 2)
    bank.init_from(torch.randn(25, 4, generator=g))
    table = bank.neighbours.clone()
    twin = copy.deepcopy(bank)
    idx = torch.tensor([1, 9, 20])
    emb = torch.randn(3, 4, generator=g)
    sim = bank_similarities(F.normalize(emb, dim=1), bank.vectors)
    bank.update(idx, emb, sim, 0.5, refresh_table=False)
    twin.update(idx, emb, sim, 0.5)
    assert torch.equal(bank.vectors, twin.vectors)
    assert torch.equal(bank.neighbours, table)
    assert not torch.equal(twin.neighbours, table)  # the online refresh would have moved it


@pytest.mark.parametrize("source", ["bank", "given"])
def test_rebuild_table_is_the_exact_knn_of_its_source(source: str) -> None:
    g = torch.Generator().manual_seed(4)
    bank = MemoryBank(30, 5, 3)
    bank.init_random(g)
    given = F.normalize(torch.randn(30, 5, generator=g), dim=1)
    if source == "bank":
        bank.rebuild_table()
        want = exact_table(bank.vectors.double().numpy(), 3)
    else:
        bank.rebuild_table(given)
        want = exact_table(given.double().numpy(), 3)
    assert bank.neighbours.tolist() == want.tolist()
    with pytest.raises(ValueError, match="need 30 rows"):
        bank.rebuild_table(given[:10])


def test_table_purity_matches_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(6)
    table = torch.randint(-1, 40, (40, 4), generator=g)
    table[3] = -1  # a row never filled does not count
    labels = torch.randint(0, 3, (40,), generator=g)
    labels[5] = -1  # nor does an unlabelled row
    shares = []
    for i in range(40):
        filled = [j for j in table[i].tolist() if j >= 0]
        if labels[i] >= 0 and filled:
            shares.append(sum(labels[j] == labels[i] for j in filled) / len(filled))
    assert table_purity(table, labels) == pytest.approx(sum(shares) / len(shares))
    assert table_purity(torch.full((4, 2), -1), torch.zeros(4, dtype=torch.long)) is None


def test_update_accepts_bf16_and_keeps_fp32_state() -> None:
    bank = MemoryBank(20, 4, 2)
    bank.init_random(torch.Generator().manual_seed(0))
    emb = F.normalize(torch.randn(3, 4), dim=1).bfloat16()
    idx = torch.tensor([1, 2, 3])
    bank.update(idx, emb, bank_similarities(emb, bank.vectors), 0.5)
    assert bank.vectors.dtype == torch.float32 and bank.neighbours.dtype == torch.long
    torch.testing.assert_close(bank.vectors[idx].norm(dim=1), torch.ones(3))


def test_state_dict_round_trip() -> None:
    bank = MemoryBank(40, 6, 3)
    bank.init_from(torch.randn(40, 6, generator=torch.Generator().manual_seed(3)))
    bank.neighbours[5] = -1
    buf = io.BytesIO()
    torch.save({"bank": bank.state_dict()}, buf)
    buf.seek(0)
    restored = MemoryBank(40, 6, 3)
    restored.load_state_dict(torch.load(buf)["bank"])
    assert torch.equal(restored.vectors, bank.vectors)
    assert torch.equal(restored.neighbours, bank.neighbours)


@pytest.mark.parametrize(
    ("shape", "bad"), [((41, 6, 3), "n=41"), ((40, 8, 3), "d=8"), ((40, 6, 5), "k=5")]
)
def test_load_mismatch_names_n_d_k(shape: tuple[int, int, int], bad: str) -> None:
    state = MemoryBank(*shape).state_dict()
    with pytest.raises(ValueError, match="expected n=40, d=6, k=3") as err:
        MemoryBank(40, 6, 3).load_state_dict(state)
    assert bad in str(err.value)


def test_load_inside_a_parent_module_and_missing_keys() -> None:
    parent = torch.nn.Module()
    parent.bank = MemoryBank(12, 4, 2)
    state = parent.state_dict()
    assert set(state) == {"bank.vectors", "bank.neighbours"}
    parent.load_state_dict(state)
    del state["bank.neighbours"]
    with pytest.raises(RuntimeError, match="Missing key"):
        parent.load_state_dict(state)


def test_digest_is_a_function_of_the_bank_contents() -> None:
    a, b = MemoryBank(10, 4, 2), MemoryBank(10, 4, 2)
    a.init_random(torch.Generator().manual_seed(0))
    b.init_random(torch.Generator().manual_seed(0))
    assert a.digest() == b.digest()
    b.neighbours[3, 1] = 7  # the table counts as well as the vectors
    assert a.digest() != b.digest()
    b.load_state_dict(a.state_dict())
    b.vectors[0, 0] = torch.nextafter(b.vectors[0, 0], torch.tensor(2.0))  # one ulp
    assert a.digest() != b.digest()
