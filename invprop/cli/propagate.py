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
    SHOW_OPTION,
    TAG_OPTION,
    command,
    number_or_na,
    print_json,
    print_table,
    show_anchor,
)

app = typer.Typer(
    help="Inspect propagated positives (per hop, per epoch, per image).", no_args_is_help=True
)


@command(app, "stats")
def stats(tag: str = TAG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Mean set size and label purity per hop (cumulative and new) and against epoch.

    Example: invprop propagate stats --tag final --json
    """
    from invprop.workspace import load_propagation_stats

    data = load_propagation_stats(tag)
    if as_json:
        print_json(data)
        return
    rows = []
    for row in data["per_hop"]:
        c, new = row["cumulative"], row["new"]
        rows.append(
            (
                row["hop"],
                c["size"],
                number_or_na(c["purity"]),
                c["hard_size"],
                number_or_na(c["hard_purity"]),
                number_or_na(c["easy_purity"]),
                new["size"],
                number_or_na(new["purity"]),
            )
        )
    print_table(
        f"propagation over graph {tag} (k={data['k']}, P={data['n_pos']}, "
        f"chance purity {number_or_na(data.get('chance_purity'))})",
        [
            "hop",
            "size",
            "purity",
            "hard size",
            "hard purity",
            "easy purity",
            "new size",
            "new purity",
        ],
        rows,
    )
    if data.get("epochs"):
        print_table(
            f"purity within {data['hops']} hops of the bank's table, by checkpoint",
            ["checkpoint", "epoch", "k", "coverage", "purity", "hard purity", "easy purity"],
            [
                (
                    e["tag"],
                    e["epoch"],
                    e["k"],
                    e["coverage"],
                    number_or_na(e["purity"]["all"]),
                    number_or_na(e["purity"]["hard"]),
                    number_or_na(e["purity"]["easy"]),
                )
                for e in data["epochs"]
            ],
        )


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
