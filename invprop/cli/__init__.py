"""The `invprop` command: one Typer app with a sub-app per noun.

Sub-apps import torch, faiss and friends inside their commands only, so `invprop --help`
answers quickly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from invprop import __version__
from invprop.cli import (
    bank,
    ckpt,
    data,
    embed,
    graph,
    knn,
    metrics,
    params,
    propagate,
    share,
    study,
)
from invprop.cli.common import JSON_OPTION, OneLineErrors, command, fail, print_json
from invprop.errors import InvpropError
from invprop.logs import setup_logging

app = typer.Typer(
    cls=OneLineErrors,
    help="Invariance Propagation: inspect datasets, checkpoints, graphs and metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"invprop {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print warnings and errors only."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Invariance Propagation: inspect datasets, checkpoints, graphs and metrics."""
    try:
        setup_logging(int(verbose) - int(quiet))
    except InvpropError as exc:
        fail(exc)


app.add_typer(params.app, name="params")
app.add_typer(data.app, name="data")
app.add_typer(ckpt.app, name="ckpt")
app.add_typer(graph.app, name="graph")
app.add_typer(propagate.app, name="propagate")
app.add_typer(bank.app, name="bank")
embed.register(app)
knn.register(app)
metrics.register(app)
study.register(app)
share.register(app)


def _stage_names(incomplete: str = "") -> list[str]:
    from invprop.pipeline import STAGES  # imported on use: it loads the workspace (numpy)

    return [name for name in STAGES if name.startswith(incomplete)]


def _stage_name(value: str) -> str:
    names = _stage_names()
    if value not in names:
        choices = ", ".join(repr(name) for name in names)
        raise typer.BadParameter(f"{value!r} is not one of {choices}.")
    return value


@command(app, "stage", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def stage(
    ctx: typer.Context,
    name: str = typer.Argument(
        ..., parser=_stage_name, autocompletion=_stage_names, help="Stage name, as in dvc.yaml."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run one pipeline stage with the same code DVC and Snakemake call.

    Extra arguments go to the stage, e.g. invprop stage prepare fashion_mnist --set seed=1.
    With --json, prints the exit status and the reports/*.json files the stage wrote.
    """
    from invprop.pipeline import main

    before = _report_times()
    status = main(name, ctx.args)
    if as_json:
        written = {
            str(path): json.loads(path.read_text())
            for path, mtime in _report_times().items()
            if before.get(path) != mtime
        }
        print_json({"stage": name, "args": ctx.args, "exit_status": status, "written": written})
    raise typer.Exit(status)


def _report_times() -> dict[Path, int]:
    from invprop.workspace import REPORTS_DIR

    return {path: path.stat().st_mtime_ns for path in REPORTS_DIR.glob("*.json")}


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
