"""Images/s of pretraining's image-folder source (decode + random crop + batch), by workers.

Writes a synthetic ImageNet-style folder of JPEGs (train/ and val/ with class folders;
smooth random colour fields plus grain, sides around --side) in a scratch folder, prepares
it for --image-size, then times one epoch of `FolderImages.batches` per run (each image
decoded whole and its random resized crop taken in the workers; median of --repeats runs,
DataLoader start-up included, files in the page cache) for each worker count, and the same
with the imagenet-paper preset's batched augmentation after it (BatchAugment(crop=False)),
on --device (batches land there, as in training).
Prints one JSON line per measurement.

    python bench/imagefolder_throughput.py                         # 2,000 images, 0/1/2 workers
    python bench/imagefolder_throughput.py --device cuda --workers 4 8 12 --augment-workers 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from invprop.augment import BatchAugment
from invprop.batches import train_source
from invprop.config import Config, config_from_dict, deep_merge, read_yaml_mapping
from invprop.data import PreparedDataset, load_prepared
from invprop.inference import input_normalisation
from invprop.stages.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def write_folder(root: Path, n: int, side: int, seed: int = 0) -> int:
    """n JPEGs in CLASSES class folders; returns their total size in bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        height, width = (int(side * f) for f in rng.uniform(0.85, 1.25, 2))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
        grain = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        path = root / f"class_{i % CLASSES:02d}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def folder_config(args: argparse.Namespace, root: Path, num_workers: int) -> Config:
    params = deep_merge(
        read_yaml_mapping(ROOT / "params.yaml", "params file"),
        read_yaml_mapping(ROOT / "presets/imagenet-paper.yaml", "preset"),
    )
    overrides = [
        f"data.root={root}",
        f"data.image_size={args.image_size}",
        f"pretrain.num_workers={num_workers}",
        f"pretrain.device={args.device}",
        "transfer.targets=[]",
    ]
    return config_from_dict(params, overrides)


def epoch_seconds(
    cfg: Config,
    prepared: PreparedDataset,
    augment: BatchAugment | None,
    args: argparse.Namespace,
    epoch: int,
) -> float:
    """Seconds for one epoch of batches from the folder source (and augmentation)."""
    device = torch.device(args.device)
    source = train_source(prepared, cfg, device)
    start = time.perf_counter()
    for images, indices in source.batches(args.batch_size, cfg.seed, epoch):
        if augment is not None:
            augment(images, indices, cfg.seed, epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256, help="typical JPEG side, pixels")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--augment-workers", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs; the median is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="imagefolder-bench-") as scratch:
        root = Path(scratch) / "images"
        start = time.perf_counter()
        jpeg_bytes = write_folder(root / "train", args.images, args.side)
        write_folder(root / "val", CLASSES, args.side, seed=1)  # prepare wants a test split
        written_s = time.perf_counter() - start
        start = time.perf_counter()
        cfg = folder_config(args, root, 0)
        prepare(cfg, "imagefolder", Path(scratch) / "prepared", Path(scratch) / "report.json")
        prepared_s = time.perf_counter() - start
        prepared = load_prepared(Path(scratch) / "prepared")
        common = {
            "images": len(prepared.train),
            "mean_jpeg_kb": round(jpeg_bytes / args.images / 1024, 1),
            "stored": "x".join(map(str, prepared.shape)),
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }
        print(json.dumps({"bench": "setup", "write_s": round(written_s, 1), **common}), flush=True)
        print(json.dumps({"bench": "prepare", "seconds": round(prepared_s, 1)}), flush=True)
        mean, std = input_normalisation(prepared.meta, cfg)
        # the folder source crops in its workers: the batched part is everything after
        augment = BatchAugment(cfg.augment, args.image_size, mean, std, crop=False)
        augment = augment.to(args.device)
        runs = [(w, None) for w in args.workers] + [(w, augment) for w in args.augment_workers]
        for num_workers, with_augment in runs:
            cfg = folder_config(args, root, num_workers)
            seconds = [
                epoch_seconds(cfg, prepared, with_augment, args, epoch)
                for epoch in range(1, args.repeats + 1)
            ]
            row = {
                "bench": "folder_source+augment" if with_augment else "folder_source",
                "num_workers": num_workers,
                "images_per_s": round(len(prepared.train) / statistics.median(seconds), 1),
                "epoch_s": [round(s, 2) for s in seconds],
                # other processes on a shared machine slow CPU runs down: record how busy
                "load_avg_1min": round(os.getloadavg()[0], 2),
                **common,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
