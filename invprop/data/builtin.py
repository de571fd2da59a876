"""Datasets that need no download: scikit-learn's digits and a generated `synthetic` set."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

from invprop.data.sources import (
    SPLIT_SEED,
    TEST_FRACTION,
    ArraySplit,
    RawDataset,
    SourceOptions,
    register,
)
from invprop.sampling import stratified_split


@register(
    "digits",
    format="arrays",
    layout="scikit-learn's bundled digits (no files needed)",
    sizes=(1438, 359),  # 1,797 images split 80/20 with SPLIT_SEED
)
def read_digits(opts: SourceOptions) -> RawDataset:
    """1,797 8x8 grey digits (values 0..16, scaled to 0..255), split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits  # scikit-learn only for this dataset

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    source = Path(str(importlib.resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))
    return RawDataset(
        ArraySplit(images[train], labels[train]),
        ArraySplit(images[test], labels[test]),
        [str(d) for d in range(10)],
        [source] if source.is_file() else [],
        None,
        split=f"stratified 80/20, seed {SPLIT_SEED}",
    )


# ---------------------------------------------------------------------------------------
# synthetic: ten shape classes that survive crops, flips and colour jitter

SYNTHETIC_CLASSES = [
    "disc",
    "ring",
    "square",
    "plus",
    "h_stripes",
    "v_stripes",
    "checker",
    "x_cross",
    "triangle_up",
    "triangle_down",
]
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500
# Fixed: the dataset is the same for every `seed` (like a downloaded one).
SYNTHETIC_SEED = 0
# A hue per class for 3-channel data (a second cue; the shape alone identifies the class).
_PALETTE = np.array(
    [
        [1.0, 0.2, 0.2],
        [1.0, 0.6, 0.1],
        [0.9, 0.9, 0.1],
        [0.3, 0.9, 0.2],
        [0.1, 0.9, 0.7],
        [0.2, 0.6, 1.0],
        [0.3, 0.3, 1.0],
        [0.7, 0.3, 1.0],
        [1.0, 0.3, 0.8],
        [0.9, 0.9, 0.9],
    ],
    dtype=np.float32,
)


def _shape_masks(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Foreground masks (n, H, W) of each sample's class shape, in shape-centred coords."""
    r = np.hypot(x, y)
    box = np.maximum(np.abs(x), np.abs(y)) < 1
    shapes = [
        r < 1,
        (r > 0.55) & (r < 1),
        np.maximum(np.abs(x), np.abs(y)) < 0.85,
        ((np.abs(x) < 0.3) | (np.abs(y) < 0.3)) & box,
        (np.cos(3 * np.pi * y) > 0) & box,
        (np.cos(3 * np.pi * x) > 0) & box,
        (np.cos(2.5 * np.pi * x) * np.cos(2.5 * np.pi * y) > 0) & box,
        ((np.abs(x - y) < 0.3) | (np.abs(x + y) < 0.3)) & box,
        (np.abs(x) < (y + 1) / 2) & box,  # image y grows downwards: apex at the top
        (np.abs(x) < (1 - y) / 2) & box,
    ]
    masks = np.zeros(x.shape, dtype=bool)
    for k, shape in enumerate(shapes):
        rows = labels == k
        masks[rows] = shape[rows]
    return masks


def synthetic_split(n: int, size: int, channels: int, rng: np.random.Generator) -> ArraySplit:
    """`n` images (uint8, n x channels x size x size), classes balanced and shuffled.

    Each image is its class's shape at a random position (+-15%), scale (45-75% of the
    frame) and contrast, over a random grey background, plus Gaussian pixel noise.
    """
    labels = np.arange(n) % len(SYNTHETIC_CLASSES)
    rng.shuffle(labels)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    for start in range(0, n, 256):
        idx = slice(start, min(start + 256, n))
        k = labels[idx]
        m = len(k)
        cx, cy = (rng.uniform(-0.15, 0.15, (2, m, 1, 1))).astype(np.float32)
        scale = rng.uniform(0.45, 0.75, (m, 1, 1)).astype(np.float32)
        x, y = np.broadcast_arrays(
            (grid[None, None, :] - cx) / scale, (grid[None, :, None] - cy) / scale
        )
        mask = _shape_masks(x, y, k)[:, None].astype(np.float32)  # (m, 1, H, W)
        background = rng.uniform(0.0, 0.3, (m, 1, 1, 1)).astype(np.float32)
        foreground = rng.uniform(0.65, 1.0, (m, 1, 1, 1)).astype(np.float32)
        if channels == 3:
            foreground = foreground * _PALETTE[k][:, :, None, None]
        noise = rng.normal(0, 0.08, (m, channels, size, size)).astype(np.float32)
        value = background + (foreground - background) * mask + noise
        images[idx] = np.clip(np.round(value * 255), 0, 255).astype(np.uint8)
    return ArraySplit(images, labels.astype(np.int64))


@register(
    "synthetic",
    format="arrays",
    layout="nothing (generated)",
    sizes=(SYNTHETIC_TRAIN, SYNTHETIC_TEST),
)
def read_synthetic(opts: SourceOptions) -> RawDataset:
    """2,000 train / 500 test images (or train_limit / test_limit) at data.image_size and
    data.channels, generated from a fixed seed."""
    train_rng, test_rng = (np.random.default_rng([SYNTHETIC_SEED, i]) for i in (0, 1))
    size, channels = opts.image_size, opts.channels
    return RawDataset(
        synthetic_split(opts.train_limit or SYNTHETIC_TRAIN, size, channels, train_rng),
        synthetic_split(opts.test_limit or SYNTHETIC_TEST, size, channels, test_rng),
        list(SYNTHETIC_CLASSES),
        [],
        None,
        split=f"generated, seed {SYNTHETIC_SEED}",
    )
