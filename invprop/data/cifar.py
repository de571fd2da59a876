"""CIFAR-10 and CIFAR-100 from the official python pickles, read without running any code.

The batches are Python pickles of dicts holding numpy arrays, lists and strings. A plain
`pickle.load` would import and call whatever a tampered file names, so they go through
`NumpyOnlyUnpickler`, which resolves only the few numpy globals an array needs (plus
`_codecs.encode` and `bytes`, which protocol-2 pickles use to rebuild bytes) and refuses
everything else.
"""

from __future__ import annotations

import _codecs
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# (module, name) -> object; both numpy module spellings, since files written by numpy 1.x
# (the official CIFAR files: Python 2, numpy 1.x) say numpy.core.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # protocol 5 rebuilds arrays from a raw buffer
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): _codecs.encode,
    # protocol 2 writes b"" as a call of bytes() (named __builtin__ by Python 2 pickles)
    ("__builtin__", "bytes"): bytes,
    ("builtins", "bytes"): bytes,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside ALLOWED_GLOBALS."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def load_pickle(path: Path, fix: str) -> Any:
    """Load a data pickle safely (no code runs from the file); errors name the file."""
    try:
        with open(path, "rb") as handle:
            # latin1 decodes Python 2 str as written by the official files (numpy needs it).
            return NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise InvpropError(
            f"{path}: refused to load: the pickle references {exc}, which a dataset file "
            f"never needs (only numpy arrays, lists and strings are allowed); the file is not "
            f"a genuine batch, {fix}"
        ) from exc
    except OSError as exc:
        raise InvpropError(f"{path}: unreadable ({exc}); {fix}") from exc
    except Exception as exc:  # any failure to parse means a corrupt or truncated file
        raise InvpropError(
            f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); {fix}"
        ) from exc


def _as_str(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _load_dict(path: Path, fix: str) -> dict[str, Any]:
    obj = load_pickle(path, fix)
    if not isinstance(obj, dict):
        raise InvpropError(f"{path}: expected a pickled dict, got {type(obj).__name__}; {fix}")
    return {_as_str(k): v for k, v in obj.items()}


def _read_batches(paths: list[Path], label_key: str, n_classes: int, fix: str) -> ArraySplit:
    images, labels = [], []
    for path in paths:
        batch = _load_dict(path, fix)
        if "data" not in batch or label_key not in batch:
            raise InvpropError(
                f"{path}: missing key 'data' or {label_key!r} (has {sorted(batch)}); {fix}"
            )
        data = batch["data"]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
            raise InvpropError(f"{path}: 'data' must be a uint8 (N, 3072) array; {fix}")
        if data.shape[1] != 3 * 32 * 32:
            raise InvpropError(f"{path}: 'data' rows hold {data.shape[1]} values, not 3072; {fix}")
        batch_labels = np.asarray(batch[label_key])
        check_counts(len(data), len(batch_labels), str(path), fix)
        labels.append(check_labels(batch_labels, n_classes, str(path), fix))
        # Rows are the red, green, then blue planes, each 32x32 row-major: NCHW directly.
        images.append(data.reshape(-1, 3, 32, 32))
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _class_names(path: Path, key: str, n_classes: int, fix: str) -> list[str]:
    meta = _load_dict(path, fix)
    names = [_as_str(n) for n in meta.get(key, [])]
    if len(names) != n_classes:
        raise InvpropError(f"{path}: expected {n_classes} names under {key!r}; {fix}")
    return names


def _download(cls_name: str) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        # torchvision (and torch) only to download: reading and prepare never load it
        import torchvision.datasets

        getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)

    return download


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR10_LAYOUT = f"{CIFAR10_DIR}/ (data_batch_1..5, test_batch, batches.meta)"


@register("cifar10", format="arrays", layout=CIFAR10_LAYOUT, sizes=(50_000, 10_000))
def read_cifar10(opts: SourceOptions) -> RawDataset:
    required = [[name] for name in CIFAR10_FILES]
    folder = locate(opts, CIFAR10_LAYOUT, [CIFAR10_DIR, ""], required, None, _download("CIFAR10"))
    fix = f"re-extract cifar-10-python.tar.gz into {folder.parent}"
    train = _read_batches([folder / f"data_batch_{i}" for i in range(1, 6)], "labels", 10, fix)
    test = _read_batches([folder / "test_batch"], "labels", 10, fix)
    classes = _class_names(folder / "batches.meta", "label_names", 10, fix)
    return RawDataset(train, test, classes, [folder / n for n in CIFAR10_FILES], folder)


CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ["train", "test", "meta"]
CIFAR100_LAYOUT = f"{CIFAR100_DIR}/ (train, test, meta)"


@register("cifar100", format="arrays", layout=CIFAR100_LAYOUT, sizes=(50_000, 10_000))
def read_cifar100(opts: SourceOptions) -> RawDataset:
    """CIFAR-100 with its 100 fine labels (the coarse superclasses are not used)."""
    required = [[name] for name in CIFAR100_FILES]
    folder = locate(
        opts, CIFAR100_LAYOUT, [CIFAR100_DIR, ""], required, None, _download("CIFAR100")
    )
    fix = f"re-extract cifar-100-python.tar.gz into {folder.parent}"
    train = _read_batches([folder / "train"], "fine_labels", 100, fix)
    test = _read_batches([folder / "test"], "fine_labels", 100, fix)
    classes = _class_names(folder / "meta", "fine_label_names", 100, fix)
    return RawDataset(train, test, classes, [folder / n for n in CIFAR100_FILES], folder)
