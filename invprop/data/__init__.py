"""Datasets: a registry of raw-format readers, the prepare stage, and the prepared reader.

    from invprop.data import load_prepared, as_tensor, convert_channels, ImageFileDataset
    ds = load_prepared("data/prepared/fashion_mnist")
    x = convert_channels(as_tensor(ds.train), cfg.data.channels)  # uint8 (N, C, H, W)

Importing this package pulls in numpy only; the torch helpers (`as_tensor`,
`convert_channels`, `ImageFileDataset`, `decode_batches`) load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Reader modules register themselves in DATASETS on import.
from invprop.data import builtin, cifar, idx, imagefolder, stl10, svhn  # noqa: F401
from invprop.data.prepared import (
    ImageFiles,
    PreparedDataset,
    Split,
    decode_image,
    load_prepared,
    load_size,
)
from invprop.data.sources import (
    DATASETS,
    ArraySplit,
    DatasetSource,
    FileSplit,
    RawDataset,
    SourceFile,
    SourceOptions,
    get_source,
    register,
)

if TYPE_CHECKING:
    from invprop.data.tensors import (
        ImageFileDataset,
        as_tensor,
        convert_channels,
        decode_batches,
    )

_TORCH_HELPERS = ("ImageFileDataset", "as_tensor", "convert_channels", "decode_batches")

__all__ = [
    "DATASETS",
    "ArraySplit",
    "DatasetSource",
    "FileSplit",
    "ImageFileDataset",
    "ImageFiles",
    "PreparedDataset",
    "RawDataset",
    "SourceFile",
    "SourceOptions",
    "Split",
    "as_tensor",
    "convert_channels",
    "decode_batches",
    "decode_image",
    "get_source",
    "load_prepared",
    "load_size",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_HELPERS:
        from invprop.data import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module 'invprop.data' has no attribute {name!r}")
