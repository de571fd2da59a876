"""Which projection head trains better on the CPU default, judged on held-out TRAIN images.

For every head and seed: the CPU default (params.yaml) pretrained on the seeded
class-stratified subset of Fashion-MNIST train (data.train_limit, 10k by default), then the
final network scored on other Fashion-MNIST TRAIN images, never the test split: a seeded
class-stratified set of --val images outside that seed's subset. Figures: clean weighted
kNN (K = 200, tau 0.07) on the embeddings and on the L2-normalised features, and the L-BFGS
linear probe on the features (C chosen on a held-out part of the subset, as the evaluate
stage does). Prints one JSON line per run, then the mean and std per head.

    flock /tmp/invprop-cpu.lock .venv/bin/python bench/head_comparison.py --seeds 0 1 2

Not run by CI; the figures go to docs/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from invprop.checkpoint import encoder_from_checkpoint
from invprop.config import load_config
from invprop.data.prepared import Split
from invprop.data.sources import SourceOptions, get_source
from invprop.inference import extract
from invprop.knn_classifier import knn_accuracy
from invprop.linear import lbfgs_probe
from invprop.sampling import stratified_subset
from invprop.stages.prepare import prepare
from invprop.training import train
from invprop.workspace import TrainingRun, prepared_dataset

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("mlp_no_bn", "mlp_hidden_bn", "mlp_hidden_out_bn")


def held_out_train(cfg, size: int) -> Split:
    """`size` class-stratified train images outside the pretraining subset of cfg.seed."""
    raw = get_source(cfg.data.name).read(SourceOptions.from_config(cfg, cfg.data.name))
    labels = np.asarray(raw.train.labels)
    subset = stratified_subset(labels, cfg.data.train_limit, cfg.seed)
    rest = np.setdiff1d(np.arange(len(labels)), subset)
    picked = rest[stratified_subset(labels[rest], size, cfg.seed + 1)]
    return Split("val", np.ascontiguousarray(raw.train.images[picked]), labels[picked])


def one_run(head: str, seed: int, args: argparse.Namespace) -> dict[str, float | str | int]:
    overrides = [
        f"seed={seed}",
        f"model.head={head}",
        f"data.train_limit={args.train_limit}",
        f"pretrain.epochs={args.epochs}",
        "pretrain.snapshot_epochs=[]",
        "pretrain.monitor_knn=false",
        "embed.tags=[final]",
        "pretrain.device=cpu",
        *args.set,
    ]
    cfg = load_config(ROOT / "params.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepare(cfg, cfg.data.name)
        start = time.perf_counter()
        run = TrainingRun(Path("models"), Path("live"))
        train(cfg, run)
        seconds = time.perf_counter() - start
        encoder, _, _ = encoder_from_checkpoint(run.final)
        prepared = prepared_dataset(cfg.data.name)
        val = held_out_train(cfg, args.val)
        fit_f, fit_e = extract(encoder, prepared.train, prepared.meta, cfg, "cpu")
        val_f, val_e = extract(encoder, val, prepared.meta, cfg, "cpu")
        fit_y = torch.as_tensor(np.array(prepared.train.labels))
        classes = len(prepared.classes)
    val_y = torch.as_tensor(val.labels)
    knn_e = knn_accuracy(fit_e, fit_y, val_e, val_y, [200], 0.07, classes)[200]["top1"]
    knn_f = knn_accuracy(
        F.normalize(fit_f, dim=1), fit_y, F.normalize(val_f, dim=1), val_y, [200], 0.07, classes
    )[200]["top1"]
    probe = lbfgs_probe(fit_f, fit_y, val_f, val_y, cfg, classes, torch.device("cpu"))
    return {
        "head": head,
        "seed": seed,
        "knn200_embeddings": knn_e,
        "knn200_features": knn_f,
        "linear_features": probe.top1,
        "linear_c": probe.c,
        "pretrain_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--val", type=int, default=5_000, help="held-out train images")
    parser.add_argument("--set", nargs="*", default=[], help="more key=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = []
    for seed in args.seeds:
        for head in args.heads:
            runs.append(one_run(head, seed, args))
            print(json.dumps(runs[-1]), flush=True)
    for head in args.heads:
        mine = [r for r in runs if r["head"] == head]
        summary: dict[str, object] = {"head": head, "runs": len(mine)}
        for key in ("knn200_embeddings", "knn200_features", "linear_features"):
            values = [float(r[key]) for r in mine]
            summary[key] = {
                "mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
