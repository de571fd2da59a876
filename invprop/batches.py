"""How pretraining reads the train split: seeded batches of sample indices, sharded by rank.

Every epoch is a seeded permutation of the train split cut into global batches; with
several ranks (torchrun) each rank takes its contiguous share of every global batch, so the
same samples meet in the same step whatever the number of ranks. A train source yields,
for this rank, (uint8 images [b, C, H, W] on the training device, their global indices [b]
on the same device); augmentation happens later, batched on that device.

Two sources: `TrainImages` holds an array dataset on the device; `FolderImages` decodes an
image folder ("files" format, e.g. ImageNet) batch by batch in DataLoader workers and takes
each image's random crop there, from the whole image. Batches and crops are functions of
(seed, epoch, index), so a run does not depend on the number of workers or ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch

from invprop.augment import CroppedImageFiles
from invprop.data.tensors import as_tensor, convert_channels, load_batches

if TYPE_CHECKING:
    from invprop.config import Config
    from invprop.data.prepared import PreparedDataset

__all__ = [
    "FolderImages",
    "TrainImages",
    "TrainSource",
    "batch_sizes",
    "epoch_batches",
    "rank_shard",
    "train_source",
]


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """How every epoch is cut: n // B near-equal batches (none smaller than B/2), the
    larger ones first."""
    count = max(1, n // batch_size)
    size, larger = divmod(n, count)
    return [size + 1] * larger + [size] * (count - larger)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """A seeded permutation of 0..n-1 cut into batches of `batch_sizes(n, batch_size)`."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_sizes(n, batch_size)))


def rank_shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch (shares differ by at most one)."""
    return torch.tensor_split(batch, world_size)[rank]


class TrainSource(Protocol):
    """What the training loop reads: the split's size, labels, and per-rank batches."""

    n: int
    labels: torch.Tensor
    # True: batches come already cropped to image_size (BatchAugment(..., crop=False)).
    crops_in_workers: bool

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TrainImages:
    """An array dataset's train split, held on the training device as uint8 in the model's
    channel count (Fashion-MNIST: 47 MB; CIFAR: 150 MB)."""

    crops_in_workers = False

    def __init__(self, prepared: PreparedDataset, cfg: Config, device: torch.device) -> None:
        self.images = convert_channels(as_tensor(prepared.train), cfg.data.channels).to(device)
        self.labels = torch.as_tensor(prepared.train.labels)
        self.n = self.images.shape[0]

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in epoch_batches(self.n, batch_size, seed, epoch):
            indices = rank_shard(batch, rank, world_size).to(self.images.device)
            yield self.images[indices], indices


class FolderImages:
    """An image folder's train split ("files" format), read batch by batch on the CPU in
    cfg.pretrain.num_workers DataLoader workers (0: in this process): each image decoded
    whole (at most augment.shorter_side on its short side when set), its random resized crop
    to image_size taken there (`CroppedImageFiles`: the box is the augmentation's, drawn for
    this image's own size), then the batch copied to the training device (pinned and
    non-blocking on CUDA), where `BatchAugment(..., crop=False)` does the rest."""

    crops_in_workers = True

    def __init__(self, prepared: PreparedDataset, cfg: Config, device: torch.device) -> None:
        self.split = prepared.train
        self.labels = torch.as_tensor(prepared.train.labels, dtype=torch.int64)
        self.n = len(self.split)
        self.cfg = cfg
        self.device = device

    def batches(
        self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        crops = CroppedImageFiles(
            self.split,
            cfg.data.channels,
            cfg.data.image_size,
            cfg.augment,
            seed,
            epoch,
            cfg.augment.shorter_side,
        )
        shards = [
            rank_shard(batch, rank, world_size)
            for batch in epoch_batches(self.n, batch_size, seed, epoch)
        ]
        yield from load_batches(crops, shards, self.device, cfg.pretrain.num_workers)


def train_source(prepared: PreparedDataset, cfg: Config, device: torch.device) -> TrainSource:
    """The train source for a prepared dataset: arrays on the device, or image files."""
    if prepared.format == "files":
        return FolderImages(prepared, cfg, device)
    return TrainImages(prepared, cfg, device)
