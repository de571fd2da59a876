"""Weighted kNN (invprop.knn_classifier) against a plain per-query loop and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from invprop.knn_classifier import knn_accuracy, weighted_knn_scores


def reference_scores(train, labels, queries, k, temperature, num_classes):
    """One query at a time, in float64: cosine similarity, k most similar labelled rows,
    each adds exp(sim / T) to its class."""
    train = np.asarray(train, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    labels = np.asarray(labels)
    out = np.zeros((len(queries), num_classes))
    for qi, q in enumerate(queries):
        candidates = []
        for t, label in zip(train, labels, strict=True):
            if label < 0:
                continue
            sim = float(q @ t / (np.linalg.norm(q) * np.linalg.norm(t)))
            candidates.append((sim, int(label)))
        candidates.sort(key=lambda pair: -pair[0])
        for sim, label in candidates[:k]:
            out[qi, label] += math.exp(sim / temperature)
    return out


def reference_accuracy(scores, query_labels):
    order = np.argsort(-scores, axis=1, kind="stable")
    top_n = min(5, scores.shape[1])
    top1 = float(np.mean(order[:, 0] == query_labels))
    top5 = float(
        np.mean(
            [
                label in row[:top_n] and score[label] > 0
                for row, score, label in zip(order, scores, query_labels, strict=True)
            ]
        )
    )
    return top1, top5


def random_problem(seed, n=60, q=25, d=6, classes=7, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    train = torch.randn(n, d, generator=gen) * scale  # deliberately not unit norm
    queries = torch.randn(q, d, generator=gen) * scale
    labels = torch.randint(0, classes, (n,), generator=gen)
    query_labels = torch.randint(0, classes, (q,), generator=gen)
    return train, labels, queries, query_labels


@pytest.mark.parametrize(
    ("k", "temperature", "chunk_size"),
    [(1, 0.07, 1024), (5, 0.07, 7), (20, 0.5, 3), (60, 1.0, 1), (200, 0.1, 16)],
)
def test_scores_match_plain_loop(k, temperature, chunk_size):
    train, labels, queries, _ = random_problem(seed=k)
    got = weighted_knn_scores(train, labels, queries, k, temperature, 7, chunk_size=chunk_size)
    # k = 200 > n = 60: every labelled train row votes.
    want = reference_scores(train.numpy(), labels.numpy(), queries.numpy(), k, temperature, 7)
    assert got.shape == (25, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-6)


def test_chunk_size_does_not_change_scores():
    train, labels, queries, _ = random_problem(seed=3)
    whole = weighted_knn_scores(train, labels, queries, 10, 0.07, 7, chunk_size=10_000)
    for chunk in (1, 2, 24, 25):
        torch.testing.assert_close(
            weighted_knn_scores(train, labels, queries, 10, 0.07, 7, chunk_size=chunk),
            whole,
            rtol=1e-5,
            atol=0,
        )


@pytest.mark.parametrize("k", [1, 4, 15])
def test_predictions_match_sklearn(k):
    temperature = 0.2
    train, labels, queries, _ = random_problem(seed=10 + k, n=80, q=40)
    scores = weighted_knn_scores(train, labels, queries, k, temperature, 7).numpy()
    sk = KNeighborsClassifier(
        n_neighbors=k,
        metric="cosine",
        algorithm="brute",
        weights=lambda dist: np.exp((1.0 - dist) / temperature),  # cosine distance = 1 - sim
    ).fit(train.numpy(), labels.numpy())
    # sklearn's classes_ are the sorted labels present; map our columns onto them.
    proba = scores[:, sk.classes_] / scores[:, sk.classes_].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, sk.predict_proba(queries.numpy()), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(scores.argmax(axis=1), sk.predict(queries.numpy()))


def test_accuracy_matches_reference_for_every_k_from_one_search():
    train, labels, queries, query_labels = random_problem(seed=5, n=90, q=50)
    ks = [1, 3, 20, 200]
    got = knn_accuracy(train, labels, queries, query_labels, ks, 0.1, 7, chunk_size=8)
    assert set(got) == set(ks)
    for k in ks:
        scores = reference_scores(train.numpy(), labels.numpy(), queries.numpy(), k, 0.1, 7)
        top1, top5 = reference_accuracy(scores, query_labels.numpy())
        assert got[k]["top1"] == pytest.approx(top1)
        assert got[k]["top5"] == pytest.approx(top5)
        assert 0 <= got[k]["top1"] <= got[k]["top5"] <= 1


def test_top5_counts_a_true_class_ranked_third():
    # One query at angle 0; train rows at growing angles, one class each, so class
    # scores fall in the order 0, 1, 2, 3, 4, 5, 6.
    angles = torch.linspace(0.0, 1.2, 7)
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.arange(7)
    query = torch.tensor([[1.0, 0.0]])
    for true_class, (top1, top5) in {0: (1.0, 1.0), 2: (0.0, 1.0), 5: (0.0, 0.0)}.items():
        result = knn_accuracy(train, labels, query, torch.tensor([true_class]), [7], 0.5, 7)
        assert result[7] == {"top1": top1, "top5": top5}


def test_top5_with_fewer_than_five_classes_is_top_c():
    train, labels, queries, query_labels = random_problem(seed=8, classes=3)
    result = knn_accuracy(train, labels, queries, query_labels, [5, 60], 0.1, 3)
    assert result[60]["top5"] == 1.0  # every class gets votes: top-3 is everything


def test_top5_with_k1_is_top1():
    # Classes without votes are never predicted, so top-5 cannot exceed top-1 when k = 1.
    train, labels, queries, query_labels = random_problem(seed=9, classes=7)
    result = knn_accuracy(train, labels, queries, query_labels, [1], 0.1, 7)
    assert result[1]["top5"] == result[1]["top1"]


def test_unlabeled_rows_never_vote():
    train, labels, queries, query_labels = random_problem(seed=11)
    # Unlabeled copies of the queries would be every query's nearest neighbour.
    noisy_train = torch.cat([train, queries * 0.5])
    noisy_labels = torch.cat([labels, torch.full((queries.shape[0],), -1)])
    for k in (1, 5, 100):
        torch.testing.assert_close(
            weighted_knn_scores(noisy_train, noisy_labels, queries, k, 0.07, 7),
            weighted_knn_scores(train, labels, queries, k, 0.07, 7),
        )
    assert knn_accuracy(
        noisy_train, noisy_labels, queries, query_labels, [1, 5], 0.07, 7
    ) == knn_accuracy(train, labels, queries, query_labels, [1, 5], 0.07, 7)
    want = reference_scores(noisy_train.numpy(), noisy_labels.numpy(), queries.numpy(), 5, 0.07, 7)
    np.testing.assert_allclose(
        weighted_knn_scores(noisy_train, noisy_labels, queries, 5, 0.07, 7).numpy(),
        want,
        rtol=2e-4,
    )


def test_unlabeled_queries_are_not_counted():
    train, labels, queries, query_labels = random_problem(seed=12)
    partial = query_labels.clone()
    partial[::2] = -1
    got = knn_accuracy(train, labels, queries, partial, [5], 0.07, 7)
    want = knn_accuracy(train, labels, queries[1::2], query_labels[1::2], [5], 0.07, 7)
    assert got == want


def test_inputs_need_not_be_unit_norm_or_float32():
    train, labels, queries, _ = random_problem(seed=13)
    base = weighted_knn_scores(train, labels, queries, 5, 0.07, 7)
    scaled = weighted_knn_scores(train.double() * 10, labels, queries * 0.1, 5, 0.07, 7)
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, base, rtol=1e-5, atol=0)


def test_bad_inputs_raise():
    train, labels, queries, query_labels = random_problem(seed=14)
    with pytest.raises(ValueError, match="dimension"):
        weighted_knn_scores(train, labels, queries[:, :3], 5, 0.07, 7)
    with pytest.raises(ValueError, match="train_labels"):
        weighted_knn_scores(train, labels[:-1], queries, 5, 0.07, 7)
    with pytest.raises(ValueError, match="num_classes"):
        weighted_knn_scores(train, labels, queries, 5, 0.07, 3)
    with pytest.raises(ValueError, match="query_labels"):
        knn_accuracy(train, labels, queries, query_labels[:-1], [5], 0.07, 7)
    with pytest.raises(ValueError, match="no labelled"):
        weighted_knn_scores(train, torch.full_like(labels, -1), queries, 5, 0.07, 7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    train, labels, queries, query_labels = random_problem(seed=15, n=3000, q=500, d=32)
    cpu = weighted_knn_scores(train, labels, queries, 50, 0.07, 7)
    gpu = weighted_knn_scores(train.cuda(), labels.cuda(), queries.cuda(), 50, 0.07, 7)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-3)
    assert knn_accuracy(
        train.cuda(), labels.cuda(), queries.cuda(), query_labels.cuda(), [1, 50], 0.07, 7
    ) == knn_accuracy(train, labels, queries, query_labels, [1, 50], 0.07, 7)
