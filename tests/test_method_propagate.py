"""Propagation over the k-NN table vs plain Python references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bfs_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from invprop.method.propagation import (
    Propagation,
    hop_counts,
    max_positives,
    propagate,
    propagate_all,
    propagate_concat,
    propagate_exact,
)

FAST = settings(max_examples=40, deadline=None)


def random_table(seed: int, n: int, k: int, p_unknown: float) -> torch.Tensor:
    """Random table [n, k] with -1 entries (whole unknown rows and single unknown entries)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n, size=(n, k))
    table[rng.random((n, k)) < p_unknown] = -1
    table[rng.random(n) < p_unknown] = -1
    return torch.from_numpy(table).long()


def concat_reference(table: list[list[int]], anchor: int, hops: int) -> list[int]:
    """Literal transcription of the authors' propagate() for one sample (-1 for unknown).

    objective.py, InvariancePropagationLoss.propagate, WangFeng18/InvariancePropagation
    commit bd8f5f77dc9809db8e66b4071768e059a9204f73.
    """
    k = len(table[0])
    row = list(table[anchor])
    cur_point, end_point, layer = 0, len(row) - 1, 2
    while layer <= hops:
        node = row[cur_point]
        row.extend(table[node] if node >= 0 else [-1] * k)
        if cur_point == end_point:
            layer += 1
            end_point = len(row) - 1
        cur_point += 1
    return row


def valid_members(prop: Propagation, b: int) -> list[tuple[int, int]]:
    m = prop.mask[b]
    return list(zip(prop.ids[b][m].tolist(), prop.hop[b][m].tolist(), strict=True))


graphs = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 25),  # n
    st.integers(1, 5),  # k
    st.integers(1, 4),  # hops
    st.sampled_from([0.0, 0.1, 0.3]),  # probability of -1
)


def test_max_positives() -> None:
    assert max_positives(4, 3) == 4 + 16 + 64 == 84
    assert max_positives(1, 4) == 4
    assert max_positives(5, 1) == 5
    with pytest.raises(ValueError):
        max_positives(0, 3)
    with pytest.raises(ValueError):
        max_positives(4, 0)


@FAST
@given(graphs)
def test_exact_matches_queue_bfs(graph: tuple[int, int, int, int, float]) -> None:
    seed, n, k, hops, p = graph
    table = random_table(seed, n, k, p)
    anchors = torch.arange(n)
    prop = propagate_exact(table, anchors, hops)
    c = max_positives(k, hops)
    assert prop.ids.shape == prop.mask.shape == prop.hop.shape == (n, c)
    assert prop.ids.dtype == prop.hop.dtype == torch.long and prop.mask.dtype == torch.bool
    rows = table.tolist()
    for a in range(n):
        got = valid_members(prop, a)
        ref = bfs_reference(rows, a, hops)
        assert dict(got) == ref  # same set, same first-reached hop
        assert len(got) == len(ref)  # each member once
        nvalid = len(ref)
        assert prop.mask[a, :nvalid].all() and not prop.mask[a, nvalid:].any()  # masked tail
        assert (prop.ids[a, nvalid:] == 0).all() and (prop.hop[a, nvalid:] == 0).all()
        assert prop.hop[a, :nvalid].tolist() == sorted(prop.hop[a, :nvalid].tolist())


@FAST
@given(graphs)
def test_exact_properties(graph: tuple[int, int, int, int, float]) -> None:
    seed, n, k, hops, p = graph
    table = random_table(seed, n, k, p)
    rng = np.random.default_rng(seed)
    anchors = torch.from_numpy(rng.integers(0, n, size=7)).long()  # repeats allowed
    prop = propagate_exact(table, anchors, hops)
    rows = table.tolist()
    for b, a in enumerate(anchors.tolist()):
        members = valid_members(prop, b)
        ids = [i for i, _ in members]
        assert a not in ids  # anchor never its own positive
        assert len(ids) == len(set(ids))  # no duplicates
        hop_of = dict(members)
        for node, h in members:  # reachable: a parent one hop closer lists it
            parents = [a] if h == 1 else [q for q, hq in hop_of.items() if hq == h - 1]
            assert any(node in rows[q] for q in parents)
        if len(ids) < prop.ids.shape[1]:  # smaller sets are masked, not padded
            assert (~prop.mask[b]).sum() == prop.ids.shape[1] - len(ids)


def test_exact_small_graph_by_hand() -> None:
    # 0 -> 1, 2; 1 -> 0, 3; 2 -> 3, -1; 3 -> unknown row
    table = torch.tensor([[1, 2], [0, 3], [3, -1], [-1, -1]])
    prop = propagate_exact(table, torch.tensor([0, 3, 2]), hops=3)
    assert valid_members(prop, 0) == [(1, 1), (2, 1), (3, 2)]
    assert valid_members(prop, 1) == []
    assert valid_members(prop, 2) == [(3, 1)]


@FAST
@given(graphs)
def test_concat_matches_authors_loop(graph: tuple[int, int, int, int, float]) -> None:
    seed, n, k, hops, p = graph
    table = random_table(seed, n, k, p)
    anchors = torch.arange(n)
    prop = propagate_concat(table, anchors, hops)
    assert prop.ids.shape == (n, max_positives(k, hops))
    rows = table.tolist()
    block_hops = [h for h in range(1, hops + 1) for _ in range(k**h)]
    for a in range(n):
        ref = concat_reference(rows, a, hops)
        got = torch.where(prop.mask[a], prop.ids[a], -1).tolist()
        assert got == ref
        want_hop = [h if r >= 0 else 0 for h, r in zip(block_hops, ref, strict=True)]
        assert prop.hop[a].tolist() == want_hop


def test_concat_keeps_anchor_and_duplicates() -> None:
    # mutual neighbours: 0 <-> 1, 0 <-> 2, so 0 reaches itself at hop 2 twice, as the authors do
    table = torch.tensor([[1, 2], [0, 2], [0, 1]])
    prop = propagate_concat(table, torch.tensor([0]), hops=2)
    assert prop.ids[0].tolist() == [1, 2, 0, 2, 0, 1]
    assert prop.mask.all()
    exact = propagate_exact(table, torch.tensor([0]), hops=2)
    assert valid_members(exact, 0) == [(1, 1), (2, 1)]


@pytest.mark.parametrize("mode", ["exact", "concat"])
def test_propagate_all_chunks_match_one_call(mode: str) -> None:
    table = random_table(3, 50, 3, 0.1)
    full = propagate(table, torch.arange(50), 3, mode)
    chunks = list(propagate_all(table, 3, mode, chunk_size=16))
    assert [len(a) for a, _ in chunks] == [16, 16, 16, 2]
    for field in range(3):
        joined = torch.cat([prop[field] for _, prop in chunks])
        assert torch.equal(joined, full[field])
    assert torch.equal(torch.cat([a for a, _ in chunks]), torch.arange(50))


def test_propagate_rejects_bad_inputs() -> None:
    table = random_table(0, 10, 2, 0.0)
    with pytest.raises(ValueError, match=r"unknown propagator 'bfs'; allowed: concat, exact"):
        propagate(table, torch.arange(3), 2, "bfs")
    with pytest.raises(ValueError):
        propagate_exact(table.int(), torch.arange(3), 2)
    with pytest.raises(ValueError):
        propagate_exact(table, torch.arange(3), 0)


def test_the_old_module_path_still_imports_with_a_deprecation_warning() -> None:
    import invprop.method

    message = (
        r"^invprop\.method\.propagate was renamed invprop\.method\.propagation; "
        r"import propagate_exact from there$"
    )
    with pytest.warns(DeprecationWarning, match=message):
        from invprop.method.propagate import propagate_exact as old
    assert old is propagate_exact
    # the package's `propagate` is the function; the module has a name of its own
    assert invprop.method.propagate is propagate
    assert invprop.method.propagation.propagate is propagate


def test_hop_counts_per_hop_and_cumulative() -> None:
    table = random_table(5, 30, 3, 0.2)
    hops = 3
    prop = propagate_exact(table, torch.arange(30), hops)
    counts = hop_counts(prop, hops)
    rows = table.tolist()
    for a in range(30):
        ref = bfs_reference(rows, a, hops)
        per_hop = [sum(1 for d in ref.values() if d == h) for h in range(1, hops + 1)]
        assert counts[a].tolist() == per_hop
        assert counts.cumsum(1)[a, -1].item() == len(ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_propagate_cuda_matches_cpu_without_sync() -> None:
    table = random_table(1, 200, 4, 0.1)
    anchors = torch.arange(0, 200, 3)
    want = [propagate_exact(table, anchors, 3), propagate_concat(table, anchors, 3)]
    table_c, anchors_c = table.cuda(), anchors.cuda()
    propagate_exact(table_c, anchors_c, 3)  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = [propagate_exact(table_c, anchors_c, 3), propagate_concat(table_c, anchors_c, 3)]
        propagate(table_c, anchors_c, 3, "concat")  # its width check reads shapes only
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for g, w in zip(got, want, strict=True):
        for gf, wf in zip(g, w, strict=True):
            assert torch.equal(gf.cpu(), wf)
