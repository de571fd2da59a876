"""Backbones, registered by name: ``BACKBONES[name](in_channels)`` builds one.

A builder, registered with ``@register_backbone("name")`` under a name listed in
``invprop.names.BACKBONES``, takes the number of input channels and returns a module
``[B, C, H, W] -> [B, F]`` with an integer attribute ``feature_dim = F``. A backbone may
live here or in a module of its own in this package (imported by its ``__init__``; see
docs/extending.md). ResNets come from torchvision (not re-implemented):

* ``resnet18_cifar``: ResNet-18 with the CIFAR stem of the authors' code (3x3 stride-1 conv,
  no max-pool), 512-d; the backbone of the paper's CIFAR experiments.
* ``resnet50``: the standard ResNet-50 (7x7 stride-2 stem and max-pool), 2048-d; ImageNet.
* ``small_cnn``: four conv-BN-ReLU layers and global average pooling, 256-d, ~0.39M
  parameters; sized for the 2-core CPU default on Fashion-MNIST (28x28x1).
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from invprop import names
from invprop.registry import Registry

__all__ = ["BACKBONES", "BackboneBuilder", "SmallCNN", "build_backbone", "register_backbone"]

BackboneBuilder = Callable[[int], nn.Module]
BACKBONES: Registry[BackboneBuilder] = Registry("backbone", names.BACKBONES)
# Decorator adding ``builder(in_channels) -> module`` to ``BACKBONES`` under a declared name.
register_backbone = BACKBONES.register


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """Instantiate a registered backbone; the result has ``feature_dim``."""
    builder = BACKBONES[name]
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    module = builder(in_channels)
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
