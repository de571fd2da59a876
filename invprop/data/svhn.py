"""SVHN (cropped digits) from the official MATLAB files `train_32x32.mat`, `test_32x32.mat`.

Each file holds `X`, uint8 (32, 32, 3, N), and `y`, (N, 1) with labels 1..10 where 10
means the digit 0; labels here are the digits themselves (y mod 10), as in torchvision.
The `extra` split is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from invprop.data.sources import (
    ArraySplit,
    RawDataset,
    SourceOptions,
    check_counts,
    check_labels,
    locate,
    register,
)
from invprop.errors import InvpropError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
LAYOUT = "train_32x32.mat and test_32x32.mat"
CLASSES = [str(d) for d in range(10)]


def _read_mat(path: Path) -> ArraySplit:
    from scipy.io import loadmat  # scipy only for SVHN's .mat files

    fix = "download the file again from http://ufldl.stanford.edu/housenumbers/"
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # scipy raises ValueError, MatReadError, TypeError, ...
        raise InvpropError(
            f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    if "X" not in mat or "y" not in mat:
        raise InvpropError(f"{path}: missing variable X or y; {fix}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise InvpropError(
            f"{path}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}; {fix}"
        )
    check_counts(x.shape[3], len(y), str(path), fix)
    labels = check_labels(y, 11, str(path), fix)
    if len(labels) and labels.min() < 1:
        raise InvpropError(f"{path}: labels must lie in 1..10 (10 = digit 0); {fix}")
    # (H, W, C, N) -> (N, C, H, W)
    return ArraySplit(np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels % 10)


def _download(root: Path) -> None:
    # torchvision (and torch) only to download: reading and the prepare stage never load it
    from torchvision.datasets import SVHN

    for split in FILES:
        SVHN(str(root), split=split, download=True)


@register("svhn", format="arrays", layout=LAYOUT, sizes=(73_257, 26_032))
def read_svhn(opts: SourceOptions) -> RawDataset:
    folder = locate(opts, LAYOUT, ["", "svhn"], [[f] for f in FILES.values()], None, _download)
    train, test = _read_mat(folder / FILES["train"]), _read_mat(folder / FILES["test"])
    return RawDataset(train, test, CLASSES, [folder / f for f in FILES.values()], folder)
