"""`invprop params show|diff|apply|cost`: the resolved config, two configs side by side,
presets, and what a run of them costs."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from invprop.cli.common import JSON_OPTION, command, print_json, print_table
from invprop.config import apply_preset, config_diff, load_config

app = typer.Typer(help="Show, compare and change params.yaml.", no_args_is_help=True)

SET_OPTION = typer.Option(
    [], "--set", metavar="KEY=VALUE", help="Override one param, e.g. --set pretrain.epochs=2."
)


@command(app, "show")
def show(
    params: Path = typer.Option(Path("params.yaml"), help="Params file."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the resolved, validated config (defaults filled in).

    Example: invprop params show --set pretrain.epochs=10
    """
    cfg = load_config(params, overrides)
    if as_json:
        print_json(cfg.to_dict())
    else:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())


@command(app, "diff")
def diff(
    first: Path = typer.Argument(..., help="A params file or preset."),
    second: Path = typer.Argument(..., help="Another params file or preset."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the keys whose resolved values differ between two params files.

    Example: invprop params diff params.yaml presets/fmnist-gpu.yaml
    """
    changed = config_diff(load_config(first), load_config(second))
    if as_json:
        print_json({key: {"first": a, "second": b} for key, (a, b) in changed.items()})
    else:
        rows = [(key, a, b) for key, (a, b) in changed.items()]
        print_table(f"{first} vs {second}", ["key", str(first), str(second)], rows)


@command(app, "apply")
def apply(
    preset: Path = typer.Argument(..., help="A preset, e.g. presets/fmnist-gpu.yaml."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file to update."),
    fresh: bool = typer.Option(
        False, "--fresh", help="Reset every value to its default first: defaults + this preset."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge a preset into params.yaml (validated first; comments kept).

    Presets stack: values an earlier change set and this preset does not are kept, and
    listed; --fresh starts from the defaults instead.

    Example: invprop params apply --fresh presets/fmnist-gpu.yaml && dvc repro
    """
    applied = apply_preset(params, preset, fresh=fresh)
    if as_json:
        print_json(
            {
                "changed": {k: {"old": a, "new": b} for k, (a, b) in applied.changed.items()},
                "kept": {k: b for k, (_, b) in applied.kept.items()},
            }
        )
        return
    typer.echo(f"applied {preset} to {params}: {len(applied.changed)} value(s) changed")
    for key, (old, new) in applied.changed.items():
        typer.echo(f"  {key}: {old!r} -> {new!r}")
    if applied.kept:
        typer.echo(
            f"kept {len(applied.kept)} earlier value(s) that differ from the defaults and "
            "that this preset does not set (--fresh resets them):"
        )
        for key, (default, value) in applied.kept.items():
            typer.echo(f"  {key}: {value!r} (default {default!r})")


def _flops(value: float) -> str:
    """FLOPs with an SI prefix: 3.36 GFLOP."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def _bytes(value: float) -> str:
    """Bytes with a binary prefix: 29.3 MiB."""
    for prefix, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}B"
    return f"{value:.0f} B"


@command(app, "cost")
def cost(
    params: Path = typer.Option(
        Path("params.yaml"), help="Params file, or a preset (its keys over the defaults)."
    ),
    overrides: list[str] = SET_OPTION,
    train_images: int | None = typer.Option(
        None, "--train-images", min=1, help="Train images (the bank's rows); default: the data's."
    ),
    test_images: int | None = typer.Option(
        None, "--test-images", min=1, help="Test images; default: the data's."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """What a run of these params costs, before it runs: FLOPs per trained image (one
    training step counted with torch's FlopCounterMode), bank, table and step memory, and
    the disk its checkpoints and artifacts take (invprop.cost says how each is found).

    The data's size comes from the prepared data, else the dataset's published splits;
    an image folder needs --train-images and --test-images.

    Examples: invprop params cost --params presets/fmnist-gpu.yaml
              invprop params cost --params presets/imagenet-authors.yaml
                  --train-images 1281167 --test-images 50000
    """
    from invprop.cost import run_cost, split_sizes  # torch loads only for this command

    cfg = load_config(params, overrides)
    result = run_cost(cfg, split_sizes(cfg, train_images, test_images))
    if as_json:
        print_json({"params": str(params), **result})
        return
    f, memory, disk = result["flops"], result["memory_bytes"], result["disk_bytes"]
    batch = min(cfg.pretrain.batch_size, result["train_images"])
    rows: list[tuple[str, str]] = [
        ("train / test images", f"{result['train_images']} / {result['test_images']}"),
        ("  from", result["sizes_from"]),
        ("epochs x steps", f"{result['epochs']} x {result['steps_per_epoch']} (batch {batch})"),
        ("FLOPs per trained image", _flops(f["step_per_image"])),
        ("  encoder, forward + backward", _flops(f["encoder_step_per_image"])),
        ("  augmentation (blur)", _flops(f["augment_per_image"])),
        ("  similarities to the bank", _flops(f["bank_and_loss_per_image"])),
        ("FLOPs per forward pass (eval)", _flops(f["forward_per_image"])),
    ]
    for run, parts in f["per_epoch"].items():
        detail = ", ".join(f"{name.replace('_', ' ')} {_flops(v)}" for name, v in parts.items())
        rows.append((f"FLOPs per epoch, {run}", f"{_flops(sum(parts.values()))} ({detail})"))
    rows += [(f"FLOPs of training, {run}", _flops(v)) for run, v in f["training"].items()]
    rows += [
        ("FLOPs of embed and evaluate", _flops(f["embed_and_evaluate"])),
        ("FLOPs in all", _flops(f["total"])),
        ("memory: bank (fp32)", _bytes(memory["bank"])),
        ("memory: neighbour table (int64)", _bytes(memory["table"])),
        ("memory: a step's similarities", _bytes(memory["similarities"])),
        ("memory: a step's top-M", _bytes(memory["top_m"])),
        (
            "memory: model / SGD momenta",
            f"{_bytes(memory['model'])} / {_bytes(memory['optimizer'])}",
        ),
        ("disk: checkpoint", _bytes(disk["checkpoint"])),
        ("  written per epoch (last.pt)", _bytes(disk["written_per_epoch"])),
        ("  kept per snapshot", _bytes(disk["per_snapshot"])),
        ("disk: embeddings per tag", _bytes(disk["embeddings_per_tag"])),
        ("disk: graph per tag", _bytes(disk["graph_per_tag"])),
        ("disk: everything kept", _bytes(disk["total"])),
    ]
    print_table(f"cost of {params}", ["figure", "value"], rows)
