"""Images/s and peak memory of the full InvP training step, printed as JSON lines.

The step is invprop.training.training_step itself (augment, forward, both losses, backward,
SGD, table and bank refresh) on uint8 images already on the device, with the InvP loss
active over a bank of --bank-size entries. Runs on the CPU, and on CUDA when asked.

    python bench/pretrain_throughput.py                              # params.yaml, CPU
    python bench/pretrain_throughput.py --preset presets/fmnist-gpu.yaml --device cuda \
        --batch-sizes 128 256 512 --bank-size 60000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from invprop.augment import BatchAugment
from invprop.checkpoint import build_encoder
from invprop.config import config_from_dict, deep_merge, read_yaml_mapping
from invprop.inference import uses_channels_last
from invprop.method import MemoryBank
from invprop.training import make_optimizer, ramp_weight, training_step


def measure(args: argparse.Namespace, batch_size: int) -> dict[str, object]:
    params = read_yaml_mapping(args.params, "params file")
    if args.preset:
        params = deep_merge(params, read_yaml_mapping(args.preset, "preset"))
    overrides = [f"pretrain.batch_size={batch_size}", f"pretrain.device={args.device}", *args.set]
    cfg = config_from_dict(params, overrides)
    device = torch.device(args.device)
    c, s, n = cfg.data.channels, cfg.data.image_size, args.bank_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=generator)
    images = images.to(device)

    encoder = build_encoder(cfg).to(device)
    if uses_channels_last(cfg, device):
        encoder = encoder.to(memory_format=torch.channels_last)
    model = torch.compile(encoder) if cfg.pretrain.compile else encoder
    bank = MemoryBank(n, cfg.model.dim, cfg.pretrain.k).to(device)
    bank.init_random(torch.Generator(device=device).manual_seed(0))
    bank.neighbours.random_(0, n)  # a full table, so propagation has real work to do
    optimizer = make_optimizer(cfg, encoder)
    augment = BatchAugment(cfg.augment, s, [0.5] * c, [0.25] * c).to(device)
    weight = ramp_weight(cfg.pretrain.ramp_epoch + 1, cfg.pretrain.ramp_epoch, 0.6)

    def step() -> None:
        indices = torch.randint(0, n, (batch_size,), generator=generator).unique()
        while indices.numel() < batch_size:  # distinct indices, as an epoch permutation gives
            extra = torch.randint(0, n, (batch_size,), generator=generator)
            indices = torch.cat([indices, extra]).unique()
        indices = indices[torch.randperm(indices.numel(), generator=generator)][:batch_size]
        indices = indices.to(device)
        training_step(model, bank, optimizer, augment, images[indices], indices, cfg, 2, weight)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    )
    return {
        "bench": "pretrain_step",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "backbone": cfg.model.backbone,
        "head": cfg.model.head,
        "input": f"{s}x{s}x{c}",
        "batch_size": batch_size,
        "bank_size": n,
        "precision": cfg.pretrain.precision,
        "compile": cfg.pretrain.compile,
        "propagator": cfg.pretrain.propagator,
        "background": cfg.pretrain.background,
        "steps": args.steps,
        "images_per_second": round(args.steps * batch_size / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preset", default=None, help="a presets/*.yaml overlay")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--bank-size", type=int, default=60000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for batch_size in args.batch_sizes:
        print(json.dumps(measure(args, batch_size)), flush=True)


if __name__ == "__main__":
    main()
