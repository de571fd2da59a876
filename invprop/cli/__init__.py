"""The `invprop` command: one Typer app with a sub-app per noun.

Sub-apps import torch, faiss and friends inside their commands only, so `invprop --help`
answers quickly.
"""

from __future__ import annotations

import sys

import typer

from invprop.cli import bank, ckpt, data, graph, knn, metrics, params, propagate
from invprop.cli.common import command
from invprop.errors import InvpropError

app = typer.Typer(
    help="Invariance Propagation: inspect datasets, checkpoints, graphs and metrics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(params.app, name="params")
app.add_typer(data.app, name="data")
app.add_typer(ckpt.app, name="ckpt")
app.add_typer(graph.app, name="graph")
app.add_typer(propagate.app, name="propagate")
app.add_typer(bank.app, name="bank")
knn.register(app)
metrics.register(app)


@command(app, "stage", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def stage(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Stage name, as in dvc.yaml (prepare, pretrain, ...)."),
) -> None:
    """Run one pipeline stage with the same code DVC and Snakemake call.

    Extra arguments go to the stage, e.g. invprop stage prepare fashion_mnist --set seed=1
    """
    from invprop.pipeline import STAGES, main

    if name not in STAGES:
        raise InvpropError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    raise typer.Exit(main(name, ctx.args))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
