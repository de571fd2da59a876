"""Checkpoints: atomic writes, safe loads, and rebuilding the encoder they hold.

A checkpoint is a plain dict of tensors and primitives, loaded with
`torch.load(weights_only=True)`, so a file can never run code. Keys:

    version       int, CHECKPOINT_VERSION
    epoch         int, epochs completed (0 = before training)
    params_hash   str, training_hash(config) of the run that wrote it
    config        dict, training_params(config) of that run: the sections a training reads
    model         Encoder state_dict
    bank          MemoryBank state_dict (vectors [n, d], neighbours [n, k])
    optimizer     optimizer state_dict
    history       list of per-epoch metric dicts (what dvclive logged)
    preprocessing how images become network inputs, so a checkpoint alone embeds any image
                  (`invprop embed CKPT FOLDER`): image_size, channels, mean, std (after
                  conversion to `channels`), stored_size (the side images are decoded to
                  before `invprop.augment.center` resizes them to image_size)

No RNG state: every random draw of training is a function of (seed, epoch, sample index)
or (seed, epoch), so a resumed run needs none.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from invprop.config import Config, config_from_dict, params_hash, with_current_names
from invprop.errors import InvpropError
from invprop.io import atomic_file, ensure_free_space
from invprop.models import Encoder

__all__ = [
    "CHECKPOINT_VERSION",
    "build_encoder",
    "checkpoint_config",
    "checkpoint_preprocessing",
    "encoder_from_checkpoint",
    "image_preprocessing",
    "load_checkpoint",
    "save_checkpoint",
    "tensor_bytes",
    "training_hash",
    "training_params",
]

CHECKPOINT_VERSION = 1

# Pretrain keys that do not change what training computes: editing them keeps a run.
# Params that change how a run is carried out, not what it computes (processes, nodes: DDP
# gives the same training up to float noise, tests/test_distributed.py, tests/test_slurm.py).
BOOKKEEPING_KEYS = (
    "snapshot_epochs",
    "device",
    "threads",
    "num_workers",
    "processes",
    "nodes",
    "monitor_knn",
    "compile",
    "channels_last",
)


# The params sections a training reads (the pretrain stage's tracked params, but for
# embed.batch_size, which only sets the batches of the initial bank fill).
TRAINING_SECTIONS = ("seed", "data", "model", "augment", "pretrain")


def training_params(cfg: Config) -> dict[str, Any]:
    """The sections of `cfg` a training reads: what a checkpoint records as its config.

    Nothing else, so a checkpoint's bytes depend on no param its stage does not track.
    """
    return cfg.to_dict(*TRAINING_SECTIONS)


def training_hash(cfg: Config) -> str:
    """Hash of every param that changes what pretraining computes (a resume needs a match)."""
    params = training_params(cfg)
    params["pretrain"] = {k: v for k, v in params["pretrain"].items() if k not in BOOKKEEPING_KEYS}
    return params_hash(params)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically: temp file, fsync, rename; the old file stays until then."""
    path = Path(path)
    ensure_free_space(path.parent, tensor_bytes(state), f"checkpoint {path.name}")
    # Saved through a file object: torch.save names the records inside the zip after the
    # file it is given, and the temporary name differs on every write.
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        torch.save(_canonical(state), handle)


def _canonical(obj: Any) -> Any:
    """`obj` rebuilt with fresh containers and interned strings. Pickle writes an object it
    has met before as a reference to it, by identity: so that equal contents give equal
    bytes, equal strings must be one object and containers never shared (a state built
    in training and the same state loaded from a checkpoint differ in both)."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(key): _canonical(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(value) for value in obj)
    return obj


def tensor_bytes(state: Any) -> int:
    """Bytes of every tensor in a nested state (dicts, lists, tuples): a checkpoint's size
    but for its zip records and small non-tensor entries."""
    return sum(t.numel() * t.element_size() for t in _tensors(state))


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely, with clear errors for missing, truncated or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise InvpropError(f"checkpoint not found: {path}; run the pretrain stage first")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise InvpropError(
                f"{path} is not a torch checkpoint (not a zip archive); "
                "pass a file written by the pretrain stage"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InvpropError(
            f"checkpoint {path} holds pickled objects other than tensors and plain containers; "
            "refusing to load it (no code runs from a file). Re-create it with invprop"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise InvpropError(
            f"checkpoint {path} is truncated or corrupt ({exc.__class__.__name__}); "
            "delete it and rerun pretraining (or restore it with `dvc checkout`)"
        ) from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise InvpropError(
            f"{path} is not an invprop checkpoint (version {CHECKPOINT_VERSION}); "
            "pass a file written by the pretrain stage"
        )
    return state


def image_preprocessing(
    cfg: Config, stored_shape: tuple[int, ...], mean: list[float], std: list[float]
) -> dict[str, Any]:
    """The checkpoint's `preprocessing` record (see the module docstring)."""
    return {
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "stored_size": int(stored_shape[-1]),
    }


def checkpoint_preprocessing(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The `preprocessing` record of a checkpoint; an error naming the fix when absent."""
    record = state.get("preprocessing")
    if not record:
        raise InvpropError(
            f"{where} records no image preprocessing (written before invprop recorded it); "
            "rerun pretraining, or embed its prepared dataset with the embed stage"
        )
    return dict(record)


def checkpoint_config(state: dict[str, Any]) -> Config:
    """The validated config of the run that wrote `state` (one written before a params key
    or value was renamed, such as the heads 'mlp' and 'mlp_bn', reads under the current
    names). Only its TRAINING_SECTIONS are the run's; the others hold the defaults."""
    return config_from_dict(with_current_names(state["config"]))


def build_encoder(cfg: Config) -> Encoder:
    """The encoder `cfg` describes, initialised deterministically from `cfg.seed`.

    Pretraining starts from exactly this network, so it doubles as the random-init baseline.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = cfg.model
        return Encoder(model.backbone, cfg.data.channels, model.head, model.dim, model.head_init)
    finally:
        torch.random.set_rng_state(generator_state)


def encoder_from_checkpoint(
    source: str | Path | dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[Encoder, Config, dict[str, Any]]:
    """Rebuild the trained encoder of a checkpoint (a path or a loaded state), in eval mode."""
    state = source if isinstance(source, dict) else load_checkpoint(source)
    cfg = checkpoint_config(state)
    encoder = build_encoder(cfg)
    encoder.load_state_dict(state["model"])
    return encoder.to(device).eval(), cfg, state
