"""How pretraining reads the train split: seeded batches of sample indices, sharded by rank.

Every epoch is a seeded permutation of the train split cut into global batches; with
several ranks (torchrun) each rank takes its contiguous share of every global batch, so the
same samples meet in the same step whatever the number of ranks. A train source yields,
for this rank, (uint8 images [b, C, H, W] on the training device, their global indices [b]
on the same device); augmentation happens later, batched on that device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch

from invprop.errors import InvpropError

if TYPE_CHECKING:
    from invprop.config import Config
    from invprop.data.prepared import PreparedDataset

__all__ = [
    "TrainImages",
    "TrainSource",
    "batch_sizes",
    "epoch_batches",
    "rank_shard",
    "train_source",
]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """A seeded permutation of 0..n-1 cut into near-equal batches (none smaller than B/2)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(order, max(1, n // batch_size)))


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The size of every global batch `epoch_batches` cuts (the same in every epoch)."""
    count = max(1, n // batch_size)
    size, larger = divmod(n, count)
    return [size + 1] * larger + [size] * (count - larger)


def rank_shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch (shares differ by at most one)."""
    return torch.tensor_split(batch, world_size)[rank]


class TrainSource(Protocol):
    """What the training loop reads: the split's size, labels, and per-rank batches."""

    n: int
    labels: torch.Tensor

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TrainImages:
    """An array dataset's train split, held on the training device as uint8 in the model's
    channel count (Fashion-MNIST: 47 MB; CIFAR: 150 MB)."""

    def __init__(self, prepared: PreparedDataset, cfg: Config, device: torch.device) -> None:
        from invprop.data.tensors import as_tensor, convert_channels

        self.images = convert_channels(as_tensor(prepared.train), cfg.data.channels).to(device)
        self.labels = torch.as_tensor(prepared.train.labels)
        self.n = self.images.shape[0]

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in epoch_batches(self.n, batch_size, seed, epoch):
            indices = rank_shard(batch, rank, world_size).to(self.images.device)
            yield self.images[indices], indices


def train_source(prepared: PreparedDataset, cfg: Config, device: torch.device) -> TrainSource:
    """The train source for a prepared dataset: arrays on the device, or image files."""
    if prepared.format != "arrays":
        raise InvpropError(
            f"pretraining streams only array datasets so far; {prepared.name} is an "
            "image-folder index"
        )
    return TrainImages(prepared, cfg, device)
