"""`invprop ckpt show|diff|export`: what a pretraining checkpoint holds, how two differ,
and its backbone written for other libraries.

    invprop ckpt show models/pretrain/final.pt             # epoch, params, shapes, metrics
    invprop ckpt show models/pretrain/last.pt --json
    invprop ckpt diff models/instance_discrimination/final.pt models/pretrain/final.pt
    invprop ckpt export models/pretrain/final.pt --format onnx --out backbone.onnx

Checkpoints load with `invprop.checkpoint.load_checkpoint` (weights only, so a file can
never run code); torch is imported inside the commands, so `invprop --help` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import typer

from invprop.cli.common import FORCE_OPTION, JSON_OPTION, command, print_json, print_table
from invprop.config import config_diff
from invprop.errors import InvpropError

app = typer.Typer(
    help="Inspect pretraining checkpoints (models/pretrain/*.pt) and export their backbones.",
    no_args_is_help=True,
)

CHECKPOINT_ARGUMENT = typer.Argument(
    ..., help="A checkpoint written by pretrain, e.g. models/pretrain/final.pt."
)
REQUIRED_KEYS = ("epoch", "params_hash", "config", "model", "bank")
# invprop.export.FORMATS, spelled here so that `--help` loads no torch (a test keeps them equal)
ExportFormat = Literal["torchvision", "timm", "safetensors", "onnx"]


def _load(path: Path) -> dict[str, Any]:
    """Load `path` safely, as a one-line InvpropError when it is not an invprop checkpoint."""
    from invprop.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise InvpropError(
            f"{path} is not a complete invprop checkpoint: no {', '.join(missing)}; "
            "pass a file written by the pretrain stage"
        )
    return state


def _shapes(tensors: dict[str, Any]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in tensors.items() if hasattr(t, "shape")}


def _tensors_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def summarise(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The facts `ckpt show` prints, as plain data."""
    from invprop.checkpoint import checkpoint_config, training_hash

    cfg = checkpoint_config(state)
    history = list(state.get("history") or [])
    bank = state["bank"]
    neighbours = bank.get("neighbours")
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "version": state["version"],
        "epoch": int(state["epoch"]),
        "epochs": cfg.pretrain.epochs,
        "params_hash": state["params_hash"],
        # False: the stored config does not match the hash it was saved with (edited file).
        "params_hash_matches_config": training_hash(cfg) == state["params_hash"],
        "dataset": cfg.data.name,
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "backbone": cfg.model.backbone,
        "head": cfg.model.head,
        "dim": cfg.model.dim,
        "invp": cfg.pretrain.invp,
        "model_parameters": sum(int(t.numel()) for t in state["model"].values()),
        "bank": _shapes(bank),
        # Rows of the neighbour table never filled yet (-1), e.g. with bank_init: random.
        "bank_unfilled_rows": (
            int((neighbours < 0).any(dim=1).sum()) if neighbours is not None else None
        ),
        "has_optimizer": "optimizer" in state,
        "history_length": len(history),
        "last_epoch": history[-1] if history else None,
    }


@command(app, "show")
def show(checkpoint: Path = CHECKPOINT_ARGUMENT, as_json: bool = JSON_OPTION) -> None:
    """Summarise a checkpoint: epoch, params hash, data and model, bank shapes, metrics.

    Example: invprop ckpt show models/pretrain/final.pt --json
    """
    info = summarise(checkpoint, _load(checkpoint))
    if as_json:
        print_json(info)
        return
    shapes = ", ".join(f"{name} {shape}" for name, shape in info["bank"].items())
    stale = "" if info["params_hash_matches_config"] else " (does not match the stored config)"
    rows = [
        ("epoch", f"{info['epoch']} of {info['epochs']}"),
        ("params hash", info["params_hash"] + stale),
        ("dataset", f"{info['dataset']} ({info['channels']}x{info['image_size']}px)"),
        ("model", f"{info['backbone']} + {info['head']} head, dim {info['dim']}"),
        ("parameters", f"{info['model_parameters']:,}"),
        ("method", "InvP" if info["invp"] else "instance discrimination"),
        ("bank", shapes),
        ("unfilled table rows", info["bank_unfilled_rows"]),
        ("optimizer state", "yes" if info["has_optimizer"] else "no"),
        ("history", f"{info['history_length']} epochs"),
        ("file size", f"{info['size_bytes'] / 1e6:.2f} MB"),
    ]
    print_table(str(checkpoint), ["field", "value"], rows)
    if info["last_epoch"]:
        print_table(
            f"epoch {info['last_epoch'].get('epoch', info['epoch'])} metrics",
            ["metric", "value"],
            [(k, v) for k, v in info["last_epoch"].items() if k != "epoch"],
        )


def compare(a: Path, state_a: dict[str, Any], b: Path, state_b: dict[str, Any]) -> dict[str, Any]:
    """The facts `ckpt diff` prints: per field {"a", "b"}, differing params, equal tensors."""
    from invprop.checkpoint import checkpoint_config

    params = config_diff(checkpoint_config(state_a), checkpoint_config(state_b))
    return {
        "a": str(a),
        "b": str(b),
        "epoch": {"a": int(state_a["epoch"]), "b": int(state_b["epoch"])},
        "params_hash": {"a": state_a["params_hash"], "b": state_b["params_hash"]},
        "size_bytes": {"a": a.stat().st_size, "b": b.stat().st_size},
        "history_length": {
            "a": len(state_a.get("history") or []),
            "b": len(state_b.get("history") or []),
        },
        # Same hash: one run could resume the other (bookkeeping keys may still differ).
        "same_training_params": state_a["params_hash"] == state_b["params_hash"],
        "params": {key: {"a": va, "b": vb} for key, (va, vb) in params.items()},
        "model_equal": _tensors_equal(state_a["model"], state_b["model"]),
        "bank_equal": _tensors_equal(state_a["bank"], state_b["bank"]),
    }


@command(app, "diff")
def diff(
    a: Path = typer.Argument(..., help="First checkpoint."),
    b: Path = typer.Argument(..., help="Second checkpoint."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare two checkpoints: params that differ, epochs, hashes, sizes, equal weights.

    Example: invprop ckpt diff models/instance_discrimination/final.pt models/pretrain/final.pt
    """
    result = compare(a, _load(a), b, _load(b))
    if as_json:
        print_json(result)
        return
    rows: list[tuple[Any, ...]] = [
        (field, result[field]["a"], result[field]["b"])
        for field in ("epoch", "params_hash", "size_bytes", "history_length")
    ]
    rows += [(f"params: {key}", v["a"], v["b"]) for key, v in result["params"].items()]
    rows += [
        ("model weights", "equal" if result["model_equal"] else "differ", ""),
        ("bank and table", "equal" if result["bank_equal"] else "differ", ""),
    ]
    print_table(f"{a} vs {b}", ["field", "a", "b"], rows)
    if not result["params"]:
        typer.echo("The two configs are identical.")


@command(app, "export")
def export(
    checkpoint: Path = CHECKPOINT_ARGUMENT,
    fmt: ExportFormat = typer.Option(
        ...,
        "--format",
        help="torchvision or timm: a state dict for their ResNet-50; safetensors: tensors with "
        "the preprocessing as metadata; onnx: the backbone with pooling, batch axis dynamic.",
    ),
    out: Path = typer.Option(..., "--out", help="The file to write."),
    head: bool = typer.Option(
        False, "--head", help="Also the projection head (safetensors and onnx)."
    ),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the backbone (nothing else: no bank, optimizer or history) for use elsewhere.

    Prints a runnable Python file that loads it and preprocesses images as invprop does.

    Example: invprop ckpt export models/pretrain/final.pt --format onnx --out backbone.onnx
    """
    from invprop.export import export_backbone

    result = export_backbone(checkpoint, fmt, out, head=head, force=force)
    if as_json:
        print_json(asdict(result))
        return
    typer.echo(result.code, nl=False)
