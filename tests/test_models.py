"""Tests for invprop.models: registry, shapes, stems, heads, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from invprop.models import (
    BACKBONES,
    HEADS,
    Encoder,
    build_backbone,
    build_head,
    num_parameters,
    register_backbone,
)

FEATURE_DIMS = {"small_cnn": 256, "resnet18_cifar": 512, "resnet50": 2048}


def test_registry_lists_the_backbones():
    assert set(FEATURE_DIMS) <= set(BACKBONES)
    assert set(HEADS) == {"linear", "mlp_no_bn", "mlp_hidden_bn", "mlp_hidden_out_bn"}


@pytest.mark.parametrize(("channels", "size", "head"), [(1, 28, "linear"), (3, 32, "mlp_no_bn")])
@pytest.mark.parametrize("backbone", list(FEATURE_DIMS))
def test_encoder_shapes_and_unit_norms(backbone, channels, size, head):
    torch.manual_seed(0)
    batch = 2 if backbone.startswith("resnet") else 4
    encoder = Encoder(backbone, channels, head, 16)
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        features, z = encoder.embed(x)  # training mode (batch-statistics BN)
        assert encoder.feature_dim == FEATURE_DIMS[backbone] == encoder.backbone.feature_dim
        assert features.shape == (batch, FEATURE_DIMS[backbone])
        assert z.shape == (batch, 16) and z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=1), torch.ones(batch))
        encoder.eval()  # deterministic BN: the three entry points must agree
        features, z = encoder.embed(x)
        torch.testing.assert_close(encoder(x), z)
        torch.testing.assert_close(encoder.project(encoder.features(x)), z)


def test_cifar_stem_is_stride_one_without_max_pool():
    net = build_backbone("resnet18_cifar", 3)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == 3
    assert isinstance(net.maxpool, nn.Identity) and isinstance(net.fc, nn.Identity)
    seen = {}

    def record(module, inputs, output):
        seen["layer4"] = output.shape

    net.layer4.register_forward_hook(record)
    net.eval()(torch.zeros(1, 3, 32, 32))
    assert seen["layer4"][-2:] == (4, 4)  # 32 / 8: only layers 2-4 downsample
    assert build_backbone("resnet18_cifar", 1).conv1.in_channels == 1


def test_resnet50_keeps_the_standard_stem_and_adapts_channels():
    net = build_backbone("resnet50", 3)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    grey = build_backbone("resnet50", 1)
    assert grey.conv1.in_channels == 1 and grey.conv1.stride == (2, 2)


def test_small_cnn_parameter_count():
    n = num_parameters(build_backbone("small_cnn", 1))
    assert 300_000 <= n <= 600_000, n
    assert num_parameters(build_backbone("small_cnn", 3)) > n


def _plain_mlp(x, w1, b1, w2, b2, hidden_bn=False, out_bn=False, bn=None):
    """The three MLP heads written out: x W1^T + b1 [-> BN] -> ReLU -> W2^T + b2 [-> BN]."""

    def batch_norm(h, weight=None, bias=None):  # training mode: biased batch variance
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
        return h if weight is None else h * weight + bias

    h = x @ w1.T + b1
    if hidden_bn:
        h = batch_norm(h, *bn)
    out = torch.relu(h) @ w2.T + b2
    return batch_norm(out) if out_bn else out


@pytest.mark.parametrize(
    ("kind", "layers"),
    [
        ("mlp_no_bn", [nn.Linear, nn.ReLU, nn.Linear]),
        ("mlp_hidden_bn", [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]),
        ("mlp_hidden_out_bn", [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]),
    ],
)
@pytest.mark.parametrize(("in_dim", "dim"), [(512, 128), (2048, 128), (64, 16)])
def test_mlp_heads_match_a_plain_reference(kind, layers, in_dim, dim):
    """Layer structure (the authors' 512-512-128 and 2048-2048-128 for --nonlinearhead 1,
    with or without BatchNorms) and a forward on seeded weights against plain tensor maths."""
    torch.manual_seed(0)
    head = build_head(kind, in_dim, dim)
    flat = [m for m in head.modules() if not isinstance(m, nn.Sequential)]
    assert [type(m) for m in flat] == layers
    linears = [m for m in flat if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(in_dim, in_dim), (dim, in_dim)]
    bns = [m for m in flat if isinstance(m, nn.BatchNorm1d)]
    for bn in bns:  # non-trivial affine parameters, so the reference must apply them
        if bn.affine:
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(32, in_dim)
    (w1, b1), (w2, b2) = ((m.weight, m.bias) for m in linears)
    hidden = (bns[0].weight, bns[0].bias) if kind != "mlp_no_bn" else None
    expected = _plain_mlp(
        x,
        w1,
        b1,
        w2,
        b2,
        hidden_bn=kind != "mlp_no_bn",
        out_bn=kind == "mlp_hidden_out_bn",
        bn=hidden,
    )
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected.detach(), rtol=1e-4, atol=1e-4)


def test_linear_head():
    head = build_head("linear", 512, 128)
    assert isinstance(head, nn.Linear) and tuple(head.weight.shape) == (128, 512)


@pytest.mark.parametrize("kind", ["linear", "mlp_no_bn", "mlp_hidden_bn"])
def test_xavier_head_initialisation_is_the_authors(kind):
    """models/resnet.py:139-141 (cad924e): every Linear Xavier-uniform, biases zero."""
    torch.manual_seed(0)
    head = build_head(kind, 256, 32, "xavier_uniform")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform: U(-bound, bound)
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.9 * bound  # spread over the whole interval
        assert linear.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    torch_default = build_head(kind, 256, 32)  # PyTorch's: U(+-1/sqrt(fan_in)), biases too
    assert all(m.bias.abs().sum() > 0 for m in torch_default.modules() if isinstance(m, nn.Linear))
    encoder = Encoder("small_cnn", 1, kind, 32, head_init="xavier_uniform")
    assert all(
        torch.equal(m.bias, torch.zeros_like(m.bias))
        for m in encoder.head.modules()
        if isinstance(m, nn.Linear)
    )
    with pytest.raises(ValueError, match=r"unknown head initialisation 'normal'.*torch"):
        Encoder("small_cnn", 1, kind, 32, head_init="normal")


def test_build_encoder_uses_the_configured_head_initialisation():
    from invprop.checkpoint import build_encoder
    from invprop.config import config_from_dict

    cfg = config_from_dict({"model": {"head": "linear", "head_init": "xavier_uniform"}})
    head = build_encoder(cfg).head
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    assert build_encoder(config_from_dict({"model": {"head": "linear"}})).head.bias.abs().sum() > 0


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'.*resnet18_cifar.*small_cnn"):
        Encoder("vgg", 3, "mlp_no_bn", 128)
    with pytest.raises(ValueError, match=r"unknown head 'deep'.*linear, mlp_hidden_bn"):
        Encoder("small_cnn", 3, "deep", 128)
    with pytest.raises(ValueError, match=r"unknown head 'deep'"):
        build_head("deep", 8, 4)


def test_register_backbone_decorator(monkeypatch):
    # Only a name invprop/names.py declares registers (tests/test_names.py); declared here
    # for the test alone.
    monkeypatch.setattr(BACKBONES, "allowed", (*BACKBONES.allowed, "_test_tiny"))

    @register_backbone("_test_tiny")
    def tiny(in_channels: int) -> nn.Module:
        net = nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.feature_dim = 8
        return net

    try:
        assert BACKBONES["_test_tiny"] is tiny
        assert Encoder("_test_tiny", 2, "linear", 4)(torch.randn(3, 2, 9, 9)).shape == (3, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("_test_tiny")(tiny)
    finally:
        del BACKBONES["_test_tiny"]


@pytest.mark.parametrize(
    ("backbone", "channels", "size"), [("small_cnn", 1, 28), ("resnet18_cifar", 3, 32)]
)
def test_backward_reaches_every_parameter(backbone, channels, size):
    torch.manual_seed(0)
    encoder = Encoder(backbone, channels, "mlp_hidden_bn", 8)
    z = encoder(torch.randn(4, channels, size, size))
    (z @ torch.randn(8, 1)).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_num_parameters_counts_trainable():
    net = nn.Linear(10, 5)
    assert num_parameters(net) == 55
    net.bias.requires_grad_(False)
    assert num_parameters(net, trainable_only=True) == 50


def test_output_bn_head_centres_embeddings_over_the_batch() -> None:
    torch.manual_seed(0)
    features = torch.rand(256, 64) + 1.0  # all-positive, like pooled ReLU features
    plain, centred = build_head("mlp_hidden_bn", 64, 16), build_head("mlp_hidden_out_bn", 64, 16)
    out = centred(features)
    torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)

    def cosine(z):
        return (
            torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(z, dim=1).T
        ).mean()

    assert cosine(out) < 0.1 < cosine(plain(features))


@pytest.mark.parametrize(
    ("old", "new"), [("mlp", "mlp_hidden_bn"), ("mlp_bn", "mlp_hidden_out_bn")]
)
def test_checkpoints_written_under_the_old_head_names_still_load(old: str, new: str) -> None:
    """A checkpoint records its head by the name it had; the weights are the same layers."""
    from invprop.checkpoint import build_encoder, encoder_from_checkpoint
    from invprop.config import config_from_dict

    cfg = config_from_dict({"model": {"head": new, "dim": 8}})
    trained = build_encoder(cfg)
    recorded = cfg.to_dict()
    recorded["model"]["head"] = old
    encoder, loaded_cfg, _ = encoder_from_checkpoint(
        {"config": recorded, "model": trained.state_dict()}
    )
    assert loaded_cfg.model.head == new
    for (name, value), (_, want) in zip(
        encoder.state_dict().items(), trained.state_dict().items(), strict=True
    ):
        assert torch.equal(value, want), name
