"""The embed stage: clean embeddings of the train and test splits, per checkpoint.

Tag "final" reads models/pretrain/final.pt, "epoch_NNNN" the snapshot of that epoch; each
writes `artifacts/embeddings/<tag>/` (invprop.workspace.EmbeddingSet, one atomic folder)
and `reports/embed_<tag>.json` (counts, dims, device, timing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from invprop.config import Config
from invprop.inference import embed_checkpoint, log, resolve_device
from invprop.workspace import (
    checkpoint_for_tag,
    embeddings_dir,
    prepared_dataset,
    save_embeddings,
    write_stage_report,
)

__all__ = ["run"]


def run(cfg: Config, *tags: str) -> None:
    """Embed each tag (default cfg.embed.tags) and write its report."""
    names: Sequence[str] = list(tags) or cfg.embed.tags
    checkpoints = {tag: checkpoint_for_tag(tag) for tag in names}  # bad tags fail first
    device = resolve_device(cfg.pretrain.device)
    prepared = prepared_dataset(cfg.data.name)
    for tag, checkpoint in checkpoints.items():
        start = time.perf_counter()
        arrays, meta = embed_checkpoint(cfg, checkpoint, prepared, tag, device=device)
        save_embeddings(embeddings_dir(tag), arrays, meta)
        seconds = time.perf_counter() - start
        images = meta["counts"]["train"] + meta["counts"]["test"]
        write_stage_report(
            f"embed_{tag}",
            {
                "tag": tag,
                "epoch": meta["epoch"],
                "counts": meta["counts"],
                "dims": meta["dims"],
                "device": str(device),
                "seconds": round(seconds, 3),
                "images_per_second": round(images / max(seconds, 1e-9), 1),
            },
        )
        log(
            f"{tag}: {images} images -> {embeddings_dir(tag)} "
            f"({meta['dims']['features']}-d features, {meta['dims']['embeddings']}-d "
            f"embeddings, {seconds:.1f} s)"
        )
