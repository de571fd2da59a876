"""`invprop data show|grid`: what a prepared dataset holds, and what its images look like.

numpy, matplotlib and the data package load inside the commands, so `invprop --help`
stays fast; the grid is drawn by invprop.figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from invprop.cli.common import JSON_OPTION, Split, command, print_json, print_table
from invprop.errors import InvpropError

app = typer.Typer(
    help="Inspect prepared datasets (data/prepared/<dataset>/).", no_args_is_help=True
)

PATH_ARGUMENT = typer.Argument(..., help="A prepared dataset folder, e.g. data/prepared/cifar10.")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@command(app, "show")
def show(path: Path = PATH_ARGUMENT, as_json: bool = JSON_OPTION) -> None:
    """Summarise a prepared dataset: shape, counts per split and class, stats, checksums.

    Example: invprop data show data/prepared/fashion_mnist --json
    """
    from invprop.data.prepared import SPLITS, describe, load_prepared

    info = describe(load_prepared(path))
    if as_json:
        print_json(info)
        return
    counts = info["counts"]
    sources = info["sources"]
    source_summary = ", ".join(
        f"{Path(s['path']).name} {s['sha256'][:12]}"
        + (f" ({s['kind']}, {_size(s['bytes'])})" if s.get("kind", "file") != "file" else "")
        for s in sources[:4]
    ) + (f", ... ({len(sources)} in all)" if len(sources) > 4 else "")
    rows: list[tuple[str, Any]] = [
        ("dataset", info["dataset"]),
        ("format", info["format"]),
        ("shape [C, H, W]", info["shape"]),
        ("train / test", f"{counts['train']} / {counts['test']}"),
        ("classes", len(info["classes"])),
        ("split", info.get("split", "")),
        ("mean", ", ".join(f"{v:.4f}" for v in info["mean"])),
        ("std", ", ".join(f"{v:.4f}" for v in info["std"])),
        ("stats from", info.get("stats", "")),
        ("size on disk", _size(info["size_bytes"])),
        ("root", info.get("root") or "-"),
        ("sources (sha256)", source_summary or "- (generated)"),
        ("data params hash", info["params"]["data_hash"]),
        ("data seed", info["params"]["data_seed"]),
    ]
    if "load" in info:
        rows.insert(3, ("load", info["load"]))
    print_table(f"{info['dataset']}: {path}", ["field", "value"], rows)
    class_rows = [(i, c["class"], c["train"], c["test"]) for i, c in enumerate(info["per_class"])]
    unlabeled = info["unlabeled"]
    if any(unlabeled[s] for s in SPLITS):
        class_rows.append(("-1", "(unlabeled)", unlabeled["train"], unlabeled["test"]))
    print_table("images per class", ["label", "class", "train", "test"], class_rows)


@command(app, "grid")
def grid(
    path: Path = PATH_ARGUMENT,
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    split: Split = typer.Option("train", help="Which split."),
    per_class: int = typer.Option(8, min=1, max=64, help="Images per class (row)."),
    seed: int = typer.Option(0, help="Seed of the random choice of images."),
    max_classes: int = typer.Option(20, min=1, help="Show at most this many classes."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Save a labelled grid of random images, one row per class, to look at the data.

    Example: invprop data grid data/prepared/fashion_mnist --out grid.png
    """
    import numpy as np

    from invprop.data.prepared import load_prepared
    from invprop.figures import draw_class_grid

    dataset = load_prepared(path)
    data = dataset.split(split)
    rng = np.random.default_rng(seed)
    groups = [(name, data.labels == k) for k, name in enumerate(dataset.classes)]
    groups.append(("(unlabeled)", data.labels == -1))
    rows = []
    for name, members in groups:
        indices = np.flatnonzero(members)
        if len(indices):
            rows.append((name, rng.choice(indices, min(per_class, len(indices)), replace=False)))
    if not rows:
        raise InvpropError(f"{path}: the {split} split is empty; nothing to draw")
    shown = rows[:max_classes]
    more = f", first {len(shown)} of {len(rows)} classes" if len(rows) > len(shown) else ""
    title = f"{dataset.name}: {split} split, {per_class} random per class{more}"
    draw_class_grid(data, shown, per_class, title, out)
    if as_json:
        print_json(
            {
                "png": str(out),
                "dataset": str(path),
                "split": split,
                "classes": [name for name, _ in shown],
                "indices": {name: [int(i) for i in picks] for name, picks in shown},
            }
        )
        return
    typer.echo(f"wrote {out}: {len(shown)} rows x {per_class} images from {path} ({split})")
