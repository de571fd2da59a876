"""Throughput of the batched augmentation and of encoder forward+backward passes.

Prints one JSON line per measurement (median of ``--repeats`` timed runs of ``--iters``
batches each, after ``--warmup`` batches). CPU runs use ``--threads`` intra-op threads; on CUDA
the timings are bracketed by ``torch.cuda.synchronize()``.

    python bench/augment_throughput.py                 # cuda if available, else cpu, 2 threads
    python bench/augment_throughput.py --device cpu --threads 2 --only augment
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from invprop.augment import BatchAugment
from invprop.config import config_from_dict, read_yaml_mapping
from invprop.models import Encoder

# the authors' CIFAR recipe, as the cifar10-authors preset states it
CIFAR_RECIPE = config_from_dict(
    read_yaml_mapping(Path(__file__).parents[1] / "presets/cifar10-authors.yaml", "preset")
).augment


def timed(step: Callable[[int], None], device: torch.device, iters: int, args) -> float:
    """Median over ``args.repeats`` runs of the seconds per call of ``step(i)``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    sync()
    runs = []
    for r in range(args.repeats):
        start = time.perf_counter()
        for i in range(iters):
            step(args.warmup + r * iters + i)
        sync()
        runs.append((time.perf_counter() - start) / iters)
    return statistics.median(runs)


def bench_augment(shape: tuple[int, int, int], size: int, device: torch.device, args) -> dict:
    c, h, w = shape
    n = args.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n * 8, c, h, w), dtype=torch.uint8, generator=g).to(device)
    aug = BatchAugment(CIFAR_RECIPE, size, [0.5] * c, [0.25] * c).to(device)

    def step(i: int) -> None:
        idx = torch.arange(i * n, (i + 1) * n, device=device) % images.shape[0]
        aug(images[idx], idx, seed=0, epoch=1)

    sec = timed(step, device, args.iters, args)
    return {
        "bench": "augment",
        "recipe": "cifar",
        "input": f"{h}x{w}x{c}",
        "output": f"{size}x{size}x{c}",
        "images_per_s": round(n / sec, 1),
    }


def bench_model(backbone: str, shape: tuple[int, int, int], device: torch.device, args) -> dict:
    c, h, w = shape
    n = args.batch_size
    torch.manual_seed(0)
    model = Encoder(backbone, c, args.head, 128).to(device).train()
    x = torch.randn(n, c, h, w, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randn(n, 128, device=device)

    def step(i: int) -> None:
        model.zero_grad(set_to_none=True)
        (model(x) * target).sum().backward()

    sec = timed(step, device, args.model_iters, args)
    return {
        "bench": "forward_backward",
        "backbone": backbone,
        "head": args.head,
        "input": f"{h}x{w}x{c}",
        "channels_last": args.channels_last,
        "images_per_s": round(n / sec, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20, help="augmentation batches per run")
    parser.add_argument("--model-iters", type=int, default=5, help="model batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    parser.add_argument("--head", default="mlp_hidden_bn", choices=["linear", "mlp_hidden_bn"])
    parser.add_argument("--channels-last", action="store_true", help="models in NHWC layout")
    parser.add_argument("--only", choices=["augment", "model"], help="run one group only")
    args = parser.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    common = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads if device.type == "cpu" else None,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    jobs: list[Callable[[], dict]] = []
    if args.only in (None, "augment"):
        jobs.append(lambda: bench_augment((1, 28, 28), 28, device, args))
        jobs.append(lambda: bench_augment((3, 32, 32), 32, device, args))
    if args.only in (None, "model"):
        jobs.append(lambda: bench_model("small_cnn", (1, 28, 28), device, args))
        jobs.append(lambda: bench_model("resnet18_cifar", (3, 32, 32), device, args))
    for job in jobs:
        result = job()
        # other processes on a shared machine slow CPU runs down: record how busy it was
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        print(json.dumps({**result, **common, "load_avg_1min": load}), flush=True)


if __name__ == "__main__":
    main()
