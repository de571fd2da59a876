"""The encoder InvP trains: backbone -> pooled features -> head -> L2-normalised embeddings."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from invprop.models.backbones import build_backbone
from invprop.models.heads import head_builder

__all__ = ["Encoder", "num_parameters"]


class Encoder(nn.Module):
    """Backbone + projection head.

    Shapes: ``x [B, C, H, W]``; ``features(x) [B, F]`` (pooled backbone output, in the
    backbone's dtype); ``forward(x) [B, dim]`` L2-normalised float32 embeddings (normalised in
    fp32 even under bf16 autocast, since the bank and the similarities are fp32).
    """

    def __init__(
        self, backbone: str, in_channels: int, head: str, dim: int, head_init: str = "torch"
    ) -> None:
        super().__init__()
        make_head = head_builder(head, head_init)  # the names are checked before building
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.backbone = build_backbone(backbone, in_channels)
        self.feature_dim: int = self.backbone.feature_dim
        self.dim = dim
        self.head = make_head(self.feature_dim, dim)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def project(self, features: Tensor) -> Tensor:
        """Head + L2 normalisation of given backbone features."""
        return F.normalize(self.head(features).float(), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.backbone(x))

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [B, F], embeddings [B, dim])`` with a single backbone pass."""
        features = self.backbone(x)
        return features, self.project(features)


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
