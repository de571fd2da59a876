"""Batched, per-sample image augmentation on tensors, driven by a counter-based hash RNG.

The whole batch is augmented at once on the device that holds it (uint8 images of a small
dataset live on the GPU), with *different* random parameters for every sample and no Python
loop over samples.

Randomness
----------
Every random number is a pure function ``uniform(seed, epoch, index, draw)``: a hash of the
run seed, the epoch, the sample's dataset index and a fixed draw number (see ``DRAWS``). It is
computed with vectorised integer tensor ops (Chris Wellons' ``lowbias32`` finaliser on 32-bit
lanes stored in int64, with multiplications split into 16-bit halves so that no intermediate
ever overflows int64 and no right shift ever sees a negative number), so it is bit-identical
on CPU and CUDA and needs no generator state. Consequences:

* a sample's augmentation does not depend on which batch it is in, on the batch size, on the
  number of DDP ranks or on the order of the data loader;
* resuming at epoch ``e`` reproduces exactly the augmentations of an uninterrupted run;
* nothing is ever copied back to the host (no ``.item()``, no data-dependent shapes), so the
  augmentation never synchronises the host with the GPU.

Every draw is consumed whether or not its op is enabled, so changing e.g. ``blur_p`` does not
change the crops.

Ops, in this fixed order
------------------------
1. random resized crop + horizontal flip, as one ``affine_grid``/``grid_sample`` (bilinear,
   ``align_corners=False``, border padding) straight from ``H x W`` to ``S x S``. The box is
   sampled as torchvision's ``RandomResizedCrop`` does (:func:`crop_boxes`: area fraction
   uniform in ``crop_scale``, log aspect ratio uniform in ``log(crop_ratio)``, integer sides
   by rounding, up to 10 attempts until the box fits, else the centre crop; integer offsets).
   Image folders take this crop per image, from the whole decoded image, in the data-loader
   workers (:class:`CroppedImageFiles`), and the batch arrives here as
   ``S x S`` with only the flip left to apply (``BatchAugment(..., crop=False)``).
2. colour jitter with probability ``jitter_p``: brightness, contrast, saturation, hue, in a
   random order per image as torchvision's ``ColorJitter`` (:func:`color_jitter`). Factors
   are sampled as torchvision does: uniform in ``[max(0, 1 - b), 1 + b]``, hue shift uniform
   in ``[-h, h]``. Hue uses an exact RGB -> HSV -> RGB round-trip, not a YIQ rotation: it
   matches ``torchvision.transforms.functional.adjust_hue`` (the authors' recipe uses hue
   0.4, large enough for a YIQ rotation to leave the RGB gamut and disagree visibly), and
   costs only elementwise kernels. For one-channel images saturation and hue are the
   identity (as in torchvision).
3. random greyscale with probability ``grayscale_p`` (3 channels only; ITU-R 601 weights
   0.2989, 0.587, 0.114 as torchvision).
4. gaussian blur with probability ``blur_p``, sigma uniform in ``blur_sigma``, an odd kernel
   of about 10% of ``S`` (SimCLR / MoCo v2 convention: 23 px at 224), reflect padding, as a
   separable grouped convolution with per-sample kernels (torchvision's ``gaussian_blur``).
5. normalisation with per-channel mean and std (the data's own, or ``augment.mean``/``std``).

Flip commutes with ops 2-5, so applying it inside the crop is the same as torchvision's
``RandomHorizontalFlip`` anywhere in the pipeline.

Entry points: :class:`BatchAugment` (training), :class:`CroppedImageFiles` (the crops of
image folders, made in data-loader workers) and :func:`center` (embedding, evaluation).
The batched ops (:func:`resized_crop`, :func:`adjust_brightness`, ...) are public so that tests
and the CLI can use them with explicit parameters.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invprop.config import AugmentConfig
from invprop.data.prepared import ImageFiles, Split, open_image, to_chw

__all__ = [
    "CROP_ATTEMPTS",
    "DRAWS",
    "JITTER_OPS",
    "AugmentConfig",
    "AugmentParams",
    "BatchAugment",
    "CroppedImageFiles",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "center",
    "color_jitter",
    "crop_boxes",
    "gaussian_blur",
    "normalize",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_params",
    "uniform",
]

# ----------------------------------------------------------------------------------------------
# Counter-based RNG
# ----------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / phi: the usual odd constant to decorrelate counters

# Draw numbers: fixed forever, because they define which random number drives what.
DRAWS: dict[str, int] = {
    "crop_scale": 0,
    "crop_ratio": 1,
    "crop_top": 2,
    "crop_left": 3,
    "flip": 4,
    "jitter": 5,
    "brightness": 6,
    "contrast": 7,
    "saturation": 8,
    "hue": 9,
    "grayscale": 10,
    "blur": 11,
    "blur_sigma": 12,
}
# torchvision's RandomResizedCrop tries up to CROP_ATTEMPTS boxes; attempt 0 is drawn by
# crop_scale / crop_ratio above, attempts 1.. by these.
CROP_ATTEMPTS = 10
for _attempt in range(1, CROP_ATTEMPTS):
    DRAWS[f"crop_scale_{_attempt}"] = len(DRAWS)
    DRAWS[f"crop_ratio_{_attempt}"] = len(DRAWS)
# ColorJitter's random order of its four ops: the argsort of four uniforms per sample.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
for _op in JITTER_OPS:
    DRAWS[f"order_{_op}"] = len(DRAWS)
_N_DRAWS = len(DRAWS)


def _mul32(x, c: int):
    """``(x * c) mod 2^32`` for ``0 <= x < 2^32`` without int64 overflow (int or int64 tensor)."""
    lo = x * (c & 0xFFFF)  # < 2^48
    hi = ((x * (c >> 16)) & 0xFFFF) << 16  # < 2^32
    return (lo + hi) & _M32


def _mix32(x):
    """``lowbias32`` (C. Wellons), a bijective 32-bit finaliser; works on ints and int64 tensors
    whose values lie in ``[0, 2^32)``, so every right shift is a logical one."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _prefix(seed: int, epoch: int) -> int:
    """The hash state after absorbing (seed, epoch): a plain Python int (no device work)."""
    h = _GOLDEN
    for value in (seed, epoch):
        value = operator.index(value) & _M64  # negative seeds are fine: two's complement
        h = _mix32(h ^ (value & _M32))
        h = _mix32(h ^ (value >> 32))
    return h


def _draw_key(draw: int) -> int:
    return _mix32((operator.index(draw) * _GOLDEN + 0x85EBCA6B) & _M32)


def _hash_to_unit(h: Tensor) -> Tensor:
    # the top 24 bits, exactly representable in float32: values k / 2^24 in [0, 1)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _index_state(seed: int, epoch: int, indices: Tensor) -> Tensor:
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    idx = indices.reshape(-1).to(torch.int64) & _M32
    return _mix32(idx ^ _prefix(seed, epoch))


def uniform(seed: int, epoch: int, indices: Tensor, draw: int) -> Tensor:
    """Counter-based uniform numbers in [0, 1), one per sample index.

    Args:
        seed: run seed (any Python int).
        epoch: epoch number (any non-negative int).
        indices: ``[B]`` integer dataset indices (< 2^32), on any device.
        draw: which random number of the sample (``DRAWS`` lists the ones augmentation uses;
            other code should use numbers >= 1000 to stay clear of them).

    Returns:
        ``[B]`` float32 on ``indices.device``: a pure function of (seed, epoch, index, draw),
        identical on CPU and CUDA, with 24 random bits each.
    """
    h = _mix32(_index_state(seed, epoch, indices) ^ _draw_key(draw))
    return _hash_to_unit(h)


def _uniform_table(seed: int, epoch: int, indices: Tensor, n: int) -> Tensor:
    """``[B, n]`` table whose column ``d`` equals ``uniform(seed, epoch, indices, d)``."""
    keys = torch.arange(n, device=indices.device, dtype=torch.int64)
    keys = _mix32((keys * _GOLDEN + 0x85EBCA6B) & _M32)  # == _draw_key, on the device
    h = _mix32(_index_state(seed, epoch, indices)[:, None] ^ keys[None, :])
    return _hash_to_unit(h)


# ----------------------------------------------------------------------------------------------
# Config and parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one batch, tensors on the batch's device.

    ``top, left, height, width`` are the integer crop box in input pixels (stored as float32).
    Factors of samples whose op is off are still sampled (and ignored). ``jitter_order`` is
    ``[B, 4]``, every other field ``[B]``.
    """

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor  # bool
    jitter: Tensor  # bool
    jitter_order: Tensor  # [B, 4] int64: indices into JITTER_OPS, in the order applied
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    grayscale: Tensor  # bool
    blur: Tensor  # bool
    sigma: Tensor


def _factor(u: Tensor, strength: float) -> Tensor:
    lo = max(0.0, 1.0 - strength)
    return lo + u * (1.0 + strength - lo)


def crop_boxes(
    u: Tensor, config: AugmentConfig, height: int | Tensor, width: int | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's ``RandomResizedCrop.get_params``, vectorised over the batch.

    Up to ``CROP_ATTEMPTS`` (area fraction, aspect ratio) draws per sample; the first whose
    rounded box fits inside the image wins, with a uniformly drawn integer offset; when none
    fits, the centre crop of the whole image with its aspect ratio clamped to ``crop_ratio``.
    ``u`` is the ``[B, len(DRAWS)]`` uniform table; ``height``/``width`` are ints or ``[B]``
    tensors (image folders: every image has its own size). Returns float32 ``[B]`` tensors
    ``(top, left, box_height, box_width)``.
    """
    d = DRAWS
    device = u.device
    img_h = torch.as_tensor(height, dtype=torch.float32, device=device).expand(u.shape[0])
    img_w = torch.as_tensor(width, dtype=torch.float32, device=device).expand(u.shape[0])
    scale_cols = [d["crop_scale"]] + [d[f"crop_scale_{a}"] for a in range(1, CROP_ATTEMPTS)]
    ratio_cols = [d["crop_ratio"]] + [d[f"crop_ratio_{a}"] for a in range(1, CROP_ATTEMPTS)]
    lo, hi = config.crop_scale
    area = (img_h * img_w)[:, None] * (lo + u[:, scale_cols] * (hi - lo))  # [B, attempts]
    log_lo, log_hi = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    ratio = torch.exp(log_lo + u[:, ratio_cols] * (log_hi - log_lo))
    w = torch.round(torch.sqrt(area * ratio))
    h = torch.round(torch.sqrt(area / ratio))
    fits = (w > 0) & (w <= img_w[:, None]) & (h > 0) & (h <= img_h[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first that fits (or 0)
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top = torch.floor(u[:, d["crop_top"]] * (img_h - h + 1)).clamp(max=img_h - h)
    left = torch.floor(u[:, d["crop_left"]] * (img_w - w + 1)).clamp(max=img_w - w)
    # The fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = img_w / img_h
    min_ratio, max_ratio = min(config.crop_ratio), max(config.crop_ratio)
    fb_w = torch.where(in_ratio > max_ratio, torch.round(img_h * max_ratio), img_w)
    fb_h = torch.where(in_ratio < min_ratio, torch.round(img_w / min_ratio), img_h)
    fb_top = torch.div(img_h - fb_h, 2, rounding_mode="floor")
    fb_left = torch.div(img_w - fb_w, 2, rounding_mode="floor")
    return (
        torch.where(found, top, fb_top),
        torch.where(found, left, fb_left),
        torch.where(found, h, fb_h),
        torch.where(found, w, fb_w),
    )


def sample_params(
    seed: int,
    epoch: int,
    indices: Tensor,
    config: AugmentConfig,
    height: int | Tensor,
    width: int | Tensor,
) -> AugmentParams:
    """Draw every sample's parameters for inputs of ``height x width`` pixels (ints, or
    ``[B]`` tensors when the images differ in size)."""
    u = _uniform_table(seed, epoch, indices, _N_DRAWS)
    d = DRAWS
    top, left, h, w = crop_boxes(u, config, height, width)
    order_cols = [d[f"order_{op}"] for op in JITTER_OPS]
    lo, hi = config.blur_sigma
    return AugmentParams(
        top=top,
        left=left,
        height=h,
        width=w,
        flip=u[:, d["flip"]] < config.flip_p,
        jitter=u[:, d["jitter"]] < config.jitter_p,
        jitter_order=u[:, order_cols].argsort(dim=1),
        brightness=_factor(u[:, d["brightness"]], config.brightness),
        contrast=_factor(u[:, d["contrast"]], config.contrast),
        saturation=_factor(u[:, d["saturation"]], config.saturation),
        hue=(2.0 * u[:, d["hue"]] - 1.0) * config.hue,
        grayscale=u[:, d["grayscale"]] < config.grayscale_p,
        blur=u[:, d["blur"]] < config.blur_p,
        sigma=lo + u[:, d["blur_sigma"]] * (hi - lo),
    )


# ----------------------------------------------------------------------------------------------
# Batched ops: x is float [B, C, H, W] in [0, 1]; per-sample parameters are [B] tensors
# ----------------------------------------------------------------------------------------------


def _per_sample(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def resized_crop(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    height: Tensor,
    width: Tensor,
    size: int,
    flip: Tensor | None = None,
) -> Tensor:
    """Crop box ``[top, top+height) x [left, left+width)`` of each sample, resize it bilinearly to
    ``size x size`` and mirror it where ``flip``; one ``grid_sample`` for the batch.

    Matches ``torchvision.transforms.functional.resized_crop(..., antialias=False)`` exactly when
    the box is at least ``size`` on each side; when upsampling, pixels on the box edge differ
    slightly (torchvision clamps inside the box, we read the neighbouring pixel of the image).
    """
    b, _, h_in, w_in = x.shape
    sx = width / w_in
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack(
        [
            sx,
            zero,
            (2.0 * left + width) / w_in - 1.0,
            zero,
            height / h_in,
            (2.0 * top + height) / h_in - 1.0,
        ],
        dim=1,
    ).view(b, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """``[B, 3, H, W] -> [B, 1, H, W]`` luma with ITU-R 601 weights (as torchvision)."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    f = _per_sample(factor)
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    grey = rgb_to_grayscale(x) if x.shape[1] == 3 else x
    return _blend(x, grey.mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) via an exact HSV round-trip
    (torchvision's RGB -> HSV, then the closed-form HSV -> RGB)."""
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_div
    gc = (maxc - g) / cr_div
    bc = (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    hue = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + shift.reshape(-1, 1, 1), 1.0)
    # HSV -> RGB: channel n in (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6
    h6 = (hue * 6.0).unsqueeze(1)  # [B, 1, H, W]
    offsets = torch.arange(5, 0, -2, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(offsets + h6, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    v = maxc.unsqueeze(1)
    return v - v * s.unsqueeze(1) * ramp


def color_jitter(x: Tensor, p: AugmentParams, config: AugmentConfig) -> Tensor:
    """torchvision's ``ColorJitter``: each sample's ops in its own order ``p.jitter_order``.

    Only ops that change something take part: strength non-zero, and saturation and hue
    only on three channels (the identity on one, as in torchvision). Each of the k
    positions computes those k ops for the whole batch and keeps, per sample, the one that
    sample applies there: k^2 elementwise ops, no host sync.
    """
    ops = {
        "brightness": lambda y: adjust_brightness(y, p.brightness),
        "contrast": lambda y: adjust_contrast(y, p.contrast),
        "saturation": lambda y: adjust_saturation(y, p.saturation),
        "hue": lambda y: adjust_hue(y, p.hue),
    }
    colour_only = ("saturation", "hue")
    active = [
        JITTER_OPS.index(name)
        for name in JITTER_OPS
        if getattr(config, name) and (x.shape[1] == 3 or name not in colour_only)
    ]
    if len(active) <= 1:  # nothing to order
        return ops[JITTER_OPS[active[0]]](x) if active else x
    rank = p.jitter_order.argsort(dim=1)  # [B, 4]: where each op comes in the sample's order
    order = rank[:, active].argsort(dim=1)  # [B, k]: indices into `active`, in applied order
    for position in range(len(active)):
        out = x
        for slot, op_id in enumerate(active):
            applied = order[:, position] == slot
            out = torch.where(_per_sample(applied), ops[JITTER_OPS[op_id]](x), out)
        x = out
    return x


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the image side (SimCLR / MoCo v2: 23 at 224), at least 3."""
    k = int(0.1 * size)
    return max(3, k + 1 if k % 2 == 0 else k)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample gaussian blur (reflect padding), as torchvision's ``gaussian_blur`` with
    ``[kernel_size] * 2`` and ``[sigma] * 2``; two grouped 1-d convolutions."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, k]
    kernel = kernel.repeat_interleave(c, dim=0)  # [B*C, k], one per (sample, channel)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), [pad, pad, pad, pad], mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def normalize(x: Tensor, mean: Tensor | Sequence[float], std: Tensor | Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel. Tensors (``[C]`` or broadcastable) are used as they are;
    Python sequences are applied channel by channel, so no host-to-device copy is made."""
    if isinstance(mean, Tensor) and isinstance(std, Tensor):
        c = x.shape[1]
        return (x - mean.reshape(1, c, 1, 1)) / std.reshape(1, c, 1, 1)
    mean, std = list(map(float, mean)), list(map(float, std))
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {x.shape[1]} channels")
    out = torch.empty_like(x)
    for ch, (m, s) in enumerate(zip(mean, std, strict=True)):
        torch.sub(x[:, ch], m, out=out[:, ch]).div_(s)
    return out


def _to_unit_float(images: Tensor) -> Tensor:
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    if images.dtype.is_floating_point:
        return images.to(torch.float32)
    raise TypeError(f"images must be uint8 (or float in [0, 1]), got {images.dtype}")


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


class BatchAugment(nn.Module):
    """The training-time augmentation: ``uint8 [B, C, H, W] -> float32 [B, C, size, size]``.

    ``crop=False``: the batch comes already cropped to ``size x size`` (image folders, whose
    crops `CroppedImageFiles` takes in the loader workers from each
    whole image with the same per-sample boxes); only the flip and the later ops remain.

    ``mean``/``std`` are non-persistent buffers, so ``.to(device)`` once moves them next to the
    data and no call ever copies from the host. Shapes and devices follow the input.

    Example::

        aug = BatchAugment(AugmentConfig(), size=32, mean=meta.mean, std=meta.std).to(device)
        x = aug(images_u8[idx], idx, seed=params.seed, epoch=epoch)
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        config: AugmentConfig,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop: bool = True,
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values, std {len(std)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.config = config
        self.size = int(size)
        self.crop = crop
        self.blur_kernel = blur_kernel_size(self.size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, config={self.config}"

    def params(self, images: Tensor, indices: Tensor, seed: int, epoch: int) -> AugmentParams:
        """The per-sample parameters ``forward`` uses for this batch."""
        return sample_params(seed, epoch, indices, self.config, images.shape[-2], images.shape[-1])

    def forward(self, images: Tensor, indices: Tensor, seed: int, epoch: int) -> Tensor:
        """Augment ``images [B, C, H, W]`` (uint8, or float in [0, 1]) whose dataset indices are
        ``indices [B]`` (keep them on the images' device: a host copy would synchronise);
        returns normalised float32 ``[B, C, size, size]``, computed in fp32 even inside an
        autocast region."""
        with torch.autocast(images.device.type, enabled=False):
            return self._augment(images, indices, seed, epoch)

    def _augment(self, images: Tensor, indices: Tensor, seed: int, epoch: int) -> Tensor:
        x = _to_unit_float(images)
        if indices.numel() != x.shape[0]:
            raise ValueError(f"{indices.numel()} indices for a batch of {x.shape[0]} images")
        if x.shape[1] != self.mean.numel():
            raise ValueError(f"{x.shape[1]}-channel images, {self.mean.numel()}-channel mean/std")
        cfg = self.config
        p = self.params(x, indices.to(x.device), seed, epoch)
        if self.crop:
            x = resized_crop(x, p.top, p.left, p.height, p.width, self.size, flip=p.flip)
        elif x.shape[-2:] != (self.size, self.size):
            raise ValueError(
                f"crop=False expects batches already cropped to {self.size}x{self.size}, "
                f"got {tuple(x.shape[-2:])}"
            )
        else:
            x = torch.where(_per_sample(p.flip), x.flip(-1), x)

        if cfg.jitter_p > 0:
            x = torch.where(_per_sample(p.jitter), color_jitter(x, p, cfg), x)

        if cfg.grayscale_p > 0 and x.shape[1] == 3:
            x = torch.where(_per_sample(p.grayscale), rgb_to_grayscale(x).expand_as(x), x)

        if cfg.blur_p > 0:
            x = torch.where(_per_sample(p.blur), gaussian_blur(x, p.sigma, self.blur_kernel), x)

        return normalize(x, self.mean.to(x.device), self.std.to(x.device))


class CroppedImageFiles(torch.utils.data.Dataset):
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
        draft = None if side is None else (side, side)
        image = open_image(self.files.path(index), self.channels, draft, self.files.rerun)
        width, height = image.size
        if side is not None and min(width, height) > side:
            scale = side / min(width, height)
            target = (max(side, round(width * scale)), max(side, round(height * scale)))
            image = image.resize(target, Image.Resampling.BILINEAR)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = self.whole_image(index)
        width, height = image.size
        p = sample_params(self.seed, self.epoch, torch.tensor([index]), self.config, height, width)
        top, left, box_h, box_w = (int(v[0]) for v in (p.top, p.left, p.height, p.width))
        # crop, then resize: resizing with a box would read pixels beyond its edges
        box = (left, top, left + box_w, top + box_h)
        crop = image.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(to_chw(crop)), int(index)


def center(
    images: Tensor, size: int, mean: Tensor | Sequence[float], std: Tensor | Sequence[float]
) -> Tensor:
    """Evaluation view, no randomness: resize the shorter side to ``size`` (bilinear, antialiased)
    and take the central ``size x size`` crop when the images are not already that size; then
    normalise. ``uint8 (or float in [0, 1]) [B, C, H, W] -> float32 [B, C, size, size]``."""
    with torch.autocast(images.device.type, enabled=False):
        return _center(images, size, mean, std)


def _center(images: Tensor, size: int, mean, std) -> Tensor:
    x = _to_unit_float(images)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        # torchvision's Resize(size) + CenterCrop(size) arithmetic
        if h <= w:
            new_h, new_w = size, int(size * w / h)
        else:
            new_h, new_w = int(size * h / w), size
        if (new_h, new_w) != (h, w):
            x = F.interpolate(
                x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
        x = x[:, :, top : top + size, left : left + size]
    return normalize(x, mean, std)
