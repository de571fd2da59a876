"""`invprop propagate ...`: which positives propagation found, per hop, epoch and image.

    invprop propagate stats                        # set size and purity per hop and epoch
    invprop propagate show 123 --hops 2            # positives of one image within 2 hops

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli.common import (
    JSON_OPTION,
    PARAMS_OPTION,
    PROPAGATION_TAG_OPTION,
    SHOW_OPTION,
    TAG_OPTION,
    command,
    print_json,
    print_tables,
    show_anchor,
)

app = typer.Typer(
    help="Inspect propagated positives (per hop, per epoch, per image).", no_args_is_help=True
)


@command(app, "stats")
def stats(tag: str = PROPAGATION_TAG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Mean set size and label purity (%) per hop (cumulative and new) and against epoch.

    Example: invprop propagate stats --tag final --json
    """
    from invprop.tables import StageReports, propagation_table, purity_epoch_table
    from invprop.workspace import REPORTS_DIR, load_propagation_stats

    data = load_propagation_stats(tag)
    if as_json:
        print_json(data)
        return
    tables = [propagation_table(data, StageReports(REPORTS_DIR).get(f"graph_{tag}"))]
    if data.get("epochs"):
        tables.append(purity_epoch_table(data))
    print_tables(tables)


@command(app, "show")
def show_positives(
    index: int = typer.Argument(..., help="Train image index."),
    hops: int | None = typer.Option(None, "--hops", help="Hops to walk (default propagate.hops)."),
    tag: str = TAG_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Write a PNG grid here."),
    params: Path = PARAMS_OPTION,
    show: int = SHOW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Positives of one image within --hops hops: each hop's new members, hard and easy.

    Example: invprop propagate show 123 --hops 2 --out reports/positives_123.png
    """
    show_anchor(tag, index, hops, params, out, show, as_json, neighbours=False)
