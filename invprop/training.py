"""InvP pretraining: one readable loop, top to bottom (shared by the pretrain and
instance_discrimination stages).

    for each epoch:
        for each batch of indices (a seeded permutation of the train split):
            augment on the data's device -> encoder -> S = v @ V^T (fp32)
            L = L_ins + lambda * w(epoch) * L_inv      (OLD bank and table)
            SGD step; then refresh the table rows and the bank rows of the batch
        (table rebuilt, when pretrain.table_refresh asks), table purity, kNN monitor on the
        bank, dvclive log, (snapshot +) last.pt written atomically

Resuming: last.pt carries everything (model, optimizer, bank, table, epoch, history) plus
the hash of the params that shape training. Training writes it to
`models/in_progress/pretrain/`, which neither orchestrator clears when a job fails, and
publishes the finished run to `models/pretrain/` (TrainingRun). A restart with the same
params continues from it; with other params it starts afresh and says so. Every random
draw is a function of (seed, epoch, sample index) or (seed, epoch), so an interrupted and
resumed CPU run ends bit-identical to an uninterrupted one.

Several GPUs (`pretrain.processes: N`, or `torchrun --nproc_per_node=N stages/pretrain.py`):
each rank trains on its contiguous share of every global batch, with BatchNorm over the
global batch, and gathers the other ranks' bank and table rows after each step, so all
ranks hold the same bank and the run equals one process with the same batch up to float
noise (tests/test_distributed.py); rank 0 alone writes checkpoints, curves and progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from invprop import names
from invprop.augment import BatchAugment
from invprop.batches import batch_sizes, train_source
from invprop.checkpoint import (
    CHECKPOINT_VERSION,
    build_encoder,
    image_preprocessing,
    load_checkpoint,
    save_checkpoint,
    training_hash,
    training_params,
)
from invprop.config import Config
from invprop.data import PreparedDataset
from invprop.distributed import (
    Ranks,
    all_gather_rows,
    all_reduce_sum,
    barrier,
    broadcast_,
    gather_objects,
    process_group,
    rank_device,
    sync_batchnorm,
)
from invprop.errors import InvpropError
from invprop.inference import (
    extract,
    input_normalisation,
    resolve_device,
    uses_bf16,
    uses_channels_last,
)
from invprop.knn_classifier import knn_accuracy
from invprop.logs import get_logger, track
from invprop.method import InvPLoss, MemoryBank, invp_loss, propagate, ramp_weight, table_purity
from invprop.models import Encoder
from invprop.registry import Registry
from invprop.workspace import PRETRAIN, TrainingRun, prepared_dataset

LOG = get_logger("pretrain")
MONITOR_K = 200
MONITOR_TEMPERATURE = 0.07


def open_curves(folder: Path) -> Any:
    """dvclive's writer of the per-epoch curves in `folder`; None where dvclive is not
    installed (a bare GPU machine running bench/gpu_check.sh, which needs no dvc): every
    epoch's row is then still logged and kept in the checkpoint's history."""
    try:
        from dvclive import Live
    except ImportError:
        LOG.warning(f"dvclive is not installed: no training curves in {folder}")
        return None
    return Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False)


def log_row(live: Any, row: dict[str, float]) -> None:
    """One epoch's row of figures as a dvclive step (nothing without dvclive)."""
    if live is None:
        return
    for name, value in row.items():
        if name != "epoch":
            live.log_metric(name, value, plot=True)
    live.next_step()


def learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine, constant or step decay; a pure function of the step.

    step: ``lr * lr_decay ** (number of milestones m with epoch >= m)``, epochs from 1, as
    the authors' utils.py `adjust_learning_rate` without --cos (main.py's default
    milestones 400, 600, 700).
    """
    p = cfg.pretrain
    total = p.epochs * steps_per_epoch
    warmup = p.warmup_epochs * steps_per_epoch
    if step < warmup:
        return p.lr * (step + 1) / warmup
    if p.schedule == "constant":
        return p.lr
    if p.schedule == "step":
        epoch = step // steps_per_epoch + 1
        return p.lr * p.lr_decay ** sum(epoch >= m for m in p.lr_milestones)
    return 0.5 * p.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# What an epoch's row measures of the machine, not of the training: kept in this run's
# rows (curves, report) and out of checkpoints, whose bytes must be a function of what
# they hold (a rerun that trains the same writes the same file: no new DVC hash).
TIMING_KEYS = ("epoch_seconds", "table_seconds", "images_per_second")


@dataclass
class TrainState:
    """Everything a resume restores, by name (DINO's restart_from_checkpoint, in one place)."""

    encoder: Encoder
    bank: MemoryBank
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    history: list[dict[str, float]] | None = None
    preprocessing: dict[str, Any] | None = None  # see invprop.checkpoint

    def to_checkpoint(self, cfg: Config) -> dict[str, Any]:
        return {
            "preprocessing": dict(self.preprocessing or {}),
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "params_hash": training_hash(cfg),
            "config": training_params(cfg),
            "model": self.encoder.state_dict(),
            "bank": self.bank.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": [
                {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in self.history or []
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["model"])
        self.bank.load_state_dict(state["bank"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])


def make_optimizer(cfg: Config, encoder: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (the authors' setting); fused
    on CUDA. The learning rate is set per step by `learning_rate`."""
    p = cfg.pretrain
    cuda = next(encoder.parameters()).device.type == "cuda"
    return torch.optim.SGD(
        encoder.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, fused=cuda
    )


def training_step(
    model: torch.nn.Module,
    bank: MemoryBank,
    optimizer: torch.optim.Optimizer,
    augment: BatchAugment,
    images: torch.Tensor,
    indices: torch.Tensor,
    cfg: Config,
    epoch: int,
    weight: float,
    loss_scale: float = 1.0,
) -> InvPLoss:
    """One InvP step on a uint8 batch: augment, embed, losses with the OLD bank and table,
    SGD step, then refresh the batch's table rows and bank rows. Returns detached losses.

    Under DDP `images` are this rank's share of the global batch; with `loss_scale` =
    world size x share / global batch size, DDP's gradient average is the gradient of
    the global batch mean even when shares differ by one, and the bank update gathers
    every rank's rows, so all ranks keep the same bank.

    Backbone in bf16 autocast where `pretrain.precision` asks (bf16, or auto on CUDA) and
    channels_last where `pretrain.channels_last` does (true, or auto on CUDA), the same on
    every device, so the CPU rehearses what a GPU runs; the similarities, exp and sums stay
    fp32. No host synchronisation.
    """
    p = cfg.pretrain
    device = images.device
    x = augment(images, indices, cfg.seed, epoch)
    if uses_channels_last(cfg, device):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg, device)):
        embeddings = model(x)
    embeddings = embeddings.float()
    sim = bank.similarities(embeddings)
    prop = propagate(bank.neighbours, indices, p.hops, p.propagator) if weight else None
    losses = invp_loss(
        sim,
        indices,
        prop,
        temperature=p.temperature,
        n_background=p.n_background,
        n_pos=p.n_pos,
        weight=weight,
        positives=p.positives,
        background=p.background,
        eps=p.loss_eps,
    )
    optimizer.zero_grad(set_to_none=True)
    (losses.total * loss_scale).backward()
    optimizer.step()
    bank.update(
        indices,
        embeddings.detach(),
        sim.detach(),
        p.bank_momentum,
        all_gather_rows,
        refresh_table=refreshes_online(cfg),
    )
    return InvPLoss(*(loss.detach() for loss in losses))


def check_fits(cfg: Config, n: int, world_size: int = 1) -> None:
    """Params that only make sense against the dataset's size (and the number of
    processes), checked before any work."""
    p = cfg.pretrain
    if p.batch_size < world_size:
        raise InvpropError(
            f"params: pretrain.batch_size = {p.batch_size} is smaller than the {world_size} "
            "training processes; each needs at least one image of every batch"
        )
    if p.n_background > n:
        raise InvpropError(
            f"params: pretrain.n_background = {p.n_background} is larger than the memory bank "
            f"({n} train images); lower it to at most {n}"
        )
    if p.k + 1 >= n:
        raise InvpropError(f"params: pretrain.k = {p.k} needs more than {p.k + 1} images")
    if p.batch_size > n:
        raise InvpropError(
            f"params: pretrain.batch_size = {p.batch_size} exceeds the {n} train images"
        )


def _last_state(cfg: Config, run: TrainingRun) -> dict[str, Any] | None:
    """The state of `run`'s last.pt (or its last good snapshot when last.pt is damaged)
    when it was trained with these params, else None (the reason logged)."""
    last = run.last
    if not last.exists():
        return None
    try:
        state = load_checkpoint(last)
    except InvpropError as exc:
        snapshots = [path for _, path in reversed(run.snapshots())]
        LOG.warning(f"{exc}")
        for snapshot in snapshots:
            try:
                state = load_checkpoint(snapshot)
            except InvpropError:
                continue
            LOG.warning(f"resuming from the last good snapshot {snapshot} instead")
            break
        else:
            LOG.warning(f"no usable snapshot in {run.checkpoints} either")
            return None
    if state["params_hash"] != training_hash(cfg):
        LOG.info(f"params changed since {last} was written; not resuming from it")
        return None
    return state


def resume_state(cfg: Config, run: TrainingRun, ranks: Ranks) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start afresh, with the in-progress folder
    ready for training. Rank 0 chooses: the interrupted training of these params first,
    then the finished run of these params (a rerun: nothing left to train), else an empty
    folder; the other ranks then read what it chose."""
    if not ranks.is_main:
        barrier()
        return _last_state(cfg, run.training())
    state = _last_state(cfg, run.training())
    if state is None:
        state = _last_state(cfg, run)
        if state is not None:
            run.continue_finished()
        else:
            run.discard_in_progress()
    barrier()
    return state


def monitor_knn(
    encoder: Encoder,
    bank: MemoryBank,
    train_labels: torch.Tensor,
    prepared: PreparedDataset,
    cfg: Config,
    device: torch.device,
) -> float:
    """The authors' kNN monitor: clean test embeddings against the memory bank (K=200)."""
    _, test_embeddings = extract(
        encoder, prepared.test, prepared.meta, cfg, device, cfg.embed.batch_size
    )
    result = knn_accuracy(
        bank.vectors,
        train_labels.to(device),
        test_embeddings.to(device),
        torch.as_tensor(prepared.test.labels).to(device),
        [MONITOR_K],
        MONITOR_TEMPERATURE,
        len(prepared.classes),
    )
    return result[MONITOR_K]["top1"]


TableRebuild = Callable[[Encoder, MemoryBank, PreparedDataset, Config, torch.device], None]
# pretrain.table_refresh -> the table's rebuild at the end of each epoch; None for "online",
# whose rows are refreshed in each step instead (MemoryBank.update).
TABLE_REFRESHES: Registry[TableRebuild | None] = Registry("table refresh", names.TABLE_REFRESHES)
TABLE_REFRESHES.add("online", None)


@TABLE_REFRESHES.register("bank")
def _rebuild_from_bank(
    encoder: Encoder, bank: MemoryBank, prepared: PreparedDataset, cfg: Config, device: torch.device
) -> None:
    """Exact k-NN of the bank itself."""
    bank.rebuild_table()


@TABLE_REFRESHES.register("clean")
def _rebuild_from_clean_embeddings(
    encoder: Encoder, bank: MemoryBank, prepared: PreparedDataset, cfg: Config, device: torch.device
) -> None:
    """Exact k-NN of clean embeddings of the train split by the current network."""
    _, embeddings = extract(
        encoder, prepared.train, prepared.meta, cfg, device, cfg.embed.batch_size
    )
    bank.rebuild_table(torch.nn.functional.normalize(embeddings.to(device), dim=1))


def refreshes_online(cfg: Config) -> bool:
    """Whether the table is refreshed row by row in each step, not rebuilt once per epoch.

    With InvP off the table feeds no loss and is kept only for its purity figure, so it is
    refreshed online, at no cost, whatever pretrain.table_refresh says: the baseline does
    not pay for a rebuild it never uses.
    """
    return TABLE_REFRESHES[cfg.pretrain.table_refresh] is None or not cfg.pretrain.invp


def rebuild_table(
    encoder: Encoder,
    bank: MemoryBank,
    prepared: PreparedDataset,
    cfg: Config,
    device: torch.device,
) -> None:
    """The once-per-epoch table of pretrain.table_refresh (TABLE_REFRESHES)."""
    rebuild = TABLE_REFRESHES[cfg.pretrain.table_refresh]
    if rebuild is None:
        raise ValueError("the online table refresh has no per-epoch rebuild")
    rebuild(encoder, bank, prepared, cfg, device)


def train(cfg: Config, run: TrainingRun = PRETRAIN) -> dict[str, Any]:
    """Pretrain (or resume) and write last.pt, snapshots and final.pt; return the summary.

    Under torchrun every rank runs this: each trains on its share of every global batch,
    and rank 0 alone writes checkpoints and curves.
    """
    ranks = Ranks.from_env()
    device = rank_device(resolve_device(cfg.pretrain.device), ranks)
    with process_group(ranks, device):
        return _train(cfg, run, ranks, device)


def _train(cfg: Config, run: TrainingRun, ranks: Ranks, device: torch.device) -> dict[str, Any]:
    p = cfg.pretrain
    if p.threads:
        torch.set_num_threads(p.threads)
    prepared = prepared_dataset(cfg.data.name)
    data = train_source(prepared, cfg, device)
    check_fits(cfg, data.n, ranks.world_size)

    encoder = build_encoder(cfg).to(device)
    if uses_channels_last(cfg, device):
        encoder = encoder.to(memory_format=torch.channels_last)
    if ranks.distributed:  # before the optimizer, which must hold the synced layers' weights
        encoder = sync_batchnorm(encoder, device)
    bank = MemoryBank(data.n, cfg.model.dim, p.k).to(device)
    optimizer = make_optimizer(cfg, encoder)
    mean, std = input_normalisation(prepared.meta, cfg)
    preprocessing = image_preprocessing(cfg, prepared.shape, mean, std)
    state = TrainState(encoder, bank, optimizer, history=[], preprocessing=preprocessing)
    augment = BatchAugment(
        cfg.augment, cfg.data.image_size, mean, std, crop=not data.crops_in_workers
    ).to(device)

    previous = resume_state(cfg, run, ranks)
    checkpoints = run.training()  # published by run.publish() once training is done
    if previous is not None:
        state.restore(previous)
        LOG.info(f"resuming from epoch {state.epoch} of {p.epochs}")
    elif p.bank_init == "random":
        bank.init_random(torch.Generator(device=device).manual_seed(cfg.seed))
    else:
        # Training-mode BatchNorm, so bank entries are what a training step would store;
        # the pass also calibrates the running statistics the kNN monitor uses. Under DDP
        # every rank makes the whole pass (same weights, same batches): simple, and once.
        _, embeddings = extract(
            encoder,
            prepared.train,
            prepared.meta,
            cfg,
            device,
            cfg.embed.batch_size,
            batch_statistics=True,
        )
        bank.init_from(embeddings.to(device))
        LOG.info("bank and neighbour table filled by a forward pass of the initial network")
    broadcast_(bank.vectors, bank.neighbours)  # GPUs may differ in the last bit
    model: torch.nn.Module = encoder
    if ranks.distributed:  # DDP also starts every rank from rank 0's weights
        device_ids = [device] if device.type == "cuda" else None
        model = DistributedDataParallel(encoder, device_ids=device_ids)
    if p.compile:
        model = torch.compile(model)

    live = None
    if ranks.is_main:
        live = open_curves(run.curves)
        for row in state.history:  # replay, so the curves survive a resume
            log_row(live, row)

    global_sizes = batch_sizes(data.n, p.batch_size)
    batches_per_epoch = len(global_sizes)
    while state.epoch < p.epochs:
        epoch = state.epoch + 1
        weight = ramp_weight(epoch, p.ramp_epoch, p.lambda_inv) if p.invp else 0.0
        model.train()
        sums = torch.zeros(3, device=device)
        start = time.perf_counter()
        steps = track(
            data.batches(p.batch_size, cfg.seed, epoch, ranks.rank, ranks.world_size),
            f"epoch {epoch}/{p.epochs}",
            total=batches_per_epoch,
            images=lambda batch: len(batch[1]) * ranks.world_size,
            logger=LOG,
        )
        for step_in_epoch, (images, indices) in enumerate(steps):
            lr = learning_rate(
                cfg, state.epoch * batches_per_epoch + step_in_epoch, batches_per_epoch
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            # This rank's share of the global batch mean (1 for a single process).
            share = len(indices) / global_sizes[step_in_epoch]
            losses = training_step(
                model,
                bank,
                optimizer,
                augment,
                images,
                indices,
                cfg,
                epoch,
                weight,
                loss_scale=share * ranks.world_size,
            )
            sums += torch.stack(losses) * share
        seconds = time.perf_counter() - start
        table_seconds = 0.0
        if not refreshes_online(cfg):  # every rank: all hold the same bank
            table_start = time.perf_counter()
            rebuild_table(encoder, bank, prepared, cfg, device)
            broadcast_(bank.neighbours)
            table_seconds = time.perf_counter() - table_start
        all_reduce_sum(sums)
        means = (sums / batches_per_epoch).tolist()  # one host sync per epoch
        if not all(math.isfinite(v) for v in means):
            raise InvpropError(
                f"the loss became {means[0]} in epoch {epoch}; stopped without saving it. "
                f"The last good checkpoint ({checkpoints.last}, epoch {state.epoch}) is kept; "
                "lower pretrain.lr or use precision fp32"
            )
        state.epoch = epoch
        row = {
            "epoch": epoch,
            "loss": means[0],
            "loss_instance": means[1],
            "loss_invariance": means[2],
            "lr": lr,
            "images_per_second": data.n / seconds,
            "epoch_seconds": seconds,
            "table_seconds": table_seconds,
        }
        # The table the next epoch propagates over; labels only measure it.
        purity = table_purity(bank.neighbours, data.labels.to(device))
        if purity is not None:
            row["table_purity"] = purity
        state.history.append(row)
        if not ranks.is_main:  # the others' bank and weights equal rank 0's
            continue
        if p.monitor_knn:
            row["knn_bank_top1"] = monitor_knn(encoder, bank, data.labels, prepared, cfg, device)
        log_row(live, row)
        LOG.info(
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
        checkpoint = state.to_checkpoint(cfg)
        # The snapshot first: until last.pt says this epoch is done, a restart redoes the
        # epoch and so rewrites a snapshot that a kill cut short.
        if epoch in p.snapshot_epochs:
            save_checkpoint(checkpoints.snapshot(epoch), checkpoint)
        save_checkpoint(checkpoints.last, checkpoint)

    if live is not None:
        live.end()
    bank_digests = gather_objects(bank.digest())
    if len(set(bank_digests)) > 1:  # every rank applied the same gathered updates
        raise InvpropError(
            f"the ranks' memory banks differ at the end of training (sha256 {bank_digests}); "
            "this is a bug in invprop's DDP: please report it. Nothing was published"
        )
    if ranks.is_main:
        save_checkpoint(checkpoints.final, state.to_checkpoint(cfg))
        run.publish()
    last = state.history[-1]
    summary = {
        "epochs": state.epoch,
        "device": str(device),
        "train_images": data.n,
        "final_loss": last["loss"],
        "knn_bank_top1": last.get("knn_bank_top1"),
        # Per epoch, so that `dvc exp show` carries them for every experiment of a study.
        "table_purity": [r.get("table_purity") for r in state.history],
        # Timings of the epochs this run trained (a resumed run's earlier epochs are not
        # timed in checkpoints); images_per_second is the last of them, None if none.
        "images_per_second": last.get("images_per_second"),
        "seconds": sum(r.get("epoch_seconds", 0.0) for r in state.history),
        "table_seconds": sum(r.get("table_seconds", 0.0) for r in state.history),
        # DDP: every rank ended with this same bank (checked above).
        "ranks": ranks.world_size,
        "bank_sha256": bank_digests[0],
    }
    return summary
