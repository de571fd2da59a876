"""The instance-discrimination baseline stage: the same recipe with InvP switched off.

InvP's claim is what propagation adds over plain instance discrimination, so the fair
baseline is a second pretraining that differs in one param only, `pretrain.invp: false`
(every other value from params.yaml: data, network, augmentation, schedule, bank; its
recipe is `invprop.baselines.instance_discrimination`). The stage trains it with the
pretrain stage's loop (invprop.training), then embeds its final checkpoint as the embed
stage does (invprop.inference), so evaluate can score it exactly as it scores InvP.
Artifacts and the off switch (`evaluate.baselines.instance_discrimination`): see
invprop.baselines, which runs every training baseline.
"""

from __future__ import annotations

from invprop.baselines import run_baseline
from invprop.config import Config

__all__ = ["run"]


def run(cfg: Config) -> None:
    """The stage: train (or resume) and embed the baseline, or record that it is off."""
    run_baseline(cfg, "instance_discrimination")
