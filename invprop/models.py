"""Backbones (by registry), projection heads and the encoder that InvP trains.

``Encoder(backbone, in_channels, head, dim, head_init)`` is backbone -> pooled features
``[B, F]`` -> head -> L2-normalised embeddings ``[B, dim]``. The pooled features are what
the linear probe, the kNN evaluation and transfer use; the embeddings are what the memory
bank stores.

Backbones are registered by name with ``@register_backbone("name")``; a builder takes the
number of input channels and returns a module ``[B, C, H, W] -> [B, F]`` with an integer
attribute ``feature_dim = F``. ResNets come from torchvision (not re-implemented):

* ``resnet18_cifar``: ResNet-18 with the CIFAR stem of the authors' code (3x3 stride-1 conv,
  no max-pool), 512-d; the backbone of the paper's CIFAR experiments.
* ``resnet50``: the standard ResNet-50 (7x7 stride-2 stem and max-pool), 2048-d; ImageNet.
* ``small_cnn``: four conv-BN-ReLU layers and global average pooling, 256-d, ~0.39M
  parameters; sized for the 2-core CPU default on Fashion-MNIST (28x28x1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "HEADS",
    "HEAD_INITS",
    "Encoder",
    "build_backbone",
    "build_head",
    "num_parameters",
    "register_backbone",
]

BackboneBuilder = Callable[[int], nn.Module]
BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator adding ``builder(in_channels) -> module`` to ``BACKBONES`` under ``name``."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = builder
        return builder

    return decorator


def _unknown(kind: str, name: str, allowed) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(allowed))}")


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """Instantiate a registered backbone; the result has ``feature_dim``."""
    if name not in BACKBONES:
        raise _unknown("backbone", name, BACKBONES)
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    module = BACKBONES[name](in_channels)
    if not isinstance(getattr(module, "feature_dim", None), int):
        raise TypeError(f"backbone {name!r} does not set an integer feature_dim")
    return module


def _stem_conv(in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, kernel_size, stride, kernel_size // 2, bias=False)
    # the initialisation torchvision's ResNet gives its own convolutions
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


@register_backbone("resnet18_cifar")
def resnet18_cifar(in_channels: int) -> nn.Module:
    """ResNet-18, CIFAR stem (3x3 stride 1, no max-pool): 32x32 -> 4x4 at layer4, 512-d."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = _stem_conv(in_channels, 3, 1)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.feature_dim = 512
    return model


@register_backbone("resnet50")
def resnet50(in_channels: int) -> nn.Module:
    """Standard ResNet-50 (ImageNet stem), 2048-d."""
    model = torchvision.models.resnet50(weights=None)
    if in_channels != 3:
        model.conv1 = _stem_conv(in_channels, 7, 2)
    model.fc = nn.Identity()
    model.feature_dim = 2048
    return model


class SmallCNN(nn.Sequential):
    """conv3x3-BN-ReLU x 4 (strides 1, 2, 2, 1; widths 32, 64, 128, 256) + global average pool.

    28x28 input -> 7x7x256 -> 256-d. Full resolution is kept only for the cheap first layer;
    the widest layer works at 7x7, where most of the parameters sit at little compute.
    """

    widths = (32, 64, 128, 256)
    strides = (1, 2, 2, 1)

    def __init__(self, in_channels: int) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for width, stride in zip(self.widths, self.strides, strict=True):
            layers += [
                nn.Conv2d(c, width, 3, stride, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            c = width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feature_dim = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_backbone("small_cnn")
def small_cnn(in_channels: int) -> nn.Module:
    return SmallCNN(in_channels)


def _linear_head(in_dim: int, dim: int) -> nn.Module:
    return nn.Linear(in_dim, dim)


def _mlp_no_bn_head(in_dim: int, dim: int) -> nn.Module:
    # The authors' non-linear head, `--nonlinearhead 1`: Linear-ReLU-Linear with a hidden
    # width equal to the feature width and no BatchNorm; 512-512-128 on ResNet-18-CIFAR
    # (models/resnet_cifar.py) and 2048-2048-128 on ResNet-50 (models/resnet.py),
    # WangFeng18/InvariancePropagation@cad924e.
    return nn.Sequential(
        nn.Linear(in_dim, in_dim),
        nn.ReLU(inplace=True),
        nn.Linear(in_dim, dim),
    )


def _mlp_hidden_bn_head(in_dim: int, dim: int) -> nn.Module:
    # The authors' head with a BatchNorm on the hidden layer (SimCLR's projection head).
    return nn.Sequential(
        nn.Linear(in_dim, in_dim),
        nn.BatchNorm1d(in_dim),
        nn.ReLU(inplace=True),
        nn.Linear(in_dim, dim),
    )


def _mlp_hidden_out_bn_head(in_dim: int, dim: int) -> nn.Module:
    # The hidden-BN head with a BatchNorm on its output too (as SimSiam and MoCo v3 do):
    # embeddings are centred over the batch, so they spread out from the first step instead
    # of starting almost collinear (mean cosine ~0.99 for a fresh small_cnn + MLP head).
    return nn.Sequential(_mlp_hidden_bn_head(in_dim, dim), nn.BatchNorm1d(dim, affine=False))


HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": _linear_head,
    "mlp_no_bn": _mlp_no_bn_head,
    "mlp_hidden_bn": _mlp_hidden_bn_head,
    "mlp_hidden_out_bn": _mlp_hidden_out_bn_head,
}


HEAD_INITS = ("torch", "xavier_uniform")


def build_head(kind: str, in_dim: int, dim: int, init: str = "torch") -> nn.Module:
    """Projection head ``in_dim -> dim``: ``linear``; ``mlp_no_bn``, the authors' Linear-ReLU-Linear
    (hidden width ``in_dim``, no BatchNorm); ``mlp_hidden_bn``, the same with a BatchNorm
    before the ReLU; ``mlp_hidden_out_bn``, that with a BatchNorm on the output as well.

    ``init``: ``torch`` keeps PyTorch's default for its Linear layers; ``xavier_uniform``
    gives them Xavier-uniform weights and zero biases, as the authors' ResNet-50 does
    (models/resnet.py:139-141, WangFeng18/InvariancePropagation@cad924e; their CIFAR
    ResNet-18, models/resnet_cifar.py, keeps PyTorch's default).
    """
    if kind not in HEADS:
        raise _unknown("head", kind, HEADS)
    if init not in HEAD_INITS:
        raise _unknown("head initialisation", init, HEAD_INITS)
    head = HEADS[kind](in_dim, dim)
    if init == "xavier_uniform":
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
    return head


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
        if head not in HEADS:  # check the names before building anything
            raise _unknown("head", head, HEADS)
        if head_init not in HEAD_INITS:
            raise _unknown("head initialisation", head_init, HEAD_INITS)
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.backbone = build_backbone(backbone, in_channels)
        self.feature_dim: int = self.backbone.feature_dim
        self.dim = dim
        self.head = build_head(head, self.feature_dim, dim, head_init)

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
