"""The instance-discrimination baseline stage: the same recipe with InvP switched off.

InvP's claim is what propagation adds over plain instance discrimination, so the fair
baseline is a second pretraining that differs in one param only, `pretrain.invp: false`
(every other value from params.yaml: data, network, augmentation, schedule, bank). The
stage trains it with the pretrain stage's loop (invprop.training), then embeds its final
checkpoint as the embed stage does (invprop.inference), so evaluate can score it exactly
as it scores InvP.

Artifacts::

    models/instance_discrimination/             last.pt, final.pt, snapshots/ (kept
                                                between runs: resumes like pretrain)
    dvclive/instance_discrimination/            training curves, beside dvclive/pretrain/
    artifacts/embeddings/instance_discrimination/   embeddings.npz + meta.json, as embed
    reports/instance_discrimination.json        training summary, or why it did not run

With `evaluate.baselines.instance_discrimination` off the stage trains nothing: the
embeddings folder then holds only `status.json` and the other folders are made empty if
missing, so DVC and Snakemake still see their outputs, evaluate reports "not run", and an
earlier trained model and its curves are left in place.
"""

from __future__ import annotations

import dataclasses
import sys

from invprop.config import Config
from invprop.distributed import Ranks, relaunched
from invprop.inference import embed_checkpoint
from invprop.training import train
from invprop.workspace import (
    INSTANCE_DISCRIMINATION,
    INSTANCE_DISCRIMINATION_EMBEDDINGS,
    INSTANCE_DISCRIMINATION_OFF,
    prepared_dataset,
    save_embeddings,
    save_status,
    write_stage_report,
)

__all__ = ["instance_config", "run"]


def log(message: str) -> None:
    print(f"[instance_discrimination] {message}", file=sys.stderr, flush=True)


def instance_config(cfg: Config) -> Config:
    """`cfg` with InvP off: the baseline's recipe differs from InvP's in this one param."""
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, invp=False))


def run(cfg: Config) -> None:
    """The stage: train (or resume) and embed the baseline, or record that it is off."""
    if not cfg.evaluate.baselines.instance_discrimination:
        INSTANCE_DISCRIMINATION.checkpoints.mkdir(parents=True, exist_ok=True)
        INSTANCE_DISCRIMINATION.metrics.mkdir(parents=True, exist_ok=True)
        save_status(INSTANCE_DISCRIMINATION_EMBEDDINGS, INSTANCE_DISCRIMINATION_OFF)
        write_stage_report("instance_discrimination", {"status": INSTANCE_DISCRIMINATION_OFF})
        log(f"{INSTANCE_DISCRIMINATION_OFF}; wrote {INSTANCE_DISCRIMINATION_EMBEDDINGS}/")
        return

    if relaunched("instance_discrimination", cfg):
        return
    baseline = instance_config(cfg)
    summary = train(baseline, INSTANCE_DISCRIMINATION)
    if not Ranks.from_env().is_main:  # rank 0 embeds and reports
        return
    arrays, meta = embed_checkpoint(
        baseline,
        INSTANCE_DISCRIMINATION.final,
        prepared_dataset(cfg.data.name),
        "instance_discrimination",
    )
    save_embeddings(INSTANCE_DISCRIMINATION_EMBEDDINGS, arrays, meta)
    write_stage_report(
        "instance_discrimination",
        summary | {"embeddings": str(INSTANCE_DISCRIMINATION_EMBEDDINGS), "dims": meta["dims"]},
    )
    log(
        f"{summary['epochs']} epochs, bank kNN {summary['knn_bank_top1']} -> "
        f"{INSTANCE_DISCRIMINATION_EMBEDDINGS}"
    )
