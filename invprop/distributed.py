"""torchrun support for pretraining: one process per device, every collective guarded.

Under `torchrun --nproc_per_node=N stages/pretrain.py` each process finds RANK, WORLD_SIZE
and LOCAL_RANK in its environment and joins a process group (NCCL on CUDA, gloo on the
CPU). Without them the run is one process: `Ranks()` says so, and every function here
returns its input unchanged without touching torch.distributed, so a single process needs
no process group and pays nothing.

What the training loop needs from the ranks: the bank rows of every rank's batch share
(`all_gather_rows`), epoch sums (`all_reduce_sum`), BatchNorm statistics of the global
batch (`sync_batchnorm`), and the weights and bank equal on every rank at the start
(`broadcast_`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

from invprop.errors import InvpropError
from invprop.slurm import Allocation, NodeTask

if TYPE_CHECKING:
    from invprop.config import Config

__all__ = [
    "CpuSyncBatchNorm",
    "Ranks",
    "all_gather_rows",
    "all_reduce_sum",
    "barrier",
    "broadcast_",
    "gather_objects",
    "process_group",
    "rank_device",
    "relaunched",
    "sync_batchnorm",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: the defaults)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, curves and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks torchrun announces in the environment; one process without them."""
        try:
            ranks = cls(
                int(os.environ.get("RANK", 0)),
                int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)),
            )
        except ValueError as exc:
            raise InvpropError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from exc
        if not 0 <= ranks.rank < ranks.world_size:
            raise InvpropError(f"RANK={ranks.rank} is outside WORLD_SIZE={ranks.world_size}")
        return ranks


def relaunched(stage: str, cfg: Config) -> bool:
    """Run `stage` again as DDP processes when `pretrain.processes` or `pretrain.nodes` ask
    for more than this process, with exactly this config; True once they have finished.

    One node: torchrun, one process per GPU (`processes`). Several nodes (a SLURM
    allocation): srun starts the stage once on every node, and each of those tasks starts
    torchrun for its node, with the rendezvous from SLURM's environment (invprop.slurm).
    So `dvc repro`, Snakemake and `invprop stage` start DDP from params, with their usual
    command. Under torchrun already (WORLD_SIZE set, e.g. a launch by hand) or with one
    process in all, returns False and the caller trains here.
    """
    p = cfg.pretrain
    if Ranks.from_env().distributed:
        return False
    task = NodeTask.from_env()
    if task is not None and task.nodes != p.nodes:
        raise InvpropError(
            f"this process is one of {task.nodes} tasks, one per node of a SLURM step, but "
            f"pretrain.nodes is {p.nodes}; set pretrain.nodes: {task.nodes} or start one task"
        )
    if p.nodes == 1 and p.processes == 1:
        return False
    allocation = None
    if p.nodes > 1 and task is None:
        allocation = Allocation.of_this_job()
        if len(allocation.hosts) != p.nodes:
            raise InvpropError(
                f"pretrain.nodes is {p.nodes} but SLURM job {allocation.job_id} has "
                f"{len(allocation.hosts)} nodes ({', '.join(allocation.hosts)}); "
                f"submit it with --nodes={p.nodes}"
            )
    # Written in the workspace, which every node sees (a cluster's shared file system).
    with tempfile.TemporaryDirectory(prefix=".invprop-launch-", dir=".") as folder:
        params = os.path.join(folder, "params.yaml")
        with open(params, "w") as file:
            yaml.safe_dump(cfg.to_dict(), file)
        stage_command = ["-m", "invprop.pipeline", stage, "--params", params]
        if task is not None:
            options = task.torchrun_options(p.processes)
        elif allocation is None:
            options = ["--standalone", f"--nproc_per_node={p.processes}"]
        else:
            command = allocation.srun_each_node([sys.executable, *stage_command])
            _run_launch(command, stage, f"its {p.nodes} nodes", Allocation.srun_env())
            return True
        command = [sys.executable, "-m", "torch.distributed.run", *options, *stage_command]
        _run_launch(command, stage, f"its {p.nodes * p.processes} processes")
    return True


def _run_launch(
    command: list[str], stage: str, where: str, env: dict[str, str] | None = None
) -> None:
    if subprocess.run(command, env=env).returncode != 0:
        raise InvpropError(
            f"the {stage} stage failed in one of {where} (its error is above); "
            "pretrain.processes: 1 and pretrain.nodes: 1 run it in this process"
        )


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: its own GPU (by LOCAL_RANK) on CUDA; the CPU is shared."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise InvpropError(
            f"LOCAL_RANK={ranks.local_rank} but this node has {torch.cuda.device_count()} "
            "GPUs; start at most one process per GPU (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the process group for the span of a run (nothing to do for one process)."""
    if not ranks.distributed:
        yield
        return
    if not dist.is_available():
        raise InvpropError("this torch build has no torch.distributed; run one process")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        dist.barrier()  # nobody leaves while rank 0 still writes the final checkpoint
    finally:
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's rows of `tensor`, concatenated in rank order (shares may differ in size).

    Not differentiable: it carries bank updates, which need no gradient.
    """
    if not _active():
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, counts, strict=True)])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over the ranks, in place."""
    if _active():
        dist.all_reduce(tensor)
    return tensor


def gather_objects(obj: object) -> list[object]:
    """`obj` of every rank, in rank order (picklable objects; [obj] for one process)."""
    if not _active():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        dist.barrier()


def broadcast_(*tensors: Tensor) -> None:
    """Overwrite `tensors` on every rank with rank 0's values."""
    if _active():
        for tensor in tensors:
            dist.broadcast(tensor, 0)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU (gloo) runs, where torch's SyncBatchNorm
    refuses to run. Same result as one process seeing the whole batch.

    Each rank computes its share's mean and biased variance (two-pass, so no cancellation),
    the ranks exchange them with a differentiable all-reduce, and the global moments are
    combined as in Chan et al.'s parallel variance. Gradients flow through the exchange, as
    in torch's SyncBatchNorm. Outside training (or with one process) it is plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = input.numel() // channels
        mean = input.mean(dims)
        var = input.var(dims, correction=0)
        # Row `rank` of a zero table; the differentiable sum over ranks fills every row.
        table = input.new_zeros(dist.get_world_size(), 2 * channels + 1)
        mine = torch.cat([mean, var, input.new_full((1,), float(count))])
        rank = torch.tensor([dist.get_rank()], device=input.device)
        table = all_reduce(table.index_copy(0, rank, mine[None]))
        means, variances, counts = table[:, :channels], table[:, channels:-1], table[:, -1:]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_var = (counts * (variances + (means - global_mean) ** 2)).sum(0) / total

        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            tracked = float(self.num_batches_tracked)
            momentum = 1.0 / tracked if self.momentum is None else self.momentum
            with torch.no_grad():  # as BatchNorm: the running variance is unbiased
                unbiased = global_var * total / (total - 1)
                self.running_mean.lerp_(global_mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)

        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - global_mean.view(shape)) * torch.rsqrt(global_var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm computing global-batch statistics across the ranks:
    torch's SyncBatchNorm on CUDA, `CpuSyncBatchNorm` on the CPU. Parameter and buffer
    names do not change, so checkpoints load into the plain network."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            synced = CpuSyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module
