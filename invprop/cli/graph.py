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
from invprop.errors import InvpropError

graph_app = typer.Typer(help="Inspect the k-NN graph of the embeddings.", no_args_is_help=True)
propagate_app = typer.Typer(
    help="Inspect propagated positives (per hop, per epoch, per image).", no_args_is_help=True
)
bank_app = typer.Typer(help="Inspect the memory bank of a checkpoint.", no_args_is_help=True)

TAG_OPTION = typer.Option("final", "--tag", help="Embeddings tag: final or epoch_NNNN.")
PARAMS_OPTION = typer.Option(
    Path("params.yaml"), "--params", help="Params file (propagate.k, hops, n_pos)."
)
# widest positive set one command walks (k + k^2 + ... + k^hops slots)
MAX_WIDTH = 1 << 22
SHOW_OPTION = typer.Option(8, "--show", min=1, max=32, help="Images per row of the PNG grid.")


# ---------------------------------------------------------------------------------------
# Shared helpers


def _propagate_params(params: Path) -> Any:
    from invprop.config import Config, load_config

    return load_config(params).propagate if params.exists() else Config().propagate


def _prepared(dataset: str | None) -> Any | None:
    """The prepared dataset the embeddings came from, or None when it is not there."""
    if not dataset:
        return None
    from invprop.data import load_prepared

    folder = Path("data") / "prepared" / dataset
    if not folder.is_dir():
        return None
    try:
        return load_prepared(folder)
    except InvpropError:
        return None  # class names fall back to numbers; the PNG says what is missing


def _class_name(classes: list[str] | None, label: int) -> str:
    if label < 0:
        return "unlabelled"
    if classes and label < len(classes):
        return str(classes[label])
    return str(label)


def _entry(node: int, sim: float, labels: Any, anchor_label: int, classes: Any, **extra: Any):
    label = int(labels[node])
    return {
        "id": int(node),
        "label": label,
        "class": _class_name(classes, label),
        "sim": float(sim),
        "same_label": bool(label >= 0 and label == anchor_label),
        **extra,
    }


def _purity(entries: list[dict[str, Any]]) -> float | None:
    return sum(e["same_label"] for e in entries) / len(entries) if entries else None


def _inspect(
    tag: str, index: int, hops: int | None, params: Path, neighbours: bool
) -> tuple[dict[str, Any], Any]:
    """Everything `graph neighbours` and `propagate show` print, plus the prepared data."""
    import numpy as np

    from invprop.config import max_positives
    from invprop.propagation import load_checked_graph, positives_of

    graph, _, emb = load_checked_graph(tag)
    n = graph["ids"].shape[0]
    if not 0 <= index < n:
        raise InvpropError(
            f"index {index} is out of range: the train split has {n} images (0..{n - 1})"
        )
    p = _propagate_params(params)
    hops = p.hops if hops is None else hops
    k = min(p.k, graph["ids"].shape[1])
    if hops < 1 or max_positives(k, hops) > MAX_WIDTH:
        raise InvpropError(
            f"--hops {hops} is out of range for k = {k}: use 1 to "
            f"{max(h for h in range(1, 64) if max_positives(k, h) <= MAX_WIDTH)}"
        )
    prepared = _prepared(emb.dataset)
    classes = prepared.classes if prepared is not None else None
    labels = emb.labels
    own = int(labels[index])
    found = positives_of(graph["ids"][:, :k], emb.vectors, index, hops, p.n_pos)
    result: dict[str, Any] = {
        "tag": tag,
        "index": index,
        "label": own,
        "class": _class_name(classes, own),
        "k": k,
        "hops": hops,
        "n_pos": p.n_pos,
    }
    if neighbours:
        result["neighbours"] = [
            _entry(j, s, labels, own, classes, rank=r + 1)
            for r, (j, s) in enumerate(zip(graph["ids"][index], graph["sims"][index], strict=True))
            if j >= 0
        ]
    by_hop = []
    for h in range(1, hops + 1):
        at = found.hop == h
        order = np.argsort(-found.sims[at], kind="stable")
        members = [
            _entry(j, s, labels, own, classes)
            for j, s in zip(found.ids[at][order], found.sims[at][order], strict=True)
        ]
        by_hop.append(
            {"hop": h, "size": len(members), "purity": _purity(members), "members": members}
        )
    result["positives_by_hop"] = by_hop
    for kind in ("hard", "easy"):
        ids, sims = getattr(found, f"{kind}_ids"), getattr(found, f"{kind}_sims")
        result[kind] = [_entry(j, s, labels, own, classes) for j, s in zip(ids, sims, strict=True)]
        result[f"{kind}_purity"] = _purity(result[kind])
    return result, prepared


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


def _image(prepared: Any, index: int) -> Any:
    import numpy as np

    array = np.asarray(prepared.train.images[index])  # uint8 (C, H, W)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _spread(entries: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` entries evenly spaced through a similarity-sorted list (ends kept)."""
    if len(entries) <= count:
        return entries
    picks = sorted({round(i * (len(entries) - 1) / (count - 1)) for i in range(count)})
    return [entries[i] for i in picks]


def _write_grid(result: dict[str, Any], prepared: Any, out: Path, show: int) -> None:
    """A PNG: one row each for the neighbours, the positives of each hop and the hard ones;
    every image titled with its class and similarity, framed green (same label) or red."""
    if prepared is None:
        raise InvpropError(
            "the PNG needs the prepared images (data/prepared/<dataset>), which are missing; "
            "run the prepare stage or drop --out"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[dict[str, Any]]]] = []
    if "neighbours" in result:
        rows.append(("nearest", result["neighbours"][:show]))
    for hop in result["positives_by_hop"]:
        rows.append((f"hop {hop['hop']}\n({hop['size']})", _spread(hop["members"], show)))
    rows.append((f"hard\n({len(result['hard'])})", result["hard"][:show]))
    cols = show + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.35 * cols, 1.6 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, (name, entries) in enumerate(rows):
        head = axes[r, 0]
        if r == 0:
            image = _image(prepared, result["index"])
            head.imshow(image, cmap="gray" if image.ndim == 2 else None)
            head.set_title(f"#{result['index']}\n{result['class']}", fontsize=7, fontweight="bold")
        head.set_ylabel(name, fontsize=8)
        for c, entry in enumerate(entries, start=1):
            ax = axes[r, c]
            image = _image(prepared, entry["id"])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{entry['class']}\n{entry['sim']:.3f}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("tab:green" if entry["same_label"] else "tab:red")
                spine.set_linewidth(2)
    fig.suptitle(
        f"{result['tag']}: image {result['index']} ({result['class']}), k={result['k']}, "
        f"hops={result['hops']}, P={result['n_pos']}; green = same label",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


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
    result, prepared = _inspect(tag, index, None, params, neighbours=True)
    if out is not None:
        _write_grid(result, prepared, out, show)
        result["png"] = str(out)
    if as_json:
        print_json(result)
    else:
        _print_inspection(result, f"image {index} ({result['class']}), graph {tag}")
        if out is not None:
            typer.echo(f"wrote {out}")


# ---------------------------------------------------------------------------------------
# propagate


@command(propagate_app, "stats")
def stats(tag: str = TAG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Mean set size and label purity per hop (cumulative and new) and against epoch.

    Example: invprop propagate stats --tag final --json
    """
    from invprop.propagation import load_stats

    data = load_stats(tag)
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
    result, prepared = _inspect(tag, index, hops, params, neighbours=False)
    if out is not None:
        _write_grid(result, prepared, out, show)
        result["png"] = str(out)
    if as_json:
        print_json(result)
    else:
        _print_inspection(result, f"positives of image {index} ({result['class']}), {tag}")
        if out is not None:
            typer.echo(f"wrote {out}")


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
    from invprop.propagation import bank_stats, prepared_train_labels

    state = load_checkpoint(checkpoint)
    dataset = state.get("config", {}).get("data", {}).get("name")
    labels, labels_from = None, None
    if dataset and (Path("data") / "prepared" / dataset).is_dir():
        labels = prepared_train_labels(dataset)
        labels_from = str(Path("data") / "prepared" / dataset)
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
