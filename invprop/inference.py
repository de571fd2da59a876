"""Inference: a network's clean representations of a split, on the right device.

`extract` is the one way to turn images into representations without augmentation: the
embed stage, the evaluate stage's baselines, the training loop (forward-filled bank and kNN
monitor), the linear probe and `invprop knn` all call it, so they all see the same
preprocessing: `invprop.augment.center` at data.image_size, normalised as in training
(`input_normalisation`: augment.mean/std for the pretraining dataset when set, else the
prepared data's channel statistics), after converting the images to the model's channel
count. `embed_checkpoint` gives the arrays of an embeddings artifact (invprop.workspace
writes them); rows follow the prepared split's order, which is also the memory bank's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from invprop.augment import center
from invprop.checkpoint import (
    checkpoint_preprocessing,
    encoder_from_checkpoint,
    load_checkpoint,
    training_hash,
)
from invprop.config import Config
from invprop.data import convert_channels, decode_batches
from invprop.data.imagefolder import scan_folder
from invprop.data.prepared import ImageFiles, Split
from invprop.errors import InvpropError
from invprop.io import atomic_file, check_output_file, file_sha256, load_npz, save_npz
from invprop.logs import get_logger, track

if TYPE_CHECKING:
    from invprop.data import PreparedDataset
    from invprop.models import Encoder

__all__ = [
    "check_compatible",
    "embed_checkpoint",
    "embed_folder",
    "extract",
    "extract_outputs",
    "inference_autocast",
    "input_normalisation",
    "load_folder_embeddings",
    "normalisation",
    "resolve_device",
    "uses_bf16",
    "uses_channels_last",
]

LOG = get_logger("embed")
# ITU-R BT.601 luma weights, as invprop.data.tensors.convert_channels uses.
_LUMA = (0.299, 0.587, 0.114)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device `name` means; "auto" or None: the GPU when there is one, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise InvpropError(f"device {name!r} asked for, but no CUDA GPU is visible; use auto")
    return torch.device(name)


def normalisation(meta: dict[str, Any], channels: int) -> tuple[list[float], list[float]]:
    """The prepared data's per-channel mean/std, carried over to `channels` input channels.

    Same count: unchanged. 1 -> 3 (grey images for an RGB model): repeated. 3 -> 1: the
    BT.601 luma of the means (exact) and of the stds (exact for fully correlated channels,
    an upper bound otherwise; RGB channels of natural images are strongly correlated).
    """
    mean, std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
    if len(mean) == channels:
        return mean, std
    if len(mean) == 1 and channels == 3:
        return mean * 3, std * 3
    if len(mean) == 3 and channels == 1:
        return [sum(w * m for w, m in zip(_LUMA, mean, strict=True))], [
            sum(w * s for w, s in zip(_LUMA, std, strict=True))
        ]
    raise InvpropError(
        f"prepared data has {len(mean)}-channel statistics; cannot feed a {channels}-channel "
        "model (only 1 <-> 3 conversions exist)"
    )


def input_normalisation(meta: dict[str, Any], cfg: Config) -> tuple[list[float], list[float]]:
    """The mean/std the network's inputs are normalised with: ``augment.mean``/``std`` when
    set and `meta` is the pretraining dataset (the authors' fixed CIFAR constants, say), else
    the prepared data's statistics carried over to ``data.channels`` (`normalisation`). A
    `meta` naming no dataset (a checkpoint's recorded statistics) is used as it is."""
    a = cfg.augment
    if a.mean is not None and a.std is not None and meta.get("dataset") == cfg.data.name:
        return list(a.mean), list(a.std)
    return normalisation(meta, cfg.data.channels)


def _uint8_batches(
    split: Split, channels: int, batch_size: int, device: torch.device, num_workers: int
) -> Iterator[Tensor]:
    """uint8 [B, C, H, W] batches of the split, in order, on `device`, with `channels`."""
    non_blocking = device.type == "cuda"
    if isinstance(split.images, np.ndarray):  # "arrays": slice the memmap, no workers needed
        for start in range(0, len(split.images), batch_size):
            chunk = torch.from_numpy(np.array(split.images[start : start + batch_size]))
            if non_blocking:
                chunk = chunk.pin_memory()
            yield convert_channels(chunk.to(device, non_blocking=non_blocking), channels)
        return
    in_order = torch.arange(len(split)).split(batch_size)
    for images, _ in decode_batches(split, channels, in_order, device, num_workers):
        yield images


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """Whether the network runs in bf16 autocast on `device`: where cfg.pretrain.precision
    is bf16, on any device (the CPU too, so CI rehearses it); auto on CUDA only (fp32 stays
    the CPU's fast default)."""
    precision = cfg.pretrain.precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def inference_autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where cfg.pretrain.precision asks for it (`uses_bf16`), else none."""
    if not uses_bf16(cfg, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether the network runs NHWC (torch.channels_last) on `device`: where
    cfg.pretrain.channels_last is true, on any device (the CPU too, so CI rehearses it);
    auto on CUDA only (the CPU keeps the NCHW kernels its figures came from)."""
    layout = cfg.pretrain.channels_last
    return layout is True or (layout == "auto" and device.type == "cuda")


def extract(
    encoder: Encoder,
    split: Split,
    meta: dict[str, Any],
    cfg: Config,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    out_device: str | torch.device = "cpu",
    batch_statistics: bool = False,
) -> tuple[Tensor, Tensor]:
    """(features [N, F], embeddings [N, d]) of every image of `split`, in order, float32.

    Clean view only: channels converted to cfg.data.channels, then `center()` at
    cfg.data.image_size with `meta`'s statistics. The encoder (already on `device`; None
    means the encoder's own device) runs in eval mode under no_grad, in bf16 autocast when
    cfg.pretrain.precision asks (`inference_autocast`), channels_last (weights and inputs)
    where cfg.pretrain.channels_last asks (`uses_channels_last`); its train/eval mode is
    restored afterwards (its weights stay channels_last). "files" splits stream through a
    DataLoader with cfg.pretrain.num_workers workers. Results land on `out_device` (CPU by
    default, so a 1.28M-image split never has to fit on the GPU twice). With
    `batch_statistics`, BatchNorm layers use batch statistics, as in a training step, and
    refresh their running estimates.
    """
    features, embeddings = extract_outputs(
        encoder, encoder.embed, split, meta, cfg, device, batch_size, out_device, batch_statistics
    )
    return features, embeddings


@torch.no_grad()
def extract_outputs(
    encoder: torch.nn.Module,
    outputs: Callable[[Tensor], Sequence[Tensor]],
    split: Split,
    meta: dict[str, Any],
    cfg: Config,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    out_device: str | torch.device = "cpu",
    batch_statistics: bool = False,
) -> list[Tensor]:
    """`outputs(x)` ([B, F_j] tensors) of every clean image x of `split`, stacked in order
    as float32 [N, F_j]; `extract` with any representation (`encoder` sets the mode and,
    when `device` is None, the device; see `extract` for the rest)."""
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    out_device = torch.device(out_device)
    batch_size = batch_size or cfg.embed.batch_size
    channels, size = cfg.data.channels, cfg.data.image_size
    mean, std = input_normalisation(meta, cfg)
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)
    n = len(split)
    stacked: list[Tensor] = []
    pin = out_device.type == "cpu" and device.type == "cuda"

    channels_last = uses_channels_last(cfg, device)
    if channels_last:
        # In place (the values stay): the weights' layout decides where the input's cannot,
        # as a 1-channel batch is NCHW and NHWC at once.
        encoder.to(memory_format=torch.channels_last)
    was_training = encoder.training
    # batch_statistics: BatchNorm normalises with each batch's statistics, as in training
    # (and updates its running estimates); used to fill the memory bank before training.
    encoder.train(batch_statistics)
    try:
        start = 0
        batches = track(
            _uint8_batches(split, channels, batch_size, device, cfg.pretrain.num_workers),
            f"embedding the {split.name} split",
            total=-(-n // batch_size),
            images=len,
            logger=LOG,
        )
        for images in batches:
            x = center(images, size, mean_t, std_t)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with inference_autocast(cfg, device):
                rows = [row.float() for row in outputs(x)]
            if not stacked:
                stacked = [
                    torch.empty(n, row.shape[1], device=out_device, pin_memory=pin) for row in rows
                ]
            stop = start + rows[0].shape[0]
            for target, row in zip(stacked, rows, strict=True):
                target[start:stop].copy_(row, non_blocking=pin)
            start = stop
    finally:
        encoder.train(was_training)
    if pin:
        torch.cuda.synchronize(device)
    if not stacked or start != n:
        raise InvpropError(
            f"the {split.name} split yielded {start} of {n} images; nothing to embed"
        )
    return stacked


# ---------------------------------------------------------------------------------------
# Validation shared with evaluate and the CLI


def check_compatible(
    checkpoint_cfg: Config, cfg: Config, prepared: PreparedDataset, where: str
) -> None:
    """Fail with a clear message when a checkpoint cannot be applied to the prepared data.

    The checkpoint's data section (dataset, image size, channels, subset limits) must
    match the params and the prepared folder; channel counts must be convertible; each
    split must have as many labels as images.
    """
    ours, theirs = cfg.data, checkpoint_cfg.data
    for key in ("name", "image_size", "channels", "train_limit", "test_limit"):
        if getattr(ours, key) != getattr(theirs, key):
            raise InvpropError(
                f"{where} was trained with data.{key} = {getattr(theirs, key)!r} but params have "
                f"data.{key} = {getattr(ours, key)!r}; set it back, or rerun pretraining "
                "(dvc repro pretrain)"
            )
    if prepared.name != theirs.name:
        raise InvpropError(
            f"{where} was trained on {theirs.name!r} but {prepared.path} holds "
            f"{prepared.name!r}; rerun the prepare stage for {theirs.name}"
        )
    if prepared.shape[0] not in (1, 3):
        raise InvpropError(
            f"{prepared.path}/meta.json: shape {prepared.shape} must have 1 or 3 channels"
        )
    for split in (prepared.train, prepared.test):
        n_images = len(split.images)
        if n_images != len(split.labels):
            raise InvpropError(
                f"{prepared.path}: the {split.name} split has {n_images} images but "
                f"{len(split.labels)} labels; rerun the prepare stage"
            )


# ---------------------------------------------------------------------------------------
# Any folder of images, with nothing but a checkpoint: `invprop embed CKPT FOLDER --out F`

FOLDER_KEYS = ("features", "embeddings", "labels", "paths", "classes", "meta")


def embed_folder(
    checkpoint: str | Path,
    folder: str | Path,
    out: str | Path,
    batch_size: int = 256,
    device: str | torch.device | None = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Embed every image of `folder` (class sub-folders, or a flat folder: labels -1) with
    the checkpoint's recorded preprocessing, and write `out` (.npz, atomically; an existing
    `out` only with `force`):

        features [N, F] float32   embeddings [N, d] float32   labels [N] int64
        paths [N] str (relative to folder)   classes [C] str   meta: JSON str

    Returns the meta (checkpoint, its sha256 and epoch, folder, counts, preprocessing).
    """
    folder, out = Path(folder), Path(out)
    check_output_file(out, force, inputs=(Path(checkpoint),))
    state = load_checkpoint(checkpoint)
    pre = checkpoint_preprocessing(state, str(checkpoint))
    scanned = scan_folder(folder, "pass a folder of images, or of class sub-folders of images")
    classes = sorted(name for name in scanned if name is not None)
    files: list[str] = []
    labels: list[int] = []
    for name, paths in scanned.items():
        files += [p.relative_to(folder).as_posix() for p in paths]
        labels += [-1 if name is None else classes.index(name)] * len(paths)
    shape = (pre["channels"], pre["stored_size"], pre["stored_size"])
    images = ImageFiles(folder, files, shape, rerun="rerun invprop embed")
    split = Split(folder.name, images, np.asarray(labels, np.int64))
    dev = resolve_device(device)
    encoder, cfg, _ = encoder_from_checkpoint(state, dev)
    statistics = {"mean": pre["mean"], "std": pre["std"]}
    features, embeddings = extract(encoder, split, statistics, cfg, dev, batch_size)
    meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "epoch": int(state["epoch"]),
        "folder": str(folder),
        "counts": {"images": len(files), "labelled": int(sum(label >= 0 for label in labels))},
        "preprocessing": pre,
    }
    arrays = {
        "features": features.numpy(),
        "embeddings": embeddings.numpy(),
        "labels": split.labels,
        "paths": np.asarray(files, dtype=str),
        "classes": np.asarray(classes, dtype=str),
        "meta": np.asarray(json.dumps(meta, sort_keys=True)),
    }
    with atomic_file(out) as tmp:
        save_npz(tmp, arrays)
    LOG.info(f"{len(files)} images of {folder} -> {out}")
    return meta


def load_folder_embeddings(path: str | Path) -> dict[str, Any]:
    """An `invprop embed CKPT FOLDER` output: its arrays, classes as a list, meta as a dict."""
    arrays = load_npz(path, "folder embeddings")
    missing = [key for key in FOLDER_KEYS if key not in arrays]
    if missing:
        raise InvpropError(
            f"{path} lacks array {missing[0]!r}; write it with invprop embed CKPT FOLDER --out"
        )
    return arrays | {
        "classes": [str(c) for c in arrays["classes"]],
        "meta": json.loads(str(arrays["meta"])),
    }


def embed_checkpoint(
    cfg: Config,
    checkpoint: str | Path,
    prepared: PreparedDataset,
    tag: str,
    device: str | torch.device | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train and test features, embeddings and labels of `checkpoint` on `prepared`, and
    their meta: the contents of an embeddings artifact (invprop.workspace.EmbeddingSet).

    The meta holds no timings or device names, so the same inputs give the same artifact.
    """
    checkpoint = Path(checkpoint)
    dev = resolve_device(device if device is not None else cfg.pretrain.device)
    state = load_checkpoint(checkpoint)
    encoder, ckpt_cfg, state = encoder_from_checkpoint(state, dev)
    check_compatible(ckpt_cfg, cfg, prepared, str(checkpoint))
    if state.get("params_hash") != training_hash(cfg):
        LOG.info(
            f"note: {checkpoint} was trained with other pretrain params than params.yaml has "
            "now (training hash differs); embedding it as it is"
        )
    LOG.info(f"{tag}: {checkpoint} (epoch {state['epoch']}) on {dev}")
    arrays: dict[str, np.ndarray] = {}
    for split in (prepared.train, prepared.test):
        features, embeddings = extract(encoder, split, prepared.meta, cfg, dev)
        arrays[f"{split.name}_features"] = features.numpy().astype(np.float32, copy=False)
        arrays[f"{split.name}_embeddings"] = embeddings.numpy().astype(np.float32, copy=False)
        arrays[f"{split.name}_labels"] = np.asarray(split.labels, dtype=np.int64)
    meta = {
        "tag": tag,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "epoch": int(state["epoch"]),
        "dataset": prepared.name,
        "training_hash": state.get("params_hash"),
        "num_classes": len(prepared.classes),
        "counts": {"train": len(prepared.train), "test": len(prepared.test)},
        "dims": {"features": encoder.feature_dim, "embeddings": encoder.dim},
    }
    return arrays, meta
