"""Throughput of the evaluation kernels on random data: weighted kNN and the L-BFGS probe.

    .venv/bin/python bench/knn_linear.py                       # Fashion-MNIST-sized, auto device
    .venv/bin/python bench/knn_linear.py --train 1281167 --queries 50000 --classes 1000

Prints one JSON line (sizes, device, seconds) for docs/results.md; not run by CI.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from invprop.inference import resolve_device
from invprop.knn_classifier import knn_accuracy
from invprop.linear import linear_probe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128, help="embedding width (kNN)")
    parser.add_argument("--features", type=int, default=256, help="feature width (probe)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.classes, (args.train,), generator=gen)
    query_labels = torch.randint(0, args.classes, (args.queries,), generator=gen)
    centres = torch.randn(args.classes, args.features, generator=gen)
    train_x = centres[labels] + 3 * torch.randn(args.train, args.features, generator=gen)
    test_x = centres[query_labels] + 3 * torch.randn(args.queries, args.features, generator=gen)
    train_e, test_e = train_x[:, : args.dim].to(device), test_x[:, : args.dim].to(device)
    labels_d, query_labels_d = labels.to(device), query_labels.to(device)

    knn_accuracy(train_e, labels_d, test_e[:64], query_labels_d[:64], [1], 0.07, args.classes)
    _sync(device)
    start = time.perf_counter()
    knn = knn_accuracy(train_e, labels_d, test_e, query_labels_d, [200, 20, 1], 0.07, args.classes)
    _sync(device)
    knn_seconds = time.perf_counter() - start

    start = time.perf_counter()
    probe = linear_probe(
        train_x,
        labels,
        test_x,
        query_labels,
        args.classes,
        [0.1, 1.0],
        0.1,
        args.max_iter,
        0,
        device,
    )
    _sync(device)
    probe_seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "device": str(device),
                "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "threads": torch.get_num_threads(),
                "train": args.train,
                "queries": args.queries,
                "knn_dim": args.dim,
                "knn_seconds": round(knn_seconds, 3),
                "knn_queries_per_second": round(args.queries / knn_seconds, 1),
                "knn_k200_top1": knn[200]["top1"],
                "probe_features": args.features,
                "probe_max_iter": args.max_iter,
                "probe_seconds": round(probe_seconds, 3),
                "probe_top1": probe.top1,
            }
        )
    )


if __name__ == "__main__":
    main()
