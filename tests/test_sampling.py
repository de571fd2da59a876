"""invprop.sampling draws exactly the rows the four helpers it replaced drew.

The references below are those helpers as they were (data/sources.py's stratified_subset
and stratified_split, linear.py's stratified_split, transfer.py's balanced_subset), so a
prepared subset, a probe's validation rows or a fine-tuning subset cannot move unnoticed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invprop.sampling import balanced_subset, holdout_split, stratified_split, stratified_subset


def reference_stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * size // n
    remainder = counts * size % n
    extra = size - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(inverse == group), int(q), replace=False)
        for group, q in enumerate(quota)
        if q
    ]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def reference_holdout_split(labels: np.ndarray, val_fraction: float, seed: int):
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        n_val = min(round(val_fraction * rows.size), rows.size - 1)
        if n_val > 0:
            val.append(rng.permutation(rows)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    fit_mask = np.ones(labels.size, dtype=bool)
    fit_mask[val_idx] = False
    return np.flatnonzero(fit_mask), val_idx


def reference_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    n = int((labels >= 0).sum())
    rows = [np.flatnonzero(labels == c) for c in classes]
    per_class = max(1, math.floor(fraction * n / classes.size + 1e-9))
    per_class = min(per_class, min(r.size for r in rows))
    picked = [
        np.random.default_rng([seed, int(c)]).permutation(r)[:per_class]
        for c, r in zip(classes, rows, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a, b)


LABELS = st.lists(st.integers(-1, 6), min_size=2, max_size=300).map(np.array)


@settings(max_examples=200, deadline=None)
@given(LABELS, st.floats(0, 1.2), st.integers(0, 2**31))
def test_stratified_subset_and_split_draw_the_old_rows(labels, share, seed):
    size = int(share * len(labels))
    assert same(
        stratified_subset(labels, size, seed), reference_stratified_subset(labels, size, seed)
    )
    test = reference_stratified_subset(labels, round(len(labels) * 0.2), seed)
    train = np.setdiff1d(np.arange(len(labels)), test, assume_unique=True)
    got_train, got_test = stratified_split(labels, 0.2, seed)
    assert same(got_train, train) and same(got_test, test)


@settings(max_examples=200, deadline=None)
@given(LABELS.map(lambda x: np.abs(x)), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_holdout_split_draws_the_old_rows(labels, fraction, seed):
    fit, held = holdout_split(labels, fraction, seed)
    old_fit, old_held = reference_holdout_split(labels, fraction, seed)
    assert same(fit, old_fit) and same(held, old_held)


@settings(max_examples=200, deadline=None)
@given(LABELS.filter(lambda x: (x >= 0).any()), st.floats(1e-6, 1.0), st.integers(0, 2**31))
def test_balanced_subset_draws_the_old_rows(labels, fraction, seed):
    assert same(
        balanced_subset(labels, fraction, seed), reference_balanced_subset(labels, fraction, seed)
    )


def test_the_old_rows_on_a_realistic_label_set():
    # 60,000 rows in 10 classes with -1 rows: large enough for numpy's choice to switch
    # algorithms (Floyd's above 10,000 rows), as prepare's train_limit meets it.
    labels = np.random.default_rng(3).integers(-1, 10, 60_000)
    for size, seed in ((256, 0), (5_000, 1), (59_999, 2)):
        assert same(
            stratified_subset(labels, size, seed), reference_stratified_subset(labels, size, seed)
        )
    for fraction in (0.01, 0.1):
        assert same(
            balanced_subset(labels, fraction, 0), reference_balanced_subset(labels, fraction, 0)
        )
    fit, held = holdout_split(labels, 0.1, 0)
    old_fit, old_held = reference_holdout_split(labels, 0.1, 0)
    assert same(fit, old_fit) and same(held, old_held)


def test_bad_fractions_fail():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        holdout_split(np.zeros(4, int), 1.0, 0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        balanced_subset(np.zeros(4, int), 0.0, 0)
