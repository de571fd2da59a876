"""`invprop graph ...`: what the k-NN graph of the embeddings found.

    invprop graph neighbours 123 --out grid.png   # one image, its neighbours and positives

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli.common import (
    JSON_OPTION,
    PARAMS_OPTION,
    SHOW_OPTION,
    TAG_OPTION,
    command,
    show_anchor,
)

app = typer.Typer(help="Inspect the k-NN graph of the embeddings.", no_args_is_help=True)


@command(app, "neighbours")
def neighbours(
    index: int = typer.Argument(..., help="Train image index."),
    tag: str = TAG_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Write a PNG grid here."),
    params: Path = PARAMS_OPTION,
    show: int = SHOW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Nearest neighbours, propagated positives per hop and hard positives of one image.

    Example: invprop graph neighbours 123 --out reports/neighbours_123.png
    """
    show_anchor(tag, index, None, params, out, show, as_json, neighbours=True)
