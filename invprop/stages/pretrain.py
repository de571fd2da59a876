"""The pretrain stage: InvP pretraining (invprop.training) into models/pretrain/.

Writes `models/pretrain/` (last.pt every epoch, snapshots, final.pt), the dvclive curves
under `dvclive/pretrain/` and `reports/pretrain.json`; resumes from last.pt when the
params that shape training are unchanged.
"""

from __future__ import annotations

from invprop.config import Config
from invprop.distributed import Ranks, relaunched
from invprop.training import train
from invprop.workspace import PRETRAIN, write_stage_report

__all__ = ["run"]


def run(cfg: Config) -> None:
    """Train or resume, then write reports/pretrain.json (rank 0)."""
    if relaunched("pretrain", cfg):
        return
    summary = train(cfg, PRETRAIN)
    if Ranks.from_env().is_main:
        write_stage_report("pretrain", summary)
