"""Seeded, class-stratified samples of rows: every subset and split the project draws.

One loop (`_per_class`) draws the rows of each class; three rules say how many rows each
class gives and how they are drawn, because their uses differ. Each rule reproduces the
rows the pipeline has always drawn, so no prepared dataset, probe or fine-tuning subset
moved when they were brought together (tests/test_sampling.py pins them).

- `stratified_subset`: `size` rows in proportion to the classes (largest remainders), one
  generator for all classes, `choice` without replacement. The prepare stage's
  data.train_limit / test_limit subsets; `stratified_split` is it plus the complement
  (the fixed test split of datasets that come without one).
- `holdout_split`: round(fraction * n_c) rows of each class held out, at least one row of
  each class kept, one generator, a permutation's prefix. The linear probe's validation
  rows, on which its C is chosen.
- `balanced_subset`: the same count from every labelled class, one generator per class
  seeded by (seed, class), a permutation's prefix, so a smaller fraction's subset lies
  inside a larger one's. The transfer stage's semi-supervised subsets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["balanced_subset", "holdout_split", "stratified_split", "stratified_subset"]

# draw(class position, rows of the class, count) -> the chosen rows
Draw = Callable[[int, np.ndarray, int], np.ndarray]


def _per_class(
    labels: np.ndarray, classes: np.ndarray, counts: np.ndarray, draw: Draw
) -> np.ndarray:
    """Sorted int64 indices: counts[i] rows labelled classes[i], chosen by `draw`, class by
    class in order (classes with a zero count are skipped and draw nothing)."""
    picked = [
        draw(i, np.flatnonzero(labels == c), int(count))
        for i, (c, count) in enumerate(zip(classes, counts, strict=True))
        if count > 0
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.empty(0, np.int64)


def _complement(n: int, rows: np.ndarray) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[rows] = False
    return np.flatnonzero(keep)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of `size` items keeping class proportions.

    Each class (-1 counts as one) gets floor(size * n_class / n) items, and the leftover
    items go to the classes with the largest remainders (ties: lower label first), so every
    class's share is within one item of its exact proportional share. The whole set when
    `size >= len(labels)`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size // n
    remainder = counts * size % n
    extra = size - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    return _per_class(labels, classes, quota, lambda _, rows, k: rng.choice(rows, k, replace=False))


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified (train, test) indices, both sorted: test is the
    stratified_subset of round(n * test_fraction) rows, train the rest."""
    n = len(labels)
    test = stratified_subset(labels, round(n * test_fraction), seed)
    return _complement(n, test), test


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified split of row indices into (fit, held out), both sorted.

    Each class holds out round(fraction * n_c) of its rows, but always keeps at least one
    row for fitting (a class with a single row stays entirely in fit).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    held = np.minimum(np.round(fraction * counts).astype(np.int64), counts - 1)
    rng = np.random.default_rng(seed)
    held_out = _per_class(labels, classes, held, lambda _, rows, k: rng.permutation(rows)[:k])
    return _complement(labels.size, held_out), held_out


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of an exactly class-balanced, seeded subset of `labels`.

    Rows labelled -1 (unlabeled) are never picked. With N labelled rows in C classes, every
    class contributes the same number of rows: floor(fraction * N / C) (up to a 1e-9
    rounding allowance, so 0.29 * 100 counts as 29), at least 1, and at most the smallest
    class's count (exact balance wins over the fraction on imbalanced data). Class c's
    rows are a prefix of a permutation seeded by (seed, c) alone, so the result is
    reproducible by seed and a smaller fraction's subset lies inside a larger one's.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    if classes.size == 0:
        raise ValueError("no labelled rows (all labels are -1) to draw a subset from")
    per_class = max(1, math.floor(fraction * counts.sum() / classes.size + 1e-9))
    per_class = min(per_class, int(counts.min()))

    def draw(i: int, rows: np.ndarray, k: int) -> np.ndarray:
        return np.random.default_rng([seed, int(classes[i])]).permutation(rows)[:k]

    return _per_class(labels, classes, np.full(classes.size, per_class), draw)
