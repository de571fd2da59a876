"""The instance-discrimination baseline stage: the same recipe with InvP switched off.

InvP's claim is what propagation adds over plain instance discrimination, so the fair
baseline is a second pretraining that differs in one param only, `pretrain.invp: false`
(every other value from params.yaml: data, network, augmentation, schedule, bank). The
stage trains it with the pretrain stage's own loop, then embeds its final checkpoint with
the embed stage's own code, so evaluate can score it exactly as it scores InvP.

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
from pathlib import Path

from invprop.config import Config
from invprop.embed import EMBEDDINGS_DIR, embed_checkpoint
from invprop.io import atomic_dir, write_json
from invprop.logs import get_logger

__all__ = ["MODEL_DIR", "NOT_RUN", "OUT_DIR", "REPORT", "instance_config", "run"]

LOG = get_logger("instance_discrimination")
MODEL_DIR = Path("models/instance_discrimination")
LIVE_DIR = Path("dvclive/instance_discrimination")
OUT_DIR = EMBEDDINGS_DIR / "instance_discrimination"
REPORT = Path("reports/instance_discrimination.json")
NOT_RUN = "not run (evaluate.baselines.instance_discrimination is off)"


def instance_config(cfg: Config) -> Config:
    """`cfg` with InvP off: the baseline's recipe differs from InvP's in this one param."""
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, invp=False))


def run(cfg: Config) -> None:
    """The stage: train (or resume) and embed the baseline, or record that it is off."""
    if not cfg.evaluate.baselines.instance_discrimination:
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        (LIVE_DIR / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
        with atomic_dir(OUT_DIR) as tmp:
            write_json(tmp / "status.json", {"status": NOT_RUN})
        write_json(REPORT, {"status": NOT_RUN})
        LOG.info(f"{NOT_RUN}; wrote {OUT_DIR}/status.json")
        return

    from invprop.distributed import Ranks, relaunched
    from invprop.train import train

    if relaunched("instance_discrimination", cfg):
        return
    baseline = instance_config(cfg)
    summary = train(baseline, MODEL_DIR, LIVE_DIR)
    if not Ranks.from_env().is_main:  # rank 0 embeds and reports
        return
    meta = embed_checkpoint(baseline, MODEL_DIR / "final.pt", OUT_DIR, "instance_discrimination")
    write_json(REPORT, summary | {"embeddings": str(OUT_DIR), "dims": meta["dims"]})
    LOG.info(f"{summary['epochs']} epochs, bank kNN {summary['knn_bank_top1']} -> {OUT_DIR}")
