"""`invprop embed CKPT FOLDER --out FILE`: a trained model applied to your own images.

    invprop embed models/pretrain/final.pt photos/ --out photos.npz
    invprop knn --train photos.npz --queries more_photos.npz
    invprop graph neighbours 12 --embeddings photos.npz

The folder holds class sub-folders (labelled) or images directly (unlabelled); every image
goes through the preprocessing recorded in the checkpoint (size, channels, normalisation),
so nothing but the checkpoint is needed. torch loads inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli.common import FORCE_OPTION, JSON_OPTION, Device, command, print_json, print_table


def embed(
    checkpoint: Path = typer.Argument(..., help="A checkpoint, e.g. models/pretrain/final.pt."),
    folder: Path = typer.Argument(..., help="A folder of images, or of class sub-folders."),
    out: Path = typer.Option(..., "--out", help="The .npz file to write."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per forward pass."),
    device: Device = typer.Option("auto", "--device", help="auto: the GPU when there is one."),
    force: bool = FORCE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Backbone features and head embeddings of every image of FOLDER, as one .npz.

    Example: invprop embed models/pretrain/final.pt photos/ --out photos.npz
    """
    from invprop.inference import embed_folder

    meta = embed_folder(checkpoint, folder, out, batch_size, device, force)
    meta["out"] = str(out)
    if as_json:
        print_json(meta)
        return
    pre = meta["preprocessing"]
    print_table(
        f"{folder} -> {out}",
        ["field", "value"],
        [
            ("images", meta["counts"]["images"]),
            ("labelled", meta["counts"]["labelled"]),
            ("checkpoint", f"{checkpoint} (epoch {meta['epoch']})"),
            ("input", f"{pre['channels']} x {pre['image_size']} x {pre['image_size']}"),
        ],
    )


def register(app: typer.Typer) -> None:
    """Add `embed` to the `invprop` app."""
    command(app, "embed")(embed)
