"""k-NN graph backends (invprop.neighbour_search) against a brute-force numpy reference."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from invprop.errors import InvpropError
from invprop.neighbour_search import NEIGHBOUR_BACKENDS, knn_graph, knn_search, recall_at_k


def clustered(n: int, d: int, clusters: int, noise: float, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres, like embeddings of a few classes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference_graph(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force: all inner products, self set to -inf, sorted descending."""
    sim = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    ids = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sim, ids, axis=1)


def assert_same_neighbours(ids, sims, ref_ids, ref_sims, tol=1e-5):
    """Same similarity profile, and the same ids except where a similarity tie reorders them."""
    np.testing.assert_allclose(sims, ref_sims, atol=tol)
    ties = np.isclose(ref_sims[:, :, None], ref_sims[:, None, :], atol=tol).sum(2) > 1
    # a tie at the k-th place may swap in a different id with the same similarity
    ties |= np.isclose(ref_sims, ref_sims[:, -1:], atol=tol)
    assert np.all((ids == ref_ids) | ties)
    assert (ids == ref_ids).mean() > 0.99


@pytest.mark.parametrize("backend", sorted(NEIGHBOUR_BACKENDS))
def test_exact_backends_match_brute_force(backend):
    x = clustered(700, 24, 7, 0.8, seed=1)
    ref_ids, ref_sims = reference_graph(x, 9)
    graph = knn_graph(x, 9, backend=backend)
    ids, sims = graph  # unpacks like a (ids, sims) pair
    assert ids.dtype == np.int64 and sims.dtype == np.float32 and ids.shape == (700, 9)
    assert graph.recall is None and graph.backend == backend
    assert_same_neighbours(ids, sims, ref_ids, ref_sims)


def test_faiss_and_torch_agree():
    x = clustered(1500, 32, 12, 1.0, seed=2)
    a_ids, a_sims = knn_graph(x, 15, backend="faiss")
    b_ids, b_sims = knn_graph(x, 15, backend="torch", chunk_size=97)  # odd chunks
    assert_same_neighbours(a_ids, a_sims, b_ids, b_sims)


@pytest.mark.parametrize("backend", sorted(NEIGHBOUR_BACKENDS))
def test_self_excluded_even_behind_exact_duplicates(backend):
    x = clustered(300, 8, 5, 0.5, seed=3)
    x[10] = x[11] = x[12] = x[13]  # four identical rows: ties with self
    ids, sims = knn_graph(x, 5, backend=backend)
    assert not np.any(ids == np.arange(300)[:, None])
    for i in (10, 11, 12, 13):
        assert set(ids[i, :3]) == {10, 11, 12, 13} - {i}
        np.testing.assert_allclose(sims[i, :3], 1.0, atol=1e-5)


def test_knn_search_returns_top_k_without_exclusion():
    db = clustered(400, 16, 4, 0.7, seed=4)
    queries = clustered(50, 16, 4, 0.7, seed=5)
    for backend in NEIGHBOUR_BACKENDS:
        ids, sims = knn_search(db, queries, 6, backend=backend)
        want = np.sort(queries.astype(np.float64) @ db.T.astype(np.float64), axis=1)[:, ::-1][:, :6]
        np.testing.assert_allclose(sims, want, atol=1e-5)
        assert ids.shape == (50, 6)


@pytest.mark.parametrize(
    ("index", "options"), [("ivf", {"nlist": 16, "nprobe": 4}), ("hnsw", {"m": 16})]
)
def test_approximate_indexes_report_high_recall_on_easy_data(index, options):
    x = clustered(3000, 16, 10, 0.15, seed=6)  # tight clusters: easy
    graph = knn_graph(x, 10, backend="faiss", index=index, recall_queries=300, **options)
    assert graph.index == index
    assert 0.0 <= graph.recall <= 1.0
    assert graph.recall > 0.9
    # the reported figure is the overlap with exact lists, counted directly
    rows = np.sort(np.random.default_rng(0).choice(3000, 300, replace=False))
    exact, _ = reference_graph(x, 10)
    direct = np.mean([len(set(graph.ids[r]) & set(exact[r])) / 10 for r in rows])
    assert graph.recall == pytest.approx(direct, abs=0.02)  # ties may differ slightly


@pytest.mark.filterwarnings("ignore:the ivf index found fewer")
def test_low_nprobe_gives_lower_recall():
    x = clustered(4000, 32, 40, 1.2, seed=7)  # overlapping clusters: hard
    low = knn_graph(x, 10, index="ivf", nlist=64, nprobe=1, recall_queries=200).recall
    high = knn_graph(x, 10, index="ivf", nlist=64, nprobe=64, recall_queries=200).recall
    assert 0.0 <= low < high <= 1.0
    assert high == pytest.approx(1.0, abs=0.02)  # every list probed: exact


def test_recall_at_k_counts_overlap():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, 4]])
    assert recall_at_k(approx, exact) == pytest.approx(3 / 6)


def test_errors_are_clear():
    x = clustered(20, 4, 2, 0.5)
    with pytest.raises(InvpropError, match="k = 20"):
        knn_graph(x, 20)
    with pytest.raises(InvpropError, match="k must be a positive"):
        knn_graph(x, 0)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InvpropError, match="row 7"):
        knn_graph(bad, 3)
    with pytest.raises(InvpropError, match="dimension 5 != database dimension 4"):
        knn_search(x, np.ones((3, 5), np.float32), 2)
    with pytest.raises(InvpropError, match="2-D"):
        knn_graph(x[0], 3)
    with pytest.raises(
        InvpropError, match="unknown neighbour backend 'annoy'; allowed: faiss, torch"
    ):
        knn_graph(x, 3, backend="annoy")
    with pytest.raises(InvpropError, match="unknown index"):
        knn_graph(x, 3, index="lsh")
    with pytest.raises(InvpropError, match="torch backend searches exactly"):
        knn_graph(x, 3, backend="torch", index="hnsw")
    with pytest.raises(InvpropError, match="floats"):
        knn_graph(np.arange(40).reshape(20, 2), 3)


def test_auto_falls_back_to_torch_with_a_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    x = clustered(100, 8, 3, 0.5)
    with pytest.warns(UserWarning, match="faiss is not installed"):
        graph = knn_graph(x, 4, backend="auto")
    assert graph.backend == "torch"
    with pytest.raises(InvpropError, match="faiss is not installed"):
        knn_graph(x, 4, backend="faiss")


def test_auto_prefers_faiss_silently():
    x = clustered(100, 8, 3, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert knn_graph(x, 4).backend == "faiss"


def test_too_many_ivf_lists_warns_and_still_works():
    x = clustered(200, 8, 3, 0.3)
    with pytest.warns(UserWarning, match="nlist=1024 is too many"):
        graph = knn_graph(x, 4, index="ivf", nlist=1024, nprobe=16, recall_queries=50)
    assert graph.recall > 0.9
