"""Fashion-MNIST from idx files (gzipped or not), parsed with numpy, no torchvision needed.

Looks in the configured root, else the Debian package folder
(`/usr/share/datasets/fashion-mnist`, from `apt install dataset-fashion-mnist`), else
`data/raw/fashion_mnist`; in each it accepts the four idx files directly or torchvision's
`FashionMNIST/raw/` layout. torchvision's download runs only with `data.download: true`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from invprop.data.sources import (
    ArraySplit,
    RawDataset,
    SourceOptions,
    check_counts,
    check_labels,
    locate,
    pick,
    register,
)
from invprop.errors import InvpropError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
LAYOUT = "the four Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ...)"
FIX = "replace it with an intact copy (e.g. reinstall dataset-fashion-mnist)"

# idx type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into an array of its declared type and shape.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
    big-endian uint32; the data follow and must fill the declared shape exactly.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvpropError(f"{path}: unreadable or corrupt gzip ({exc}); {FIX}") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise InvpropError(f"{path}: not an idx file (bad magic number); {FIX}")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise InvpropError(f"{path}: idx header is truncated; {FIX}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[raw[2]]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - start != expected:
        raise InvpropError(
            f"{path}: idx header declares shape {dims} ({expected} bytes) but the file holds "
            f"{len(raw) - start} bytes (truncated or padded); {FIX}"
        )
    return np.frombuffer(raw, dtype, offset=start).reshape(dims)


def _read_split(folder: Path, split: str) -> ArraySplit:
    image_path = pick(folder, [FILES[f"{split}_images"] + ".gz", FILES[f"{split}_images"]])
    label_path = pick(folder, [FILES[f"{split}_labels"] + ".gz", FILES[f"{split}_labels"]])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InvpropError(
            f"{image_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
            f"{images.shape}; {FIX}"
        )
    if labels.ndim != 1:
        raise InvpropError(f"{label_path}: expected a 1-d label file, got {labels.shape}; {FIX}")
    check_counts(
        len(images), len(labels), f"{image_path} and {label_path}", "use files from one release"
    )
    labels = check_labels(labels, len(CLASSES), str(label_path), FIX)
    return ArraySplit(images[:, None], labels)


def _download(root: Path) -> None:
    # torchvision (and torch) only to download: reading and the prepare stage never load it
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)


@register(
    "fashion_mnist",
    format="arrays",
    layout=LAYOUT,
    default_root=DEBIAN_ROOT,
    sizes=(60_000, 10_000),
)
def read_fashion_mnist(opts: SourceOptions) -> RawDataset:
    required = [[name + ".gz", name] for name in FILES.values()]
    folder = locate(opts, LAYOUT, ["", "FashionMNIST/raw"], required, DEBIAN_ROOT, _download)
    train, test = _read_split(folder, "train"), _read_split(folder, "test")
    sources = [pick(folder, [name + ".gz", name]) for name in FILES.values()]
    return RawDataset(train, test, CLASSES, list(sources), folder)
