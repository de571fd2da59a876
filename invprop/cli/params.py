"""`invprop params show|diff|apply`: the resolved config, two configs side by side, presets."""

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
