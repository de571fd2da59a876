"""Time the per-step bank work of InvP: S = v @ V^T, its top-M, and the propagation.

Prints one JSON line per measurement (median and min over repeats, milliseconds):

    python bench/topm_bank.py                        # CPU, and CUDA when available
    python bench/topm_bank.py --devices cuda --sizes 60000,1281167 --repeats 20

CUDA timings synchronise around each timed call (never inside the measured functions).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from invprop.method import (
    bank_similarities,
    invp_loss,
    max_positives,
    propagate_all,
    propagate_concat,
    propagate_exact,
    top_background,
)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of ``fn()`` per repeat, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def emit(op: str, device: torch.device, times: list[float], **fields: Any) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    row = {
        "op": op,
        "device": device.type,
        "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(),
        **fields,
        "ms_median": round(statistics.median(times), 3),
        "ms_min": round(min(times), 3),
        "repeats": len(times),
    }
    print(json.dumps(row), flush=True)


def bench_topm(args: argparse.Namespace, device: torch.device, n: int) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    bank = F.normalize(torch.randn(n, args.dim, generator=g, device=device), dim=1)
    emb = F.normalize(torch.randn(args.batch, args.dim, generator=g, device=device), dim=1)
    size = dict(n=n, B=args.batch, d=args.dim, M=args.m)
    run = dict(device=device, repeats=args.repeats, warmup=args.warmup)
    both = timed(lambda: top_background(bank_similarities(emb, bank), args.m), **run)
    emit("bank_similarities+top_background", device, both, **size)
    sim = bank_similarities(emb, bank)
    emit("bank_similarities", device, timed(lambda: bank_similarities(emb, bank), **run), **size)
    emit("top_background", device, timed(lambda: top_background(sim, args.m), **run), **size)
    authors = timed(lambda: sim.topk(args.m, dim=1, sorted=True), **run)
    emit("topk_sorted(the authors', reference)", device, authors, **size)
    if args.bf16:
        e16, b16 = emb.bfloat16(), bank.bfloat16()
        t = timed(lambda: top_background(bank_similarities(e16, b16), args.m), **run)
        emit("bank_similarities+top_background(bf16 inputs)", device, t, **size)
    if args.step:
        table = torch.randint(0, n, (n, args.k), generator=g, device=device)
        anchors = torch.randperm(n, generator=g, device=device)[: args.batch]
        kw = dict(temperature=0.07, n_background=args.m, n_pos=args.n_pos, weight=0.6)

        def step() -> None:
            v = emb.clone().requires_grad_(True)
            prop = propagate_exact(table, anchors, args.hops)
            invp_loss(bank_similarities(v, bank), anchors, prop, **kw).total.backward()

        emit("step: S + propagate_exact + invp_loss fwd/bwd", device, timed(step, **run), **size)


def bench_propagate(args: argparse.Namespace, device: torch.device) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    n = args.prop_n
    table = torch.randint(0, n, (n, args.k), generator=g, device=device)
    anchors = torch.randperm(n, generator=g, device=device)[: args.batch]
    size = dict(n=n, B=args.batch, k=args.k, hops=args.hops, C=max_positives(args.k, args.hops))
    run = dict(device=device, repeats=args.repeats, warmup=args.warmup)
    for name, fn in [("propagate_exact", propagate_exact), ("propagate_concat", propagate_concat)]:
        emit(name, device, timed(lambda fn=fn: fn(table, anchors, args.hops), **run), **size)

    def whole_table() -> None:
        for _ in propagate_all(table, args.hops, "exact", chunk_size=args.chunk):
            pass

    t = timed(whole_table, device, max(1, args.repeats // 5), 1)
    emit("propagate_all(exact, whole table)", device, t, **size, chunk=args.chunk)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu + cuda")
    p.add_argument("--sizes", default="60000,200000,1281167", help="bank sizes n, comma list")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--m", type=int, default=4096, help="n_background M")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--hops", type=int, default=3)
    p.add_argument("--prop-n", type=int, default=60000, help="table rows for propagation")
    p.add_argument("--chunk", type=int, default=4096, help="propagate_all chunk size")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 inputs")
    p.add_argument("--step", action="store_true", help="also time a whole loss step (fwd+bwd)")
    p.add_argument("--n-pos", type=int, default=50, help="P for --step")
    p.add_argument("--skip-topm", action="store_true")
    p.add_argument("--skip-propagate", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    devices = [torch.device(d) for d in names if d != "cuda" or torch.cuda.is_available()]
    for device in devices:
        if not args.skip_topm:
            for n in (int(s) for s in args.sizes.split(",")):
                bench_topm(args, device, n)
        if not args.skip_propagate:
            bench_propagate(args, device)


if __name__ == "__main__":
    main()
