"""The dataset registry: one reader per on-disk format, registered by name.

A reader takes `SourceOptions` (where the raw files live, whether it may download, the
sizes that shape generated data) and returns a `RawDataset`: train and test splits as
uint8 NCHW arrays (`ArraySplit`, small-image datasets) or as a list of image files with
labels (`FileSplit`, image folders that must never be decoded into RAM all at once), the
class names, and the raw files whose sha256 goes into `meta.json`.

Readers live in their own modules (`idx`, `cifar`, `svhn`, `stl10`, `builtin`,
`imagefolder`) and register themselves with `@register(...)`; importing `invprop.data`
imports them all, so `DATASETS` is complete whenever this module is reachable. This module
imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from invprop import names
from invprop.errors import InvpropError
from invprop.logs import get_logger
from invprop.registry import Registry

if TYPE_CHECKING:
    from invprop.config import Config

Format = Literal["arrays", "files"]

# Where readers look (and torchvision downloads to) when no root is configured and the
# dataset has no system-wide default location. Relative to the working directory (the repo).
LOG = get_logger("prepare")
RAW_DIR = Path("data/raw")

# Datasets without an official train/test split get a fixed, seeded one: the test set is
# part of the dataset's definition, so it must not move when `seed` changes.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ArraySplit:
    """One split of a small-image dataset held in memory.

    images: uint8 (N, C, H, W); labels: int64 (N,), -1 = unlabeled.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> ArraySplit:
        return ArraySplit(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class FileSplit:
    """One split of an image-folder dataset: files (POSIX paths relative to root) + labels."""

    root: Path
    files: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> FileSplit:
        return FileSplit(self.root, [self.files[i] for i in indices], self.labels[indices])


RawSplit = ArraySplit | FileSplit


@dataclass(frozen=True)
class SourceFile:
    """A raw input recorded in meta.json; `sha256` covers its bytes (or, for a folder too
    large to read at prepare time, its listing of names and sizes: see `kind`)."""

    path: str
    sha256: str
    bytes: int
    kind: Literal["file", "folder-content", "folder-listing"] = "file"


@dataclass(frozen=True)
class RawDataset:
    """What a reader returns; `prepare` turns it into `data/prepared/<name>/`."""

    train: RawSplit
    test: RawSplit
    classes: list[str]
    # Raw files to checksum. Image folders leave this empty: prepare checks and hashes
    # their files after the train_limit/test_limit subset (imagefolder.check_images).
    sources: list[Path | SourceFile]
    # The folder the files were read from (None for generated/bundled data).
    root: Path | None
    # How the train/test split came about, for meta.json and `invprop data show`.
    split: str = "official"

    @property
    def format(self) -> Format:
        return "files" if isinstance(self.train, FileSplit) else "arrays"


@dataclass(frozen=True)
class SourceOptions:
    """Everything a reader may use, resolved from the config for one dataset."""

    name: str
    # The configured root (None: the dataset's default location).
    root: Path | None
    # The params key that sets `root`, so errors can say which key to change.
    root_key: str
    download: bool
    image_size: int
    channels: int
    train_limit: int | None
    test_limit: int | None

    @classmethod
    def from_config(cls, cfg: Config, name: str) -> SourceOptions:
        """The options of dataset `name`. Subsets are for quick runs of the pretraining
        dataset (data.name); transfer targets are read whole."""
        root = cfg.dataset_root(name)
        pretraining = name == cfg.data.name
        return cls(
            name=name,
            root=Path(root).expanduser() if root else None,
            root_key="data.root" if pretraining else f"transfer.roots.{name}",
            download=cfg.data.download,
            image_size=cfg.data.image_size,
            channels=cfg.data.channels,
            train_limit=cfg.data.train_limit if pretraining else None,
            test_limit=cfg.data.test_limit if pretraining else None,
        )

    def search_roots(self, default: str | Path | None = None) -> list[Path]:
        """Folders to look in: the configured root, else the default and `data/raw/<name>`."""
        if self.root is not None:
            return [self.root]
        roots = [Path(default)] if default is not None else []
        return [*roots, self.download_root]

    @property
    def download_root(self) -> Path:
        """Where torchvision downloads to: the configured root, else `data/raw/<name>`."""
        return self.root if self.root is not None else RAW_DIR / self.name


Reader = Callable[[SourceOptions], RawDataset]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    format: Format
    read: Reader
    # Human-readable description of the expected layout, used in "not found" errors.
    layout: str
    default_root: str | None = None
    # (train, test) images of the whole dataset as published, before train_limit/test_limit;
    # None where they depend on the files (image folders). Costs are estimated from them
    # before anything is prepared (invprop.cost).
    sizes: tuple[int, int] | None = None


DATASETS: Registry[DatasetSource] = Registry(
    "dataset",
    names.DATASETS,
    hint=" (set data.name or the prepare stage's argument to one of them)",
)


def register(
    name: str,
    *,
    format: Format,
    layout: str,
    default_root: str | None = None,
    sizes: tuple[int, int] | None = None,
) -> Callable[[Reader], Reader]:
    """Registry decorator for a reader: `@register("cifar10", format="arrays", layout=...)`."""

    def add(read: Reader) -> Reader:
        DATASETS.add(name, DatasetSource(name, format, read, layout, default_root, sizes))
        return read

    return add


def get_source(name: str) -> DatasetSource:
    """The registered source of dataset `name`, or an error listing the known ones."""
    return DATASETS[name]


# ---------------------------------------------------------------------------------------
# Shared helpers for readers


def locate(
    opts: SourceOptions,
    layout: str,
    subdirs: Sequence[str],
    required: Sequence[Sequence[str]],
    default_root: str | Path | None = None,
    download: Callable[[Path], None] | None = None,
) -> Path:
    """Find the folder holding the raw files, downloading them first if allowed.

    Looks in each search root and each `subdirs` below it ("" = the root itself) for a
    folder holding, for every entry of `required`, one of its alternative names. Without
    a match and with `data.download`, calls `download(download_root)` and looks again.
    """

    def search() -> Path | None:
        for root in opts.search_roots(default_root):
            for sub in subdirs:
                folder = root / sub if sub else root
                if all(any((folder / alt).is_file() for alt in alts) for alts in required):
                    return folder
        return None

    found = search()
    if found is None and opts.download and download is not None:
        target = opts.download_root
        LOG.info(f"prepare {opts.name}: downloading to {target} (data.download is true)")
        try:
            download(target)
        except Exception as exc:  # network errors come in many types
            raise InvpropError(
                f"{opts.name}: download to {target} failed ({type(exc).__name__}: {exc}); "
                f"check the connection, or place {layout} there yourself and set "
                f"{opts.root_key}"
            ) from exc
        found = search()
    if found is not None:
        return found
    roots = opts.search_roots(default_root)
    where = " or ".join(str(r) for r in roots)
    if not any(r.exists() for r in roots):
        problem = f"dataset root {where} does not exist"
    else:
        problem = f"no {layout} found in {where}"
    fix = f"set {opts.root_key} to the folder holding {layout}"
    if download is not None and not opts.download:
        fix += ", or set data.download: true to fetch it with torchvision"
    raise InvpropError(f"{opts.name}: {problem}; {fix}")


def pick(folder: Path, alternatives: Sequence[str]) -> Path:
    """The first of `alternatives` present in `folder` (locate() guaranteed one is)."""
    for alt in alternatives:
        if (folder / alt).is_file():
            return folder / alt
    raise InvpropError(f"none of {', '.join(alternatives)} found in {folder}")


def check_labels(labels: np.ndarray, n_classes: int, where: str, fix: str) -> np.ndarray:
    """Return labels as int64, or an error if any lies outside 0..n_classes-1."""
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise InvpropError(
            f"{where}: labels must lie in 0..{n_classes - 1}, found "
            f"{labels.min()}..{labels.max()}; {fix}"
        )
    return labels


def check_counts(n_images: int, n_labels: int, where: str, fix: str) -> None:
    if n_images != n_labels:
        raise InvpropError(f"{where}: {n_images} images but {n_labels} labels; {fix}")
