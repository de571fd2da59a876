"""`invprop knn`: weighted kNN accuracy of any checkpoint or embeddings folder, ad hoc.

    invprop knn models/pretrain/snapshots/epoch_0010.pt --k 200 --k 20
    invprop knn artifacts/embeddings/final --json

Same function as the evaluate stage (invprop.knn_classifier); clean protocol: train images
are re-embedded without augmentation. A checkpoint is embedded with
invprop.inference.extract on the prepared data of the dataset it was trained on, and its
memory bank is scored too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from invprop.cli.common import JSON_OPTION, command, print_json, print_table
from invprop.errors import InvpropError

SOURCE_ARGUMENT = typer.Argument(
    ..., help="A checkpoint (.pt) or an embeddings folder (artifacts/embeddings/<tag>)."
)
K_OPTION = typer.Option([200], "--k", min=1, help="Neighbours to vote (repeatable).")
TEMPERATURE_OPTION = typer.Option(0.07, "--temperature", min=1e-6, help="Vote weight exp(sim/T).")
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Prepared dataset folder (default: data/prepared/<the checkpoint's dataset>).",
)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto (GPU when present), cpu or cuda.")
BATCH_OPTION = typer.Option(512, "--batch-size", min=1, help="Images per forward pass.")


def knn_of_embeddings(
    folder: Path, ks: list[int], temperature: float, device: str
) -> dict[str, Any]:
    """Flat kNN metrics of an embeddings folder (features and head embeddings)."""
    from invprop.inference import resolve_device
    from invprop.knn_classifier import knn_metrics
    from invprop.workspace import load_embeddings

    dev = resolve_device(device)
    data = load_embeddings(folder)
    out: dict[str, Any] = {"source": str(folder), "epoch": data.meta.get("epoch")}
    for kind in ("embeddings", "features"):
        out |= knn_metrics(
            f"knn_clean/{kind}",
            data.tensor(f"train_{kind}"),
            data.tensor("train_labels"),
            data.tensor(f"test_{kind}"),
            data.tensor("test_labels"),
            ks,
            temperature,
            data.num_classes,
            dev,
        )
    return out


def knn_of_checkpoint(
    checkpoint: Path,
    ks: list[int],
    temperature: float,
    data: Path | None,
    device: str,
    batch_size: int,
) -> dict[str, Any]:
    """Flat kNN metrics of a checkpoint: clean re-embedding, plus its memory bank."""
    import numpy as np
    import torch

    from invprop.checkpoint import checkpoint_config, encoder_from_checkpoint, load_checkpoint
    from invprop.data import load_prepared
    from invprop.inference import check_compatible, extract, resolve_device
    from invprop.knn_classifier import knn_metrics
    from invprop.workspace import prepared_dataset

    dev = resolve_device(device)
    state = load_checkpoint(checkpoint)
    cfg = checkpoint_config(state)
    prepared = load_prepared(data) if data else prepared_dataset(cfg.data.name)
    check_compatible(cfg, cfg, prepared, str(checkpoint))
    encoder, _, _ = encoder_from_checkpoint(state, dev)
    num_classes = len(prepared.classes)
    train_labels = torch.from_numpy(np.array(prepared.train.labels, dtype=np.int64))
    test_labels = torch.from_numpy(np.array(prepared.test.labels, dtype=np.int64))
    train_f, train_e = extract(encoder, prepared.train, prepared.meta, cfg, dev, batch_size)
    test_f, test_e = extract(encoder, prepared.test, prepared.meta, cfg, dev, batch_size)
    out: dict[str, Any] = {"source": str(checkpoint), "epoch": int(state["epoch"])}
    for kind, train, test in (("embeddings", train_e, test_e), ("features", train_f, test_f)):
        out |= knn_metrics(
            f"knn_clean/{kind}",
            train,
            train_labels,
            test,
            test_labels,
            ks,
            temperature,
            num_classes,
            dev,
        )
    bank = state.get("bank", {}).get("vectors")
    if isinstance(bank, torch.Tensor) and bank.shape[0] == len(train_labels):
        out |= knn_metrics(
            "knn_bank", bank, train_labels, test_e, test_labels, ks, temperature, num_classes, dev
        )
    return out


def knn(
    source: Path = SOURCE_ARGUMENT,
    k: list[int] = K_OPTION,
    temperature: float = TEMPERATURE_OPTION,
    data: Path | None = DATA_OPTION,
    device: str = DEVICE_OPTION,
    batch_size: int = BATCH_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Weighted kNN accuracy (top-1/top-5) of a checkpoint or an embeddings folder.

    Example: invprop knn models/pretrain/final.pt --k 200 --k 20
    """
    if source.is_dir():
        result = knn_of_embeddings(source, list(k), temperature, device)
    elif source.is_file():
        result = knn_of_checkpoint(source, list(k), temperature, data, device, batch_size)
    else:
        raise InvpropError(
            f"{source} not found; pass a checkpoint (.pt) or an embeddings folder "
            "(artifacts/embeddings/<tag>)"
        )
    if as_json:
        print_json(result)
        return
    rows = [(key, value) for key, value in result.items() if key not in ("source", "epoch")]
    print_table(
        f"kNN of {source} (epoch {result['epoch']}, T={temperature})", ["metric", "value"], rows
    )


def register(app: typer.Typer) -> None:
    """Add `knn` to the `invprop` app."""
    command(app, "knn")(knn)
