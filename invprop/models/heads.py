"""Projection heads, registered by name: ``build_head(kind, in_dim, dim, init)``.

Heads and their initialisations are registered under the names of ``invprop.names.HEADS``
and ``invprop.names.HEAD_INITS``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from invprop import names
from invprop.registry import Registry

__all__ = ["HEADS", "HEAD_INITS", "HeadBuilder", "build_head", "head_builder"]

HeadBuilder = Callable[[int, int], nn.Module]
HEADS: Registry[HeadBuilder] = Registry("head", names.HEADS)


@HEADS.register("linear")
def _linear_head(in_dim: int, dim: int) -> nn.Module:
    return nn.Linear(in_dim, dim)


@HEADS.register("mlp_no_bn")
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


@HEADS.register("mlp_hidden_bn")
def _mlp_hidden_bn_head(in_dim: int, dim: int) -> nn.Module:
    # The authors' head with a BatchNorm on the hidden layer (SimCLR's projection head).
    return nn.Sequential(
        nn.Linear(in_dim, in_dim),
        nn.BatchNorm1d(in_dim),
        nn.ReLU(inplace=True),
        nn.Linear(in_dim, dim),
    )


@HEADS.register("mlp_hidden_out_bn")
def _mlp_hidden_out_bn_head(in_dim: int, dim: int) -> nn.Module:
    # The hidden-BN head with a BatchNorm on its output too (as SimSiam and MoCo v3 do):
    # embeddings are centred over the batch, so they spread out from the first step instead
    # of starting almost collinear (mean cosine ~0.99 for a fresh small_cnn + MLP head).
    return nn.Sequential(_mlp_hidden_bn_head(in_dim, dim), nn.BatchNorm1d(dim, affine=False))


HeadInit = Callable[[nn.Module], None]
# How a head's Linear layers are initialised once built; "torch" (None) keeps PyTorch's default.
HEAD_INITS: Registry[HeadInit | None] = Registry("head initialisation", names.HEAD_INITS)
HEAD_INITS.add("torch", None)


@HEAD_INITS.register("xavier_uniform")
def _xavier_uniform(head: nn.Module) -> None:
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def head_builder(kind: str, init: str = "torch") -> HeadBuilder:
    """``make(in_dim, dim)`` building head `kind` initialised by `init` (see `build_head`);
    unknown names fail here, before anything is built."""
    builder, initialise = HEADS[kind], HEAD_INITS[init]

    def make(in_dim: int, dim: int) -> nn.Module:
        head = builder(in_dim, dim)
        if initialise is not None:
            initialise(head)
        return head

    return make


def build_head(kind: str, in_dim: int, dim: int, init: str = "torch") -> nn.Module:
    """Projection head ``in_dim -> dim``: ``linear``; ``mlp_no_bn``, the authors' Linear-ReLU-Linear
    (hidden width ``in_dim``, no BatchNorm); ``mlp_hidden_bn``, the same with a BatchNorm
    before the ReLU; ``mlp_hidden_out_bn``, that with a BatchNorm on the output as well.

    ``init``: ``torch`` keeps PyTorch's default for its Linear layers; ``xavier_uniform``
    gives them Xavier-uniform weights and zero biases, as the authors' ResNet-50 does
    (models/resnet.py:139-141, WangFeng18/InvariancePropagation@cad924e; their CIFAR
    ResNet-18, models/resnet_cifar.py, keeps PyTorch's default).
    """
    return head_builder(kind, init)(in_dim, dim)
