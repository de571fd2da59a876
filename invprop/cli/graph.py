"""`invprop graph ...`: what the k-NN graph of the embeddings found.

    invprop graph neighbours 123 --out grid.png   # one image, its neighbours and positives

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from invprop.cli import common

app = typer.Typer(help="Inspect the k-NN graph of the embeddings.", no_args_is_help=True)


@common.command(app, "neighbours")
def neighbours(
    index: int = typer.Argument(..., help="Train image index (or row of --embeddings)."),
    tag: str = common.TAG_OPTION,
    out: Path | None = typer.Option(None, "--out", help="Write a PNG grid here."),
    params: Path = common.PARAMS_OPTION,
    show: int = common.SHOW_OPTION,
    embeddings: Path | None = typer.Option(
        None, "--embeddings", help="Search an `invprop embed` output instead of the graph."
    ),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours to list with --embeddings."),
    as_json: bool = common.JSON_OPTION,
) -> None:
    """Nearest neighbours, propagated positives per hop and hard positives of one image;
    with --embeddings, the nearest images of one image of an `invprop embed` output.

    Example: invprop graph neighbours 123 --out reports/neighbours_123.png
    """
    if embeddings is not None:
        _folder_neighbours(embeddings, index, k, as_json)
        return
    common.show_anchor(tag, index, None, params, out, show, as_json, neighbours=True)


def _folder_neighbours(path: Path, index: int, k: int, as_json: bool) -> None:
    """The k nearest images of row `index` of an `invprop embed` output (head embeddings,
    cosine similarity, the image itself excluded)."""
    import numpy as np

    from invprop.errors import InvpropError
    from invprop.inference import load_folder_embeddings
    from invprop.neighbour_search import drop_self, knn_search

    data = load_folder_embeddings(path)
    n = len(data["paths"])
    if not 0 <= index < n:
        raise InvpropError(f"index {index} is out of range: {path} holds {n} images (0..{n - 1})")
    if not 1 <= k < n:
        raise InvpropError(f"--k {k} is out of range: {path} holds {n} images; use 1 to {n - 1}")
    vectors = data["embeddings"] / np.linalg.norm(data["embeddings"], axis=1, keepdims=True)
    ids, sims = knn_search(vectors, vectors[index : index + 1], k + 1)
    ids, sims = drop_self(ids, sims, np.array([index]))

    def entry(i: int) -> dict[str, Any]:
        label = int(data["labels"][i])
        return {"id": i, "path": str(data["paths"][i]), "label": label}

    result = {
        "embeddings": str(path),
        "query": entry(index),
        "neighbours": [
            entry(int(i)) | {"rank": r + 1, "sim": float(s)}
            for r, (i, s) in enumerate(zip(ids[0], sims[0], strict=True))
        ],
    }
    if as_json:
        common.print_json(result)
        return
    classes = data["classes"] + ["-"]  # label -1: unlabelled
    common.print_table(
        f"nearest images of {result['query']['path']} in {path}",
        ["rank", "id", "path", "class", "sim"],
        [
            (e["rank"], e["id"], e["path"], classes[e["label"]], e["sim"])
            for e in result["neighbours"]
        ],
    )
