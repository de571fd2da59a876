"""Training baselines: each recipe differs from InvP's in what the baseline is named for."""

from __future__ import annotations

from invprop.config import Config, config_diff
from invprop.stages.instance_discrimination import instance_config


def test_instance_discrimination_is_invp_with_invp_off() -> None:
    cfg = Config()
    assert config_diff(cfg, instance_config(cfg)) == {"pretrain.invp": (True, False)}
