"""The prepare stage: raw dataset -> `data/prepared/<name>/` + `reports/prepare_<name>.json`.

Reads the raw files through the dataset's registered reader, applies the seeded
class-stratified `data.train_limit` / `data.test_limit` subsets, checks image files (image
folders), computes channel statistics and source checksums, and writes the folder
described in `invprop.data.prepared` through `atomic_dir`: a failed or interrupted run
leaves the previous complete folder in place. Torch is never imported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from invprop import __version__
from invprop.config import Config, params_hash
from invprop.data.imagefolder import check_images
from invprop.data.prepared import META_VERSION, SPLITS, decode_image, load_size, split_files
from invprop.data.sources import (
    ArraySplit,
    FileSplit,
    RawSplit,
    SourceFile,
    SourceOptions,
    get_source,
)
from invprop.errors import InvpropError
from invprop.io import atomic_dir, ensure_free_space, file_sha256, write_json
from invprop.logs import get_logger
from invprop.sampling import stratified_subset
from invprop.workspace import META_FILE, prepared_dir, stage_report

LOG = get_logger("prepare")
# "files" datasets: how many train images are decoded to estimate the channel mean/std.
STATS_SAMPLE = 1000


def run(cfg: Config, *datasets: str) -> None:
    """Stage entry point: prepare each named dataset (default: cfg.prepared_datasets())."""
    names = list(datasets) or cfg.prepared_datasets()
    for name in names:  # fail on a bad name before any work
        get_source(name)
    for name in names:
        prepare(cfg, name)


def preparation_hash(opts: SourceOptions, data_seed: int) -> str:
    """Hash of the params a dataset was prepared with: its source options and the data
    seed (of a transfer target, none of the pretraining dataset's other data params)."""
    values = dataclasses.asdict(opts)
    del values["root_key"]  # where errors point to, not what is read
    values["root"] = str(opts.root) if opts.root is not None else None
    return params_hash(values | {"seed": data_seed})


def prepare(
    cfg: Config, name: str, out: str | Path | None = None, report: str | Path | None = None
) -> dict[str, Any]:
    """Prepare dataset `name` into `out` (default data/prepared/<name>); return its meta.

    Also writes `report` (default reports/prepare_<name>.json): counts, time and size.
    """
    start = time.perf_counter()
    source = get_source(name)
    out = Path(out) if out is not None else prepared_dir(name)
    report = Path(report) if report is not None else stage_report(f"prepare_{name}")
    opts = SourceOptions.from_config(cfg, name)
    where = opts.root or source.default_root
    LOG.info(f"prepare {name}: " + (f"reading {where}" if where else "building"))
    raw = source.read(opts)

    limits = {"train": opts.train_limit, "test": opts.test_limit}
    native = {"train": len(raw.train), "test": len(raw.test)}
    splits = {s: _limit(getattr(raw, s), limits[s], cfg.data.seed) for s in SPLITS}
    for split, data in splits.items():
        if len(data) == 0:
            raise InvpropError(
                f"{name}: the {split} split is empty (read from {raw.root or 'generated data'}); "
                "add images, or for an unsplit image folder use at least 5 images"
            )

    if raw.format == "files":
        files = splits["train"].files + splits["test"].files
        record, channels = check_images(splits["train"].root, files)
        sources = [record]
        size = load_size(cfg.data.image_size)
        shape = [channels, size, size]
    else:
        sources = [_record(s) for s in raw.sources]
        shape = list(splits["train"].images.shape[1:])
        if list(splits["test"].images.shape[1:]) != shape:
            raise InvpropError(
                f"{name}: train and test images differ in shape; check the raw files"
            )
    mean, std, stats_note = _channel_stats(splits["train"], shape, cfg.data.seed)

    meta: dict[str, Any] = {
        "version": META_VERSION,
        "dataset": name,
        "format": raw.format,
        "shape": shape,
        "classes": list(raw.classes),
        "counts": {s: len(d) for s, d in splits.items()},
        "native_counts": native,
        "class_counts": {s: _class_counts(d.labels, len(raw.classes)) for s, d in splits.items()},
        "unlabeled": {s: int((d.labels == -1).sum()) for s, d in splits.items()},
        "mean": mean,
        "std": std,
        "stats": stats_note,
        "split": raw.split,
        "root": str(raw.root) if raw.root is not None else None,
        "sources": [dataclasses.asdict(record) for record in sources],
        "params": {
            "data_hash": preparation_hash(opts, cfg.data.seed),
            "data_seed": cfg.data.seed,
            "train_limit": limits["train"],
            "test_limit": limits["test"],
        },
        "invprop_version": __version__,
    }
    if raw.format == "files":
        meta["load"] = (
            f"shorter side resized to {shape[1]} (data.image_size * 8/7), centre crop "
            f"{shape[1]}x{shape[2]}, {shape[0]} channel(s)"
        )

    ensure_free_space(out.parent, _artifact_bytes(splits), f"prepared {name}")
    with atomic_dir(out) as tmp:
        for split, data in splits.items():
            _write_split(tmp, split, data)
        write_json(tmp / META_FILE, meta)  # no timings: equal inputs, equal artifact

    size_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    seconds = round(time.perf_counter() - start, 3)
    write_json(
        report,
        {
            "dataset": name,
            "format": raw.format,
            "path": str(out),
            "shape": shape,
            "classes": len(raw.classes),
            "counts": meta["counts"],
            "seconds": seconds,
            "size_bytes": size_bytes,
        },
    )
    counts = meta["counts"]
    LOG.info(
        f"prepare {name}: {counts['train']} train / {counts['test']} test images, "
        f"{len(raw.classes)} classes, shape {shape}, {size_bytes / 1e6:.1f} MB -> {out} "
        f"({seconds:.1f} s)"
    )
    return meta


def _limit(split: RawSplit, limit: int | None, seed: int) -> RawSplit:
    if limit is None or limit >= len(split):
        return split
    return split.take(stratified_subset(split.labels, limit, seed))


def _record(source: Path | SourceFile) -> SourceFile:
    if isinstance(source, SourceFile):
        return source
    return SourceFile(str(source), file_sha256(source), source.stat().st_size)


def _class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels[labels >= 0], minlength=n_classes).tolist()


def _channel_stats(
    split: RawSplit, shape: list[int], seed: int
) -> tuple[list[float], list[float], str]:
    """Per-channel mean and std on the 0..1 scale, over all train images (arrays) or a
    seeded sample of STATS_SAMPLE decoded at the load shape (files)."""
    if isinstance(split, FileSplit):
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(len(split), min(STATS_SAMPLE, len(split)), replace=False))
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = np.stack(
                list(pool.map(lambda i: decode_image(split.root / split.files[i], shape), picks))
            )
        note = f"train split, {len(picks)} sampled images"
    else:
        images = split.images
        note = f"train split, all {len(images)} images"
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.uint64)
    squares = np.zeros(channels, dtype=np.uint64)
    step = max(1, (1 << 22) // max(1, images[0].size))  # ~4M pixels per chunk
    for i in range(0, len(images), step):
        chunk = np.asarray(images[i : i + step])
        total += chunk.sum(axis=(0, 2, 3), dtype=np.uint64)
        squares += np.square(chunk, dtype=np.uint32).sum(axis=(0, 2, 3), dtype=np.uint64)
    count = len(images) * images.shape[2] * images.shape[3]
    mean, std = [], []
    for c in range(channels):  # exact integer sums, then one division
        s, q = int(total[c]), int(squares[c])
        mean.append(round(s / count / 255, 6))
        std.append(round(max(q * count - s * s, 0) ** 0.5 / count / 255, 6))
    return mean, std, note


def _artifact_bytes(splits: dict[str, RawSplit]) -> int:
    total = 0
    for data in splits.values():
        if isinstance(data, ArraySplit):
            total += data.images.nbytes + 8 * len(data)
        else:
            total += sum(len(f) + 16 for f in data.files)
    return total


def _write_split(folder: Path, split: str, data: RawSplit) -> None:
    files = split_files(folder, split)
    if isinstance(data, ArraySplit):
        np.save(files["images"], np.ascontiguousarray(data.images, np.uint8))
        np.save(files["labels"], data.labels.astype(np.int64))
        return
    index = {"root": str(data.root), "files": data.files, "labels": data.labels.tolist()}
    files["index"].write_text(json.dumps(index, separators=(",", ":")))
