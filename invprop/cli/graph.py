"""`invprop graph ...`: what the k-NN graph of the embeddings found.

    invprop graph neighbours 123 --out grid.png   # one image, its neighbours and positives

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli import common

app = typer.Typer(help="Inspect the k-NN graph of the embeddings.", no_args_is_help=True)


@common.command(app, "neighbours")
def neighbours(
    index: int = typer.Argument(..., help="Train image index."),
    tag: str = common.TAG_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Write a PNG grid here."),
    params: Path = common.PARAMS_OPTION,
    show: int = common.SHOW_OPTION,
    as_json: bool = common.JSON_OPTION,
) -> None:
    """Nearest neighbours, propagated positives per hop and hard positives of one image.

    Example: invprop graph neighbours 123 --out reports/neighbours_123.png
    """
    common.show_anchor(tag, index, None, params, out, show, as_json, neighbours=True)
