"""Prepared data as torch tensors: whole uint8 arrays for the GPU, or a streaming Dataset.

Kept apart from `prepared` so that preparing and inspecting data never imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

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
