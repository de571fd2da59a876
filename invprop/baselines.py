"""Training baselines: a second pretraining whose recipe differs from InvP's, trained by a
stage of its own, embedded as the embed stage embeds, and scored by evaluate beside InvP.

Each is named in `invprop.names.TRAINING_BASELINES`, switched by `evaluate.baselines.<name>`,
has its recipe registered here in `RECIPES` (``recipe(cfg)`` is the config it trains, which
the stage and `invprop params cost` both use), and has a stage `invprop/stages/<name>.py`
whose `run` is `run_baseline(cfg, name)` (docs/extending.md). Artifacts, for a baseline `<name>`::

    models/<name>/                    last.pt, final.pt, snapshots/ (kept between runs:
                                      resumes like pretrain)
    dvclive/<name>/                   training curves, beside dvclive/pretrain/
    artifacts/embeddings/<name>/      embeddings.npz + meta.json, as embed writes them
    reports/<name>.json               training summary, or why it did not run

With the baseline off the stage trains nothing: the embeddings folder then holds only
`status.json` and the other folders are made empty if missing, so DVC and Snakemake still
see their outputs, evaluate reports "not run", and an earlier trained model and its curves
are left in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from invprop import names
from invprop.config import Config
from invprop.distributed import Ranks, relaunched
from invprop.inference import embed_checkpoint
from invprop.logs import get_logger
from invprop.registry import Registry
from invprop.training import train
from invprop.workspace import (
    baseline_embeddings,
    baseline_off,
    baseline_run,
    prepared_dataset,
    save_embeddings,
    save_status,
    write_stage_report,
)

__all__ = ["RECIPES", "Recipe", "enabled_baselines", "register_recipe", "run_baseline"]

Recipe = Callable[[Config], Config]
RECIPES: Registry[Recipe] = Registry("training baseline", names.TRAINING_BASELINES)
# Decorator adding ``recipe(cfg) -> the config the baseline trains`` to ``RECIPES``.
register_recipe = RECIPES.register


@register_recipe("instance_discrimination")
def instance_discrimination(cfg: Config) -> Config:
    """`cfg` with InvP off. InvP's claim is what propagation adds over plain instance
    discrimination, so the fair baseline differs from its recipe in this one param."""
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, invp=False))


def enabled_baselines(cfg: Config) -> dict[str, Config]:
    """The config each training baseline switched on in `cfg` trains, by name."""
    return {
        name: RECIPES[name](cfg)
        for name in names.TRAINING_BASELINES
        if getattr(cfg.evaluate.baselines, name)
    }


def run_baseline(cfg: Config, name: str) -> None:
    """The stage of training baseline `name`: train its recipe's config (or resume it) and
    embed its final checkpoint, or record that `evaluate.baselines.<name>` is off."""
    log = get_logger(name)
    run, embeddings, off = baseline_run(name), baseline_embeddings(name), baseline_off(name)
    if not getattr(cfg.evaluate.baselines, name):
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.metrics.mkdir(parents=True, exist_ok=True)
        save_status(embeddings, off)
        write_stage_report(name, {"status": off})
        log.info(f"{off}; wrote {embeddings}/")
        return

    if relaunched(name, cfg):
        return
    baseline = RECIPES[name](cfg)
    summary = train(baseline, run)
    if not Ranks.from_env().is_main:  # rank 0 embeds and reports
        return
    arrays, meta = embed_checkpoint(baseline, run.final, prepared_dataset(cfg.data.name), name)
    save_embeddings(embeddings, arrays, meta)
    write_stage_report(name, summary | {"embeddings": str(embeddings), "dims": meta["dims"]})
    log.info(f"{summary['epochs']} epochs, bank kNN {summary['knn_bank_top1']} -> {embeddings}")
