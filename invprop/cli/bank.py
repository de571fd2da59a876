"""`invprop bank ...`: what a checkpoint's memory bank holds.

    invprop bank stats models/pretrain/final.pt    # norms, coverage, duplicates, purity

Heavy imports (torch) happen inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli.common import JSON_OPTION, command, print_json, print_table

app = typer.Typer(help="Inspect the memory bank of a checkpoint.", no_args_is_help=True)


@command(app, "stats")
def bank(
    checkpoint: Path = typer.Argument(..., help="A checkpoint, e.g. models/pretrain/final.pt."),
    hops: int | None = typer.Option(
        None, "--hops", help="Hops for the duplicate rate (default: the run's)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Bank vector norms, table coverage, duplicates of the authors' concatenation, purity.

    Example: invprop bank stats models/pretrain/final.pt --json
    """
    from invprop.checkpoint import load_checkpoint
    from invprop.positive_sets import bank_stats
    from invprop.tables import percent
    from invprop.workspace import prepared_dir, prepared_train_labels

    state = load_checkpoint(checkpoint)
    dataset = state.get("config", {}).get("data", {}).get("name")
    labels, labels_from = None, None
    if dataset and prepared_dir(dataset).is_dir():
        labels = prepared_train_labels(dataset)
        labels_from = str(prepared_dir(dataset))
    data = bank_stats(state, labels, hops, where=str(checkpoint))
    data |= {"checkpoint": str(checkpoint), "labels_from": labels_from}
    if as_json:
        print_json(data)
        return
    norms = data["norms"]
    filled = round(data["coverage"] * data["n"])
    print_table(
        f"memory bank of {checkpoint} (epoch {data['epoch']})",
        ["figure", "value"],
        [
            ("n x dim", f"{data['n']} x {data['dim']}"),
            ("table k", data["k"]),
            (
                "vector norm min / mean / max",
                f"{norms['min']:.4f} / {norms['mean']:.4f} / {norms['max']:.4f}",
            ),
            ("table rows filled", f"{filled:,} of {data['n']:,} ({percent(data['coverage'])}%)"),
            ("table entries filled", f"{percent(data['entry_coverage'])}%"),
            (
                f"concat duplicate rate ({data['hops']} hops)",
                f"{percent(data['concat_duplicate_rate'])}%",
            ),
            ("neighbour label purity", f"{percent(data['neighbour_purity'])}%"),
            ("labels from", labels_from or "not found"),
        ],
    )
