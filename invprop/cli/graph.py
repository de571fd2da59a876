"""`invprop graph|propagate|bank ...`: what the k-NN graph and propagation found.

    invprop graph neighbours 123 --out grid.png   # one image, its neighbours and positives
    invprop propagate stats                        # set size and purity per hop and epoch
    invprop propagate show 123 --hops 2            # positives of one image within 2 hops
    invprop bank stats models/pretrain/final.pt    # norms, coverage, duplicates, purity

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from invprop.cli.common import JSON_OPTION, command, print_json, print_table

graph_app = typer.Typer(help="Inspect the k-NN graph of the embeddings.", no_args_is_help=True)
propagate_app = typer.Typer(
    help="Inspect propagated positives (per hop, per epoch, per image).", no_args_is_help=True
)
bank_app = typer.Typer(help="Inspect the memory bank of a checkpoint.", no_args_is_help=True)

TAG_OPTION = typer.Option("final", "--tag", help="Embeddings tag: final or epoch_NNNN.")
PARAMS_OPTION = typer.Option(
    Path("params.yaml"), "--params", help="Params file (propagate.k, hops, n_pos)."
)
SHOW_OPTION = typer.Option(8, "--show", min=1, max=32, help="Images per row of the PNG grid.")


# ---------------------------------------------------------------------------------------
# Shared helpers


def _propagate_params(params: Path) -> Any:
    from invprop.config import Config, load_config

    return load_config(params).propagate if params.exists() else Config().propagate


def _show_inspection(
    tag: str,
    index: int,
    hops: int | None,
    params: Path,
    out: Path | None,
    show: int,
    as_json: bool,
    neighbours: bool,
) -> None:
    """What `graph neighbours` and `propagate show` print (and draw, with --out)."""
    from invprop.inspect import draw_grid, inspect_anchor

    result, prepared = inspect_anchor(tag, index, hops, _propagate_params(params), neighbours)
    if out is not None:
        draw_grid(result, prepared, out, show)
        result["png"] = str(out)
    if as_json:
        print_json(result)
        return
    title = (
        f"image {index} ({result['class']}), graph {tag}"
        if neighbours
        else (f"positives of image {index} ({result['class']}), {tag}")
    )
    _print_inspection(result, title)
    if out is not None:
        typer.echo(f"wrote {out}")


def _print_inspection(result: dict[str, Any], title: str) -> None:
    rows = []
    if "neighbours" in result:
        rows += [
            (
                f"neighbour {e['rank']}",
                e["id"],
                e["class"],
                e["sim"],
                "yes" if e["same_label"] else "no",
            )
            for e in result["neighbours"]
        ]
    for hop in result["positives_by_hop"]:
        purity = "n/a" if hop["purity"] is None else f"purity {hop['purity']:.3f}"
        rows.append((f"hop {hop['hop']}", f"{hop['size']} new", "", "", purity))
    for kind in ("hard", "easy"):
        rows += [
            (f"{kind} {r + 1}", e["id"], e["class"], e["sim"], "yes" if e["same_label"] else "no")
            for r, e in enumerate(result[kind])
        ]
    print_table(title, ["kind", "id", "class", "sim", "same label"], rows)


# ---------------------------------------------------------------------------------------
# graph


@command(graph_app, "neighbours")
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
    _show_inspection(tag, index, None, params, out, show, as_json, neighbours=True)


# ---------------------------------------------------------------------------------------
# propagate


@command(propagate_app, "stats")
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
                _num(c["purity"]),
                c["hard_size"],
                _num(c["hard_purity"]),
                _num(c["easy_purity"]),
                new["size"],
                _num(new["purity"]),
            )
        )
    print_table(
        f"propagation over graph {tag} (k={data['k']}, P={data['n_pos']}, "
        f"chance purity {_num(data.get('chance_purity'))})",
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
                    _num(e["purity"]["all"]),
                    _num(e["purity"]["hard"]),
                    _num(e["purity"]["easy"]),
                )
                for e in data["epochs"]
            ],
        )


def _num(value: float | None) -> float | str:
    return "n/a" if value is None else value


@command(propagate_app, "show")
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
    _show_inspection(tag, index, hops, params, out, show, as_json, neighbours=False)


# ---------------------------------------------------------------------------------------
# bank


@command(bank_app, "stats")
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
    from invprop.propagation import bank_stats
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
            ("table coverage (rows filled)", data["coverage"]),
            (f"concat duplicate rate ({data['hops']} hops)", _num(data["concat_duplicate_rate"])),
            ("neighbour label purity", _num(data["neighbour_purity"])),
            ("labels from", labels_from or "not found"),
        ],
    )
