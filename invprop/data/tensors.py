"""Prepared data as torch tensors: whole uint8 arrays for the GPU, or a streaming Dataset.

Kept apart from `prepared` so that preparing and inspecting data never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from invprop.config import AugmentConfig
from invprop.data.prepared import ImageFiles, Split, open_image, to_chw
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


class CroppedImageFiles(Dataset):
    """The training view of an image-file split: item i is (uint8 (C, size, size), i), the
    random resized crop of image i taken from the WHOLE decoded image, as the authors'
    torchvision ``RandomResizedCrop`` does on the full-resolution PIL image.

    The box is `invprop.augment.sample_params` for (seed, epoch, i) at the image's own size,
    so it is the same whichever worker, batch or rank decodes it; the crop is resized to
    ``size x size`` by PIL's bilinear resampling (torchvision's PIL path: crop, then resize).
    `shorter_side` (augment.shorter_side): first resize images whose shorter side is longer,
    keeping the aspect ratio and the whole image (faster decoding of large JPEGs); None
    crops from full resolution. The flip and the colour ops are left to `BatchAugment`.
    """

    def __init__(
        self,
        split: Split,
        channels: int,
        size: int,
        config: AugmentConfig,
        seed: int,
        epoch: int,
        shorter_side: int | None = None,
    ) -> None:
        if not isinstance(split.images, ImageFiles):
            raise TypeError("CroppedImageFiles reads image-file splits only")
        self.files, self.channels, self.size = split.images, channels, size
        self.config, self.seed, self.epoch = config, seed, epoch
        self.shorter_side = shorter_side

    def __len__(self) -> int:
        return len(self.files)

    def whole_image(self, index: int) -> Any:
        """Image `index` as the crops see it: whole, at most `shorter_side` on its short side."""
        from PIL import Image

        side = self.shorter_side
        image = open_image(
            self.files.path(index), self.channels, None if side is None else (side, side)
        )
        width, height = image.size
        if side is not None and min(width, height) > side:
            scale = side / min(width, height)
            target = (max(side, round(width * scale)), max(side, round(height * scale)))
            image = image.resize(target, Image.Resampling.BILINEAR)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        from invprop.augment import sample_params

        image = self.whole_image(index)
        width, height = image.size
        p = sample_params(self.seed, self.epoch, torch.tensor([index]), self.config, height, width)
        top, left, box_h, box_w = (int(v[0]) for v in (p.top, p.left, p.height, p.width))
        # crop, then resize: resizing with a box would read pixels beyond its edges
        box = (left, top, left + box_w, top + box_h)
        crop = image.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(to_chw(crop)), int(index)


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
