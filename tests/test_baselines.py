"""Training baselines: each recipe differs from InvP's in what the baseline is named for."""

from __future__ import annotations

from invprop import names
from invprop.baselines import RECIPES, enabled_baselines
from invprop.config import Config, config_diff, config_from_dict


def test_every_training_baseline_has_a_recipe() -> None:
    assert sorted(RECIPES) == sorted(names.TRAINING_BASELINES)
    assert RECIPES.allowed == tuple(names.TRAINING_BASELINES)


def test_instance_discrimination_is_invp_with_invp_off() -> None:
    cfg = Config()
    baseline = RECIPES["instance_discrimination"](cfg)
    assert config_diff(cfg, baseline) == {"pretrain.invp": (True, False)}


def test_the_enabled_baselines_are_those_switched_on() -> None:
    on = Config()
    assert on.evaluate.baselines.instance_discrimination
    assert enabled_baselines(on) == {
        "instance_discrimination": RECIPES["instance_discrimination"](on)
    }
    off = config_from_dict({}, ["evaluate.baselines.instance_discrimination=false"])
    assert enabled_baselines(off) == {}
