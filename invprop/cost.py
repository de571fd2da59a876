"""What a params file costs before it runs: compute, memory and disk, per image and per run.

FLOPs are measured, not modelled: `torch.utils.flop_counter.FlopCounterMode` counts the
matrix products and convolutions, forward and backward, of one real training step
(`invprop.training.training_step`: augmentation, encoder, the InvP loss over the whole
bank, SGD, table and bank refresh) on a batch of `MEASURED_BATCH` images of the params'
input size, with the propagation term on. Every counted operation is linear in the batch,
so the count divided by the batch is the figure per trained image at any batch size. As
everywhere FLOPs are quoted, a multiply-add counts 2 and elementwise work (BatchNorm,
activations, exp, top-k, sorting, the optimizer's update) is not counted; of the
augmentation, only the Gaussian blur's convolutions count. The step's figure is split
into the encoder's (forward and backward), the augmentation's and the rest: the
similarities to the bank and their gradient. The encoder's
forward pass per image is measured the same way (in eval mode): what embedding, the
"clean" table rebuild, the bank fill and the kNN monitor run.

Memory and disk follow from shapes: the bank is n x dim fp32, the neighbour table n x k
int64, a step's similarities B x n fp32 and its top-M background B x M (fp32 values, int64
ids); a checkpoint holds the model's state, the optimizer's momenta, the bank and the
table (`invprop.checkpoint.tensor_bytes` of the real state, so every buffer is counted).

n (train images, the bank's rows) and the test split's size come from, in order: the
caller; the prepared data (`data/prepared/<data.name>/meta.json`, when it was prepared
with the same limits); the dataset's published split sizes (`invprop.data` registry),
capped by data.train_limit / test_limit. Image folders have none: pass the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from invprop.augment import BatchAugment
from invprop.baselines import enabled_baselines
from invprop.batches import batch_sizes
from invprop.checkpoint import build_encoder, tensor_bytes
from invprop.config import Config
from invprop.data import get_source
from invprop.errors import InvpropError
from invprop.io import read_json
from invprop.method import MemoryBank
from invprop.training import check_fits, make_optimizer, refreshes_online, training_step
from invprop.workspace import META_FILE, prepared_dir

__all__ = ["MEASURED_BATCH", "Measured", "SplitSizes", "measure", "run_cost", "split_sizes"]

# Images of the measured step: BatchNorm needs two; the count per image does not depend on it.
MEASURED_BATCH = 2
FP32, INT64 = 4, 8


@dataclass(frozen=True)
class SplitSizes:
    """Train and test images of a run, and where the counts came from."""

    train: int
    test: int
    source: str


def split_sizes(
    cfg: Config, train: int | None = None, test: int | None = None, root: str | Path = "."
) -> SplitSizes:
    """The sizes of cfg.data's splits (see the module docstring for the order searched)."""
    d = cfg.data
    if train is not None and test is not None:
        return SplitSizes(train, test, "given")
    meta_path = prepared_dir(d.name, root) / META_FILE
    if meta_path.is_file():
        meta = read_json(meta_path)
        limits = meta.get("params", {})
        if (limits.get("train_limit"), limits.get("test_limit")) == (d.train_limit, d.test_limit):
            counts = meta["counts"]
            return SplitSizes(
                train if train is not None else int(counts["train"]),
                test if test is not None else int(counts["test"]),
                str(meta_path),
            )
    published = get_source(d.name).sizes
    if published is None:
        raise InvpropError(
            f"the size of {d.name} (data.root {d.root}) is not known before it is prepared; "
            "prepare it first (dvc repro prepare), or pass --train-images and --test-images "
            "(ImageNet: 1281167 and 50000)"
        )
    n_train, n_test = (
        min(size, limit) if limit is not None else size
        for size, limit in zip(published, (d.train_limit, d.test_limit), strict=True)
    )
    return SplitSizes(
        train if train is not None else n_train,
        test if test is not None else n_test,
        f"{d.name}'s published split sizes",
    )


@dataclass(frozen=True)
class Measured:
    """What one counted training step and one counted forward pass give (see the module
    docstring): FLOPs per image, the encoder's feature width, the checkpoint state's bytes."""

    step_flops: int
    encoder_step_flops: int
    augment_flops: int
    forward_flops: int
    feature_dim: int
    model_bytes: int
    optimizer_bytes: int
    checkpoint_bytes: int


def measure(cfg: Config, n: int) -> Measured:
    """Count one training step over an n-row bank and one forward pass, on the CPU."""
    check_fits(cfg, n)
    generator = torch.Generator().manual_seed(cfg.seed)
    encoder = build_encoder(cfg)
    bank = MemoryBank(n, cfg.model.dim, cfg.pretrain.k)
    bank.init_random(generator)
    bank.neighbours.random_(0, n, generator=generator)  # a full table: propagation has work
    optimizer = make_optimizer(cfg, encoder)
    c, s = cfg.data.channels, cfg.data.image_size
    augment = BatchAugment(cfg.augment, s, [0.5] * c, [0.25] * c)
    images = torch.randint(0, 256, (MEASURED_BATCH, c, s, s), dtype=torch.uint8)
    indices = torch.arange(MEASURED_BATCH)
    epoch = cfg.pretrain.ramp_epoch + 1  # the propagation term on (when InvP is)
    weight = cfg.pretrain.lambda_inv if cfg.pretrain.invp else 0.0
    with FlopCounterMode(display=False) as step:
        training_step(encoder, bank, optimizer, augment, images, indices, cfg, epoch, weight)
    encoder.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        encoder.embed(torch.zeros(MEASURED_BATCH, c, s, s))
    # the counter files each count under the module that ran it, by the module's class name
    counts = step.get_flop_counts()
    encoder_step, augment_step = (
        sum(counts.get(type(module).__name__, {}).values()) for module in (encoder, augment)
    )
    state = {"model": encoder.state_dict(), "optimizer": optimizer.state_dict()}
    return Measured(
        step_flops=step.get_total_flops() // MEASURED_BATCH,
        encoder_step_flops=encoder_step // MEASURED_BATCH,
        augment_flops=augment_step // MEASURED_BATCH,
        forward_flops=forward.get_total_flops() // MEASURED_BATCH,
        feature_dim=encoder.feature_dim,
        model_bytes=tensor_bytes(state["model"]),
        optimizer_bytes=tensor_bytes(state["optimizer"]),
        checkpoint_bytes=tensor_bytes(state | {"bank": bank.state_dict()}),
    )


def run_cost(cfg: Config, sizes: SplitSizes) -> dict[str, Any]:
    """Compute, memory and disk of training and embedding `cfg` (plain data, JSON-ready).

    flops: per image (the step; its encoder and bank/loss parts; a forward pass), per
    epoch (the steps, the table rebuild of pretrain.table_refresh, the kNN monitor) and in
    all (epochs x per epoch + the forward bank fill, for InvP and each training baseline
    switched on in evaluate.baselines, with its recipe; the embed stage's passes; the
    sgd_augmented probe's backbone passes). memory: bytes of the bank, table,
    similarities, top-M, model and momenta. disk: bytes of a checkpoint (written each
    epoch as last.pt, and once per snapshot), of an embeddings and a graph artifact per
    tag, and of everything a run keeps.
    """
    n, m = sizes.train, sizes.test
    p, dim = cfg.pretrain, cfg.model.dim
    measured = measure(cfg, n)
    forward = measured.forward_flops
    monitor = (m * forward + 2 * m * n * dim) if p.monitor_knn else 0

    def epoch_flops(run: Config) -> dict[str, int]:
        rebuild = 0
        if not refreshes_online(run):  # the exact k-NN of n rows, and a clean pass for "clean"
            rebuild = 2 * n * n * dim + (n * forward if p.table_refresh == "clean" else 0)
        return {"steps": n * measured.step_flops, "table_rebuild": rebuild, "knn_monitor": monitor}

    runs = {"invp": cfg, **enabled_baselines(cfg)}
    per_epoch = {name: epoch_flops(run) for name, run in runs.items()}
    fill = n * forward if p.bank_init == "forward" else 0
    training = {name: p.epochs * sum(parts.values()) + fill for name, parts in per_epoch.items()}
    embedded = len(cfg.embed.tags) + len(runs) - 1  # each baseline embeds its final model
    lin = cfg.evaluate.linear
    probe = lin.epochs * n * forward if lin.protocol == "sgd_augmented" else 0
    evaluation = embedded * (n + m) * forward + len(runs) * probe

    embeddings = (n + m) * ((measured.feature_dim + dim) * FP32 + INT64)
    graph = n * (cfg.graph.k * (INT64 + FP32) + INT64)
    checkpoint = measured.checkpoint_bytes
    checkpoints = len(runs) * (2 + len(p.snapshot_epochs))  # last.pt, final.pt, snapshots
    batch = min(p.batch_size, n)
    return {
        "train_images": n,
        "test_images": m,
        "sizes_from": sizes.source,
        "epochs": p.epochs,
        "steps_per_epoch": len(batch_sizes(n, p.batch_size)),
        "trainings": list(runs),
        "flops": {
            "step_per_image": measured.step_flops,
            "encoder_step_per_image": measured.encoder_step_flops,
            "augment_per_image": measured.augment_flops,
            "bank_and_loss_per_image": measured.step_flops
            - measured.encoder_step_flops
            - measured.augment_flops,
            "forward_per_image": forward,
            "per_epoch": per_epoch,
            "training": training,
            "embed_and_evaluate": evaluation,
            "total": sum(training.values()) + evaluation,
        },
        "memory_bytes": {
            "bank": n * dim * FP32,
            "table": n * p.k * INT64,
            "similarities": batch * n * FP32,
            "top_m": batch * p.n_background * (FP32 + INT64),
            "model": measured.model_bytes,
            "optimizer": measured.optimizer_bytes,
        },
        "disk_bytes": {
            "checkpoint": checkpoint,
            "written_per_epoch": checkpoint,
            "per_snapshot": checkpoint,
            "embeddings_per_tag": embeddings,
            "graph_per_tag": graph,
            "total": checkpoints * checkpoint + embedded * embeddings + len(cfg.embed.tags) * graph,
        },
    }
