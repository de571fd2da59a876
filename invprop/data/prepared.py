"""Read `data/prepared/<dataset>/`, the prepare stage's artifact, validating it on load.

Layout (META_VERSION 1)::

    meta.json                      dataset, format, shape [C, H, W], classes, counts, ...
    train_images.npy  test_images.npy    format "arrays": uint8 (N, C, H, W)
    train_labels.npy  test_labels.npy    format "arrays": int64 (N,), -1 = unlabeled
    train_index.json  test_index.json    format "files": {"root", "files", "labels"}

For "files", images are decoded one at a time, on access. Evaluation views (`ImageFiles`)
come at meta's shape: the shorter side resized to S and the centre S x S cropped
(S = data.image_size * 8 / 7, the usual 256 for 224), in meta's channel count. Training
crops are taken from the whole decoded image instead (`invprop.augment.CroppedImageFiles`).

This module needs numpy and Pillow only; torch helpers are in `invprop.data.tensors`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image, ImageOps

from invprop.errors import InvpropError

META_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "test")
RERUN = "rerun the prepare stage (`dvc repro` or `invprop stage prepare <dataset>`)"


def load_size(image_size: int) -> int:
    """The side images of a "files" dataset are stored at load: image_size * 8/7, even."""
    return 2 * round(image_size * 8 / 7 / 2)


def open_image(
    path: Path, channels: int, draft: tuple[int, int] | None = None, rerun: str = RERUN
) -> Any:
    """Decode one image file to a PIL image in "L" (channels 1) or "RGB" (channels 3).

    `draft` (width, height): let a JPEG decoder skip detail the caller does not need; the
    result keeps its aspect ratio and stays at least that large (PIL's ``draft``). Raises
    InvpropError naming the file when it cannot be decoded, and what to rerun once it is
    replaced or deleted (`rerun`: the prepare stage, unless the caller reads another folder).
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            if draft is not None:
                image.draft(mode, draft)  # JPEG: decode smaller
            return image.convert(mode)  # loads the pixels: errors surface here
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise InvpropError(
            f"{path}: cannot decode image ({type(exc).__name__}: {exc}); replace or delete "
            f"the file, then {rerun}"
        ) from exc


def to_chw(image: Any) -> np.ndarray:
    """A PIL "L" or "RGB" image as a uint8 (C, H, W) array."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_image(path: Path, shape: Sequence[int], rerun: str = RERUN) -> np.ndarray:
    """Decode one image file to uint8 (C, H, W): fill-resize and centre-crop to (H, W).

    Raises InvpropError naming the file when it cannot be decoded (`open_image`).
    """
    channels, height, width = (int(v) for v in shape)
    image = open_image(path, channels, (width, height), rerun)
    return to_chw(ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR))


class ImageFiles(Sequence[np.ndarray]):
    """A lazy sequence of image files: `files[i]` decodes image i to uint8 (C, H, W).

    `rerun`: what a file that cannot be decoded asks to rerun once it is replaced (the
    prepare stage, for a prepared dataset's files)."""

    def __init__(
        self, root: Path, files: list[str], shape: Sequence[int], rerun: str = RERUN
    ) -> None:
        self.root = Path(root)
        self.files = files
        self.shape = tuple(int(v) for v in shape)
        self.rerun = rerun

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return decode_image(self.path(index), self.shape, self.rerun)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def path(self, index: int) -> Path:
        return self.root / self.files[int(index)]


@dataclass(frozen=True)
class Split:
    """One split: `images` is a uint8 (N, C, H, W) array ("arrays", memory-mapped) or an
    `ImageFiles` ("files"); `labels` is int64 (N,) with -1 for unlabeled images."""

    name: str
    images: np.ndarray | ImageFiles
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    meta: dict[str, Any]
    train: Split
    test: Split

    @property
    def name(self) -> str:
        return self.meta["dataset"]

    @property
    def format(self) -> str:
        return self.meta["format"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image as loaded."""
        c, h, w = self.meta["shape"]
        return int(c), int(h), int(w)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise InvpropError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        return self.train if name == "train" else self.test


def describe(dataset: PreparedDataset) -> dict[str, Any]:
    """meta.json plus what people ask first: size on disk and counts per class by name."""
    meta = dataset.meta
    per_class = [
        {"class": name, **{s: meta["class_counts"][s][i] for s in SPLITS}}
        for i, name in enumerate(dataset.classes)
    ]
    size = sum(f.stat().st_size for f in dataset.path.iterdir() if f.is_file())
    return {**meta, "path": str(dataset.path), "size_bytes": size, "per_class": per_class}


def _bad(path: Path, problem: str) -> InvpropError:
    return InvpropError(f"prepared dataset: {path}: {problem}; {RERUN}")


def split_files(folder: Path, split: str) -> dict[str, Path]:
    """Where a split's files live in a prepared folder: images and labels ("arrays"
    format), or index ("files" format). The prepare stage writes them, load_prepared reads."""
    return {
        "images": folder / f"{split}_images.npy",
        "labels": folder / f"{split}_labels.npy",
        "index": folder / f"{split}_index.json",
    }


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not folder.is_dir():
        raise InvpropError(f"prepared dataset {folder} not found; {RERUN}")
    if not path.is_file():
        raise _bad(path, "missing (the folder is not a complete prepared dataset)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _bad(path, "must hold a JSON object")
    if meta.get("version") != META_VERSION:
        raise _bad(path, f"version {meta.get('version')!r}, this invprop reads {META_VERSION}")
    required = ("dataset", "format", "shape", "classes", "counts", "class_counts")
    missing = [key for key in required if key not in meta]
    if missing:
        raise _bad(path, f"missing key {missing[0]!r}")
    if meta["format"] not in ("arrays", "files"):
        raise _bad(path, f"unknown format {meta['format']!r}")
    if not (isinstance(meta["shape"], list) and len(meta["shape"]) == 3):
        raise _bad(path, "shape must be [C, H, W]")
    if not (isinstance(meta["counts"], dict) and isinstance(meta["class_counts"], dict)):
        raise _bad(path, "counts and class_counts must map split names to counts")
    for split in SPLITS:
        if not isinstance(meta["counts"].get(split), int):
            raise _bad(path, f"counts.{split} must be an integer")
        per_class = meta["class_counts"].get(split)
        if not isinstance(per_class, list) or len(per_class) != len(meta["classes"]):
            raise _bad(path, f"class_counts.{split} must list one count per class")
    return meta


def _check_labels(path: Path, labels: np.ndarray, n: int, n_classes: int) -> None:
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise _bad(path, f"labels must be int64 (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != n:
        raise _bad(path, f"{len(labels)} labels for {n} images")
    if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):
        raise _bad(path, f"labels outside -1..{n_classes - 1}")


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise _bad(path, "missing")
    try:
        # Copy-on-write: slices are writable (torch.from_numpy takes them without a
        # warning) and writes stay in this process, never reaching the file.
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(path, f"unreadable ({exc})") from exc


def _load_arrays(folder: Path, split: str, meta: dict[str, Any]) -> Split:
    image_path = split_files(folder, split)["images"]
    images = _load_npy(image_path)
    if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:]) != meta["shape"]:
        raise _bad(
            image_path,
            f"expected uint8 (N, {', '.join(map(str, meta['shape']))}), "
            f"got {images.dtype} {images.shape}",
        )
    if len(images) != meta["counts"].get(split):
        raise _bad(image_path, f"{len(images)} images but meta.json counts {meta['counts']}")
    label_path = split_files(folder, split)["labels"]
    labels = _load_npy(label_path)
    _check_labels(label_path, labels, len(images), len(meta["classes"]))
    return Split(split, images, labels)


def _load_files(folder: Path, split: str, meta: dict[str, Any]) -> Split:
    path = split_files(folder, split)["index"]
    if not path.is_file():
        raise _bad(path, "missing")
    try:
        index = json.loads(path.read_text())
        root, files = Path(index["root"]), list(index["files"])
        labels = np.asarray(index["labels"], dtype=np.int64)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"not a valid index ({type(exc).__name__}: {exc})") from exc
    if len(files) != meta["counts"].get(split):
        raise _bad(path, f"{len(files)} files but meta.json counts {meta['counts']}")
    _check_labels(path, labels, len(files), len(meta["classes"]))
    if not root.is_dir():
        raise InvpropError(
            f"prepared dataset: {path}: image root {root} does not exist (moved or unmounted?); "
            f"mount it there, or set data.root to its new place and {RERUN}"
        )
    return Split(split, ImageFiles(root, files, meta["shape"]), labels)


def load_prepared(path: str | Path) -> PreparedDataset:
    """Open a prepared dataset folder, checking it is complete and self-consistent.

    Array images and labels are memory-mapped copy-on-write (writes never reach the
    files); file images decode lazily.
    """
    folder = Path(path)
    meta = _read_meta(folder)
    load = _load_arrays if meta["format"] == "arrays" else _load_files
    train, test = (load(folder, split, meta) for split in SPLITS)
    return PreparedDataset(folder, meta, train, test)
