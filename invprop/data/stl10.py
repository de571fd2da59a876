"""STL-10 from the official binaries in `stl10_binary/` (labeled train and test splits).

`*_X.bin` holds uint8 images of 3x96x96, each channel stored column-major (the format was
written from MATLAB), so an image reshaped to (3, 96, 96) must be transposed to (3, H, W);
`*_y.bin` holds one uint8 label per image in 1..10. The 100,000-image `unlabeled_X.bin`
is not read.
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

FOLDER = "stl10_binary"
FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
LAYOUT = f"{FOLDER}/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt)"
SIZE = 96
FIX = "re-extract stl10_binary.tar.gz"


def _read_split(folder: Path, split: str) -> ArraySplit:
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    raw = np.fromfile(x_path, dtype=np.uint8)
    per_image = 3 * SIZE * SIZE
    if raw.size % per_image:
        raise InvpropError(
            f"{x_path}: {raw.size} bytes is not a whole number of 3x96x96 images "
            f"(truncated?); {FIX}"
        )
    # Per image: channel-major, then column-major pixels -> swap the last two axes.
    images = np.ascontiguousarray(raw.reshape(-1, 3, SIZE, SIZE).transpose(0, 1, 3, 2))
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    check_counts(len(images), len(labels), f"{x_path} and {y_path}", FIX)
    labels = check_labels(labels - 1, 10, f"{y_path} (labels 1..10)", FIX)
    return ArraySplit(images, labels)


def _download(root: Path) -> None:
    # torchvision (and torch) only to download: reading and the prepare stage never load it
    from torchvision.datasets import STL10

    STL10(str(root), split="train", download=True)


@register("stl10", format="arrays", layout=LAYOUT, sizes=(5_000, 8_000))
def read_stl10(opts: SourceOptions) -> RawDataset:
    folder = locate(opts, LAYOUT, [FOLDER, ""], [[f] for f in FILES], None, _download)
    classes = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines()]
    classes = [c for c in classes if c]
    if len(classes) != 10:
        raise InvpropError(f"{folder / 'class_names.txt'}: expected 10 class names; {FIX}")
    train, test = _read_split(folder, "train"), _read_split(folder, "test")
    return RawDataset(train, test, classes, [folder / f for f in FILES], folder)
