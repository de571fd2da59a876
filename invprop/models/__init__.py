"""Backbones (by registry), projection heads and the encoder that InvP trains.

``Encoder(backbone, in_channels, head, dim, head_init)`` is backbone -> pooled features
``[B, F]`` -> head -> L2-normalised embeddings ``[B, dim]``. The pooled features are what
the linear probe, the kNN evaluation and transfer use; the embeddings are what the memory
bank stores.

``backbones`` holds the backbone registry and the built-in backbones, ``heads`` the heads,
``encoder`` the encoder. A backbone in a module of its own in this package is imported
below, which registers it; the stages list this folder as a whole among their
dependencies, so a new module here needs no dvc.yaml or Snakefile edit.
"""

from invprop.models.backbones import BACKBONES, BackboneBuilder, build_backbone, register_backbone
from invprop.models.encoder import Encoder, num_parameters
from invprop.models.heads import HEAD_INITS, HEADS, build_head, head_builder

__all__ = [
    "BACKBONES",
    "HEADS",
    "HEAD_INITS",
    "BackboneBuilder",
    "Encoder",
    "build_backbone",
    "build_head",
    "head_builder",
    "num_parameters",
    "register_backbone",
]
