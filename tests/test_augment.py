"""Tests for invprop.augment: the hash RNG, batch invariance, and each op against torchvision."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.functional as TF

from invprop.augment import (
    DRAWS,
    JITTER_OPS,
    BatchAugment,
    _uniform_table,
    blur_kernel_size,
    center,
    gaussian_blur,
    normalize,
    resized_crop,
    sample_params,
    uniform,
)
from invprop.config import AugmentConfig, config_from_dict
from invprop.errors import InvpropError

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
MEAN1, STD1 = (0.3,), (0.35,)
IDENTITY = AugmentConfig(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
)
EVERYTHING = AugmentConfig(hue=0.4, blur_p=0.5)


def images(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random uint8 images (so resampling differences are visible but small)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, (h + 3) // 4, ((w or h) + 3) // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w or h), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand(b, c, h, w or h, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def aug(config: AugmentConfig, size: int, channels: int = 3) -> BatchAugment:
    mean, std = (MEAN3, STD3) if channels == 3 else (MEAN1, STD1)
    return BatchAugment(config, size, mean, std)


def norm(x: torch.Tensor) -> torch.Tensor:
    mean, std = (MEAN3, STD3) if x.shape[-3] == 3 else (MEAN1, STD1)
    return normalize(x.reshape(-1, *x.shape[-3:]), mean, std).reshape(x.shape)


# -- the counter-based RNG ------------------------------------------------------------------------

M32 = 0xFFFFFFFF


def _ref_mix(x: int) -> int:
    """lowbias32 with plain modular multiplication (no 16-bit split), as published."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _ref_uniform(seed: int, epoch: int, index: int, draw: int) -> float:
    h = 0x9E3779B9
    for v in (seed & (2**64 - 1), epoch):
        h = _ref_mix(h ^ (v & M32))
        h = _ref_mix(h ^ (v >> 32))
    h = _ref_mix(h ^ index)
    h = _ref_mix(h ^ _ref_mix((draw * 0x9E3779B9 + 0x85EBCA6B) & M32))
    return (h >> 8) / 2**24


@pytest.mark.parametrize("seed", [0, 1, -3, 2**40 + 5])
def test_uniform_matches_plain_python_reference(seed):
    idx = torch.tensor([0, 1, 7, 123456, 2**31 + 11, 2**32 - 1])
    for draw in (0, 5, 1000):
        got = uniform(seed, 3, idx, draw)
        want = torch.tensor([_ref_uniform(seed, 3, int(i), draw) for i in idx])
        assert torch.equal(got, want)


def test_uniform_range_determinism_and_distribution():
    idx = torch.arange(200_000)
    u = uniform(1, 2, idx, 0)
    assert u.dtype == torch.float32 and u.shape == (200_000,)
    assert u.min() >= 0 and u.max() < 1
    assert torch.equal(u, uniform(1, 2, idx, 0))
    assert torch.equal(u[1000:1100], uniform(1, 2, idx[1000:1100], 0))
    bins = 64
    counts = torch.bincount((u * bins).long(), minlength=bins).double()
    expected = len(idx) / bins
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 150, chi2  # 63 degrees of freedom: mean 63, sd 11
    # pairs of draws of one sample, and neighbouring samples, are uniform on the square
    for a, b in [(u, uniform(1, 2, idx, 1)), (u[:-1], u[1:]), (u, uniform(1, 3, idx, 0))]:
        cells = torch.bincount((a * 8).long() * 8 + (b * 8).long(), minlength=64).double()
        e = len(a) / 64
        assert ((cells - e) ** 2 / e).sum() < 150
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.02


def test_uniform_depends_on_every_key():
    idx = torch.arange(1000)
    base = uniform(0, 1, idx, 0)
    for other in (uniform(1, 1, idx, 0), uniform(0, 2, idx, 0), uniform(0, 1, idx, 1)):
        assert (other != base).float().mean() > 0.99
    assert len(torch.unique(base)) > 990


def test_uniform_table_columns_are_the_draws():
    idx = torch.tensor([4, 9, 2, 2**20])
    table = _uniform_table(5, 6, idx, len(DRAWS))
    for d in range(len(DRAWS)):
        assert torch.equal(table[:, d], uniform(5, 6, idx, d))


def test_uniform_rejects_float_indices():
    with pytest.raises(TypeError):
        uniform(0, 0, torch.zeros(3), 0)


# -- batch-level properties ---------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_output_dtype_shape_device(channels):
    x = images(5, channels, 28)
    for size in (28, 20, 40):
        out = aug(EVERYTHING, size, channels)(x, torch.arange(5), seed=0, epoch=1)
        assert out.dtype == torch.float32
        assert out.shape == (5, channels, size, size)
        assert out.device == x.device
        assert torch.isfinite(out).all()


def test_samples_in_one_batch_get_different_crops():
    x = images(1, 3, 32).expand(8, -1, -1, -1)  # the same picture eight times
    config = dataclasses.replace(IDENTITY, crop_scale=(0.2, 1.0), crop_ratio=(0.75, 4 / 3))
    out = aug(config, 32)(x, torch.arange(8), seed=0, epoch=1)
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(8) * 1e9
    assert distances.min() > 1.0
    p = sample_params(0, 1, torch.arange(8), config, 32, 32)
    boxes = torch.stack([p.top, p.left, p.height, p.width], 1)
    assert len(torch.unique(boxes, dim=0)) == 8


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_augmentation_does_not_depend_on_the_batch(channels):
    a = aug(EVERYTHING, 24, channels)
    x = images(16, channels, 32)
    idx = torch.arange(100, 116)
    whole = a(x, idx, seed=3, epoch=4)
    alone = a(x[7:8], idx[7:8], seed=3, epoch=4)
    torch.testing.assert_close(alone[0], whole[7], atol=1e-5, rtol=0)
    halves = torch.cat([a(x[:8], idx[:8], 3, 4), a(x[8:], idx[8:], 3, 4)])
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=0)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a(x[perm], idx[perm], 3, 4), whole[perm], atol=1e-5, rtol=0)


def test_epoch_and_seed_change_the_augmentation():
    a = aug(EVERYTHING, 32)
    x, idx = images(8, 3, 32), torch.arange(8)
    out = a(x, idx, seed=0, epoch=1)
    torch.testing.assert_close(a(x, idx, seed=0, epoch=1), out)
    for other in (a(x, idx, seed=0, epoch=2), a(x, idx, seed=1, epoch=1)):
        assert ((other - out).flatten(1).abs().amax(1) > 0.1).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_parameters_return_the_normalised_input(channels):
    x = images(6, channels, 28)
    out = aug(IDENTITY, 28, channels)(x, torch.arange(6), seed=0, epoch=1)
    torch.testing.assert_close(out, norm(x.float() / 255), atol=1e-5, rtol=0)


def test_op_probabilities_are_respected():
    idx = torch.arange(20_000)
    p = sample_params(0, 1, idx, AugmentConfig(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2), 32, 32)
    assert abs(p.flip.float().mean() - 0.5) < 0.02
    assert abs(p.jitter.float().mean() - 0.8) < 0.02
    assert abs(p.grayscale.float().mean() - 0.2) < 0.02
    assert not p.blur.any()
    area = p.height * p.width / (32 * 32)
    assert area.min() >= 0.15 and area.max() <= 1
    assert (p.top >= 0).all() and (p.top + p.height <= 32).all()
    assert (p.left >= 0).all() and (p.left + p.width <= 32).all()
    assert (p.brightness >= 0.6).all() and (p.brightness <= 1.4).all()
    assert p.hue.abs().max() <= 0.1 and p.hue.min() < -0.09
    strong = sample_params(0, 1, idx[:2000], AugmentConfig(contrast=1.5), 32, 32).contrast
    assert strong.min() >= 0 and strong.min() < 0.01 and strong.max() > 2.49  # [max(0, 1-b), 1+b]


# -- each op against torchvision ----------------------------------------------------------------


def test_crop_geometry_matches_torchvision_resized_crop():
    x = images(16, 3, 64)
    xf = x.float() / 255
    idx = torch.arange(16)
    # boxes of at least 32 px: resizing down, where both sample identically
    config = dataclasses.replace(IDENTITY, crop_scale=(0.5, 1.0), crop_ratio=(0.75, 4 / 3))
    out = aug(config, 32)(x, idx, seed=0, epoch=1)
    p = sample_params(0, 1, idx, config, 64, 64)
    assert (p.height >= 32).all() and (p.width >= 32).all()
    assert len(torch.unique(p.top)) > 4 and len(torch.unique(p.width)) > 4
    for i in range(16):
        box = [int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i])]
        ref = TF.resized_crop(xf[i], *box, [32, 32], antialias=False)
        torch.testing.assert_close(out[i], norm(ref), atol=1e-4, rtol=0)


def test_crop_upsampling_matches_torchvision_inside_the_box():
    x = images(1, 3, 32).float() / 255
    box = torch.tensor([5.0]), torch.tensor([3.0]), torch.tensor([12.0]), torch.tensor([20.0])
    out = resized_crop(x, *box, 48)
    ref = TF.resized_crop(x[0], 5, 3, 12, 20, [48, 48], antialias=False)
    # the outer rows/columns differ by design (we read the image beyond the box edge)
    torch.testing.assert_close(out[0, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_flip_matches_torch_flip():
    x, idx = images(12, 3, 32), torch.arange(12)
    config = dataclasses.replace(EVERYTHING, flip_p=0.0)
    plain = aug(config, 28)(x, idx, 0, 1)
    flipped = aug(dataclasses.replace(config, flip_p=1.0), 28)(x, idx, 0, 1)
    torch.testing.assert_close(flipped, torch.flip(plain, dims=[-1]), atol=1e-5, rtol=0)
    half = aug(dataclasses.replace(config, flip_p=0.5), 28)(x, idx, 0, 1)
    flips = sample_params(0, 1, idx, dataclasses.replace(config, flip_p=0.5), 32, 32).flip
    assert 0 < flips.sum() < 12
    torch.testing.assert_close(half, torch.where(flips.view(-1, 1, 1, 1), flipped, plain))


def test_precropped_batches_get_the_flip_and_the_rest_unchanged():
    """crop=False (image folders crop in the loader): the same flips and colour ops as the
    full augmentation whose crop is the identity."""
    x, idx = images(12, 3, 24), torch.arange(12)
    config = dataclasses.replace(EVERYTHING, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    full = aug(config, 24)(x, idx, 3, 2)
    precropped = BatchAugment(config, 24, MEAN3, STD3, crop=False)(x, idx, 3, 2)
    torch.testing.assert_close(precropped, full, atol=1e-5, rtol=0)
    assert sample_params(3, 2, idx, config, 24, 24).flip.any()
    with pytest.raises(ValueError, match="already cropped to 16x16"):
        BatchAugment(config, 16, MEAN3, STD3, crop=False)(x, idx, 3, 2)


COLOUR_OPS = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", list(COLOUR_OPS))
def test_colour_jitter_op_matches_torchvision(op, channels):
    strength = 0.4 if op == "hue" else 0.6
    config = dataclasses.replace(
        IDENTITY, jitter_p=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
    )
    config = dataclasses.replace(config, **{op: strength})
    x, idx = images(16, channels, 24), torch.arange(16)
    out = aug(config, 24, channels)(x, idx, seed=2, epoch=5)
    p = sample_params(2, 5, idx, config, 24, 24)
    assert 0 < p.jitter.sum() < 16
    xf = x.float() / 255
    changed = 0
    for i in range(16):
        factor = float(getattr(p, op)[i])
        ref = COLOUR_OPS[op](xf[i], factor) if p.jitter[i] else xf[i]
        torch.testing.assert_close(out[i], norm(ref), atol=2e-5, rtol=0)
        changed += int((ref - xf[i]).abs().max() > 1e-3)
    assert changed > 0 if channels == 3 or op in ("brightness", "contrast") else changed == 0


@pytest.mark.parametrize(
    "strengths",
    [
        {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.3},
        {"brightness": 0.5, "contrast": 0.0, "saturation": 0.0, "hue": 0.3},
        {"brightness": 0.0, "contrast": 0.6, "saturation": 0.5, "hue": 0.0},
    ],
)
def test_colour_jitter_applies_each_samples_own_order_like_torchvision(strengths):
    """Each sample's ops with a non-zero strength, in its drawn order, as torchvision's
    functional ops (torchvision skips an op whose strength is 0)."""
    config = dataclasses.replace(IDENTITY, jitter_p=1.0, **strengths)
    x, idx = images(24, 3, 16), torch.arange(24)
    out = aug(config, 16)(x, idx, 0, 1)
    p = sample_params(0, 1, idx, config, 16, 16)
    assert len({tuple(o.tolist()) for o in p.jitter_order}) > 8  # orders do differ
    for i in range(24):
        ref = x[i].float() / 255
        for op_id in p.jitter_order[i].tolist():
            name = JITTER_OPS[op_id]
            if strengths[name]:
                ref = COLOUR_OPS[name](ref, float(getattr(p, name)[i]))
        torch.testing.assert_close(out[i], norm(ref), atol=3e-5, rtol=0)


def test_colour_jitter_order_is_distributed_like_torchvision():
    """ColorJitter.get_params draws torch.randperm(4): every order has probability 1/24.
    Chi-square of our orders against torchvision's, as a two-sample test."""
    from scipy.stats import chi2_contingency
    from torchvision.transforms import ColorJitter

    n = 24_000
    ours = sample_params(7, 3, torch.arange(n), AugmentConfig(), 32, 32).jitter_order
    codes = (ours * torch.tensor([64, 16, 4, 1])).sum(1)
    torch.manual_seed(0)
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.4)
    theirs = []
    for _ in range(n):
        order = jitter.get_params(*jitter_ranges(jitter))[0]
        theirs.append(sum(int(v) * w for v, w in zip(order, (64, 16, 4, 1), strict=True)))
    perms = sorted(set(codes.tolist()))
    assert len(perms) == 24 and perms == sorted(set(theirs))
    table = [[int((codes == c).sum()) for c in perms], [theirs.count(c) for c in perms]]
    assert chi2_contingency(table).pvalue > 1e-3


def jitter_ranges(jitter):
    return jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue


# torchvision's RandomResizedCrop sampler on images of several sizes and aspect ratios, some
# (tall and wide strips) where the retries and the centre-crop fallback matter.
CROP_IMAGE_SIZES = [(32, 32), (375, 500), (500, 333), (64, 400), (300, 40)]


def _torchvision_boxes(height, width, scale, ratio, n):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(1)
    image = torch.empty(1, height, width)  # get_params reads only the size
    return torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
        dtype=torch.float32,
    )


@pytest.mark.parametrize(("height", "width"), CROP_IMAGE_SIZES)
@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.08, 1.0)])
def test_crop_boxes_are_distributed_like_torchvision(height, width, scale):
    """Two-sample Kolmogorov-Smirnov tests (area fraction, aspect ratio, relative centre)
    of our boxes against torchvision's RandomResizedCrop.get_params on the same image."""
    from scipy.stats import ks_2samp

    n, ratio = 4000, (3 / 4, 4 / 3)
    config = AugmentConfig(crop_scale=scale, crop_ratio=ratio)
    p = sample_params(11, 2, torch.arange(n), config, height, width)
    ours = torch.stack([p.top, p.left, p.height, p.width], 1)
    theirs = _torchvision_boxes(height, width, scale, ratio, n)
    for boxes in (ours, theirs):  # inside the image, integer
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
        assert torch.equal(boxes, boxes.round())

    def stats(b):
        return {
            "area": b[:, 2] * b[:, 3] / (height * width),
            "aspect": b[:, 3] / b[:, 2],
            "centre_y": (b[:, 0] + b[:, 2] / 2) / height,
            "centre_x": (b[:, 1] + b[:, 3] / 2) / width,
        }

    a, b = stats(ours), stats(theirs)
    for name in a:
        result = ks_2samp(a[name].numpy(), b[name].numpy(), method="asymp")
        assert result.pvalue > 1e-3, (name, result)


def test_crop_boxes_fall_back_to_torchvisions_centre_crop():
    """When no attempt fits (a strip far outside crop_ratio), the box is the centre crop
    with the aspect ratio clamped, exactly as torchvision's fallback."""
    from torchvision.transforms import RandomResizedCrop

    config = AugmentConfig(crop_scale=(0.9, 1.0), crop_ratio=(3 / 4, 4 / 3))
    for height, width in [(20, 300), (300, 20)]:
        p = sample_params(0, 1, torch.arange(50), config, height, width)
        torch.manual_seed(0)
        want = RandomResizedCrop.get_params(
            torch.empty(1, height, width), [0.9, 1.0], [3 / 4, 4 / 3]
        )
        for box in zip(p.top, p.left, p.height, p.width, strict=True):
            assert [int(v) for v in box] == list(want)


def test_crop_boxes_accept_per_sample_image_sizes():
    """Image folders: each sample its own image size; the same boxes as drawn one by one."""
    config = AugmentConfig()
    idx = torch.arange(6)
    heights = torch.tensor([32, 375, 500, 64, 300, 40])
    widths = torch.tensor([32, 500, 333, 400, 40, 300])
    batch = sample_params(3, 4, idx, config, heights, widths)
    for i in range(6):
        one = sample_params(3, 4, idx[i : i + 1], config, int(heights[i]), int(widths[i]))
        for field in ("top", "left", "height", "width"):
            assert torch.equal(getattr(batch, field)[i : i + 1], getattr(one, field))


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_matches_torchvision(channels):
    config = dataclasses.replace(IDENTITY, grayscale_p=0.5)
    x, idx = images(16, channels, 20), torch.arange(16)
    out = aug(config, 20, channels)(x, idx, 0, 1)
    p = sample_params(0, 1, idx, config, 20, 20)
    assert 0 < p.grayscale.sum() < 16
    xf = x.float() / 255
    for i in range(16):
        grey = channels == 3 and bool(p.grayscale[i])
        ref = TF.rgb_to_grayscale(xf[i], num_output_channels=3) if grey else xf[i]
        torch.testing.assert_close(out[i], norm(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("size", "channels"), [(64, 3), (28, 1)])
def test_blur_matches_torchvision(size, channels):
    config = dataclasses.replace(IDENTITY, blur_p=0.5, blur_sigma=(0.3, 3.0))
    x, idx = images(12, channels, size), torch.arange(12)
    out = aug(config, size, channels)(x, idx, 0, 1)
    p = sample_params(0, 1, idx, config, size, size)
    assert 0 < p.blur.sum() < 12
    k = blur_kernel_size(size)
    xf = x.float() / 255
    for i in range(12):
        sigma = float(p.sigma[i])
        ref = TF.gaussian_blur(xf[i], [k, k], [sigma, sigma]) if p.blur[i] else xf[i]
        torch.testing.assert_close(out[i], norm(ref), atol=1e-5, rtol=0)


def test_gaussian_blur_per_sample_sigma():
    x = images(3, 3, 32).float() / 255
    sigma = torch.tensor([0.5, 1.0, 2.0])
    out = gaussian_blur(x, sigma, 7)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


def test_blur_kernel_size_convention():
    assert [blur_kernel_size(s) for s in (224, 96, 64, 32, 28, 8)] == [23, 9, 7, 3, 3, 3]


# -- evaluation view, config, errors --------------------------------------------------------------


def test_center_matches_torchvision_resize_and_center_crop():
    x = images(2, 3, 40, 52)
    xf = x.float() / 255
    out = center(x, 32, MEAN3, STD3)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    ref = TF.center_crop(TF.resize(xf, 32, antialias=True), [32, 32])
    torch.testing.assert_close(out, norm(ref), atol=1e-5, rtol=0)
    same = images(2, 1, 28)
    torch.testing.assert_close(center(same, 28, MEAN1, STD1), norm(same.float() / 255))
    as_tensors = center(same, 28, torch.tensor(MEAN1), torch.tensor(STD1))
    torch.testing.assert_close(as_tensors, norm(same.float() / 255))


def test_recipe_values_are_validated_by_the_config():
    config = config_from_dict({"augment": {"crop_scale": [0.3, 1], "flip_p": 0, "hue": 0}}).augment
    assert config.crop_scale == (0.3, 1.0) and isinstance(config.flip_p, float)
    hash(config)  # frozen and hashable
    bad = [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.8, 0.5)},
        {"crop_scale": (0.2, 1.0, 3.0)},
        {"crop_ratio": (-1.0, 1.0)},
        {"flip_p": 1.5},
        {"jitter_p": -0.1},
        {"brightness": -0.2},
        {"hue": 0.6},
        {"blur_sigma": (0.0, 1.0)},
        {"grayscale_p": "often"},
    ]
    for values in bad:
        with pytest.raises(InvpropError, match=f"augment.{next(iter(values))}"):
            config_from_dict(
                {"augment": {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
            )


def test_bad_inputs_give_clear_errors():
    a = aug(EVERYTHING, 16)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        a(torch.zeros(3, 16, 16, dtype=torch.uint8), torch.arange(3), 0, 0)
    with pytest.raises(TypeError, match="uint8"):
        a(torch.zeros(3, 3, 16, 16, dtype=torch.int32), torch.arange(3), 0, 0)
    with pytest.raises(ValueError, match="indices"):
        a(torch.zeros(3, 3, 16, 16, dtype=torch.uint8), torch.arange(4), 0, 0)
    with pytest.raises(ValueError, match="channel"):
        a(torch.zeros(3, 1, 16, 16, dtype=torch.uint8), torch.arange(3), 0, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_never_synchronises():
    x, idx = images(32, 3, 32), torch.arange(32) * 7
    a = aug(EVERYTHING, 32)
    want = a(x, idx, seed=1, epoch=2)
    a = a.cuda()
    xc, ic = x.cuda(), idx.cuda()
    a(xc, ic, 1, 2)  # warm up (lazy CUDA init may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = a(xc, ic, seed=1, epoch=2)
        u = uniform(1, 2, ic, 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert got.device.type == "cuda"
    assert torch.equal(u.cpu(), uniform(1, 2, idx, 0))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)


def test_autocast_does_not_lower_the_precision():
    x, idx = images(4, 3, 32), torch.arange(4)
    a = aug(EVERYTHING, 32)
    want = a(x, idx, 0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = a(x, idx, 0, 1)
        evaluation = center(x, 32, MEAN3, STD3)
    assert got.dtype == evaluation.dtype == torch.float32
    torch.testing.assert_close(got, want)
