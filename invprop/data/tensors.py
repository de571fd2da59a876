"""Prepared data as torch tensors: whole uint8 arrays for the GPU, or a streaming Dataset.

Kept apart from `prepared` so that preparing and inspecting data never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from invprop.data.prepared import ImageFiles, Split
from invprop.errors import InvpropError

# ITU-R BT.601 luma weights (as PIL's convert("L") and torchvision's rgb_to_grayscale).
LUMA = (0.299, 0.587, 0.114)


def as_tensor(split: Split) -> torch.Tensor:
    """The split's images as one uint8 (N, C, H, W) CPU tensor (copied out of the memmap).

    Only for "arrays" datasets; a "files" dataset streams through `ImageFileDataset`.
    """
    if isinstance(split.images, ImageFiles):
        raise InvpropError(
            f"the {split.name} split is an image-file index ({len(split)} files), too large to "
            "hold as one tensor; read it through invprop.data.ImageFileDataset"
        )
    return torch.from_numpy(np.array(split.images, dtype=np.uint8, copy=True))


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (..., C, H, W) with C in {1, 3} converted to `channels`.

    1 -> 3 repeats the grey plane; 3 -> 1 takes BT.601 luma, rounded. Same C: returned as is.
    Works on any device and on single images or batches.
    """
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(3, 1, 1)
        luma = (images.float() * weights).sum(dim=-3, keepdim=True)
        return luma.round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have} channels to {channels} (only 1 <-> 3)")


class ImageFileDataset(Dataset):
    """Map-style dataset over a split: item i is (uint8 (C, H, W) tensor, i).

    Meant for "files" splits, which decode one image per item so DataLoader workers can
    stream them; also accepts "arrays" splits. `channels` converts to the model's input
    channels (data.channels); None keeps the prepared ones. The index lets training address
    the memory bank.
    """

    def __init__(self, split: Split, channels: int | None = None) -> None:
        self.split = split
        self.channels = channels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.split.images[index], dtype=np.uint8, copy=True))
        if self.channels is not None:
            image = convert_channels(image, self.channels)
        return image, int(index)


def decode_batches(
    split: Split,
    channels: int,
    index_batches: Sequence[torch.Tensor | np.ndarray],
    device: torch.device,
    num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode the images of each batch of split indices, in the order given: `load_batches`
    of an `ImageFileDataset` (uint8 images with `channels`, at the split's shape)."""
    yield from load_batches(ImageFileDataset(split, channels), index_batches, device, num_workers)


def load_batches(
    dataset: Dataset,
    index_batches: Sequence[torch.Tensor | np.ndarray],
    device: torch.device,
    num_workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The items of each batch of indices of `dataset` (items: (uint8 image, index)), in the
    order given.

    Yields (uint8 images [b, C, H, W], their indices [b] int64), both on `device`. Items are
    made on the CPU in `num_workers` DataLoader workers (0: in this process); batches come
    back in order whatever the worker count. On CUDA they are pinned and copied without
    blocking the host, so the copies overlap the GPU's work. A file that cannot be decoded
    raises InvpropError naming it, in one line, as it would without workers.
    """
    pin = device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_sampler=[batch.tolist() for batch in index_batches],
        num_workers=num_workers,
        pin_memory=pin,
    )
    worker_error = None
    try:
        for images, indices in loader:
            yield images.to(device, non_blocking=pin), indices.to(device, non_blocking=pin)
    except InvpropError as error:
        if num_workers == 0:
            raise
        # DataLoader re-raises a worker's error with the worker's whole traceback as its
        # message ("Caught InvpropError in DataLoader worker process 1. Original ...");
        # the last line is "invprop.errors.InvpropError: <the error's own message>".
        worker_error = str(error).rstrip().rpartition("\n")[2].partition(": ")[2]
        # That traceback holds the loader in a reference cycle; left to the garbage
        # collector, the workers' shutdown waits out a 5 s timeout per worker.
        error.__traceback__ = None
    if worker_error is not None:
        raise InvpropError(worker_error)
