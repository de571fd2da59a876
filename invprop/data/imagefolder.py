"""Any folder of images: class sub-folders (labeled) or a flat folder (unlabeled, label -1).

Splits: if the root has `train/` and `val/` (or `test/`; `val/` wins when both exist, since
the test folders of such datasets often come without labels) those are the splits; else a
fixed-seed stratified 80/20 split of everything. Class names are the union of the class
sub-folder names of both splits, sorted. Images anywhere below a class folder count.

Every file is checked at prepare time, so a bad one fails here rather than hours into
training: up to `FULL_CHECK_MAX_FILES` files each is fully decoded (catches truncation and
corrupt pixel data) and its bytes hashed; beyond that only headers are read (PIL's
`verify()`: PNG chunk CRCs are checked, JPEG data is not), and the checksum covers the file
listing (names and sizes) instead of the content. A file that passes the header check but
fails to decode later raises an error naming it when training reads it.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from invprop.data.sources import (
    SPLIT_SEED,
    TEST_FRACTION,
    FileSplit,
    RawDataset,
    SourceFile,
    SourceOptions,
    register,
)
from invprop.errors import InvpropError
from invprop.logs import get_logger, track
from invprop.sampling import stratified_split

LOG = get_logger("prepare")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
FULL_CHECK_MAX_FILES = 20_000
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"})
LAYOUT = "class sub-folders of images, a flat folder of images, or train/ + val/ folders"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_below(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image(Path(f)))
    return found


def scan_folder(
    folder: Path, fix: str = f"point data.root at {LAYOUT}"
) -> dict[str | None, list[Path]]:
    """Images of `folder` by class name (None: a flat, unlabeled folder). `fix`: what the
    user does when it holds none (another folder is given where the caller takes it)."""
    if not folder.is_dir():
        raise InvpropError(f"imagefolder: {folder} is not a folder; {fix}")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if p.is_file() and is_image(p)]
    subdirs = [p for p in entries if p.is_dir()]
    if loose and subdirs:
        raise InvpropError(
            f"imagefolder: {folder} holds both images ({loose[0].name}, ...) and sub-folders "
            f"({subdirs[0].name}, ...); move the images into class folders or the folders out"
        )
    if loose:
        return {None: loose}
    by_class = {d.name: _images_below(d) for d in subdirs}
    empty = [name for name, files in by_class.items() if not files]
    if not by_class or len(empty) == len(by_class):
        raise InvpropError(
            f"imagefolder: no images found in {folder} (extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); {fix}"
        )
    if empty:
        raise InvpropError(
            f"imagefolder: class folder {folder / empty[0]} holds no images; add images "
            "or remove the folder"
        )
    return by_class


def _check_one(path: Path, full: bool) -> tuple[str, str, int]:
    """(PIL mode, sha256 of the bytes or "", size) of one image; an error if it is bad."""
    try:
        if full:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.mode, hashlib.sha256(data).hexdigest(), len(data)
        with Image.open(path) as image:
            mode = image.mode
            image.verify()
            return mode, "", path.stat().st_size
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise InvpropError(
            f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc}); "
            "replace or delete the file, then rerun prepare"
        ) from exc


def check_images(root: Path, files: list[str]) -> tuple[SourceFile, int]:
    """Check every image (see the module docstring).

    Returns the folder's checksum record and the channel count to load them with: 1 when
    every image is greyscale, else 3.
    """
    full = len(files) <= FULL_CHECK_MAX_FILES
    how = "decoding" if full else "verifying headers of"
    LOG.info(f"prepare imagefolder: {how} {len(files)} images in {root}")
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        checks = pool.map(lambda f: _check_one(root / f, full), files)
        results = list(
            track(checks, "checking images", len(files), "images", lambda _: 1, logger=LOG)
        )
    digest = hashlib.sha256()
    for rel, (_, sha, size) in sorted(zip(files, results, strict=True)):
        digest.update(f"{rel}\t{sha if full else size}\n".encode())
    record = SourceFile(
        path=str(root),
        sha256=digest.hexdigest(),
        bytes=sum(size for _, _, size in results),
        kind="folder-content" if full else "folder-listing",
    )
    modes = {mode for mode, _, _ in results}
    return record, 1 if modes <= GREY_MODES else 3


def _split(root: Path, scanned: dict[str | None, list[Path]], classes: list[str]) -> FileSplit:
    files, labels = [], []
    for name, paths in scanned.items():
        label = -1 if name is None else classes.index(name)
        files.extend(p.relative_to(root).as_posix() for p in paths)
        labels.extend([label] * len(paths))
    return FileSplit(root, files, np.asarray(labels, dtype=np.int64))


@register("imagefolder", format="files", layout=LAYOUT)
def read_imagefolder(opts: SourceOptions) -> RawDataset:
    if opts.root is None:
        raise InvpropError(f"imagefolder needs a root: set {opts.root_key} to a folder of {LAYOUT}")
    root = opts.root.resolve()
    if not root.is_dir():
        raise InvpropError(
            f"imagefolder: dataset root {root} does not exist; set {opts.root_key} to a "
            f"folder of {LAYOUT}"
        )
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        scans = [scan_folder(root / "train"), scan_folder(test_dir)]
        split_note = f"folders train/ and {test_dir.name}/"
    else:
        scans = [scan_folder(root)]
        split_note = f"stratified 80/20, seed {SPLIT_SEED}"
    classes = sorted({name for scan in scans for name in scan if name is not None})
    splits = [_split(root, scan, classes) for scan in scans]
    if len(splits) == 1:
        train_idx, test_idx = stratified_split(splits[0].labels, TEST_FRACTION, SPLIT_SEED)
        splits = [splits[0].take(train_idx), splits[0].take(test_idx)]
    # Sources and channels come from check_images, which prepare runs after any
    # train_limit/test_limit subset, so a quick run on a huge folder checks only its part.
    return RawDataset(splits[0], splits[1], classes, [], root, split=split_note)
