"""One list of names per kind of extension: params accept exactly what the registries hold."""

from __future__ import annotations

import re
import typing

import pytest
import torch

from invprop import names
from invprop.config import Config, config_from_dict
from invprop.data import DATASETS
from invprop.errors import InvpropError
from invprop.method import BACKGROUND_MODES, POSITIVE_MODES, PROPAGATORS, propagate
from invprop.models import BACKBONES, HEAD_INITS, HEADS
from invprop.neighbour_search import INDEXES, NEIGHBOUR_BACKENDS
from invprop.registry import Registry, UnknownName
from invprop.training import TABLE_REFRESHES

# (the registry, its list in invprop.names, the params key choosing from it)
KINDS = {
    "datasets": (DATASETS, names.DATASETS, "data.name"),
    "backbones": (BACKBONES, names.BACKBONES, "model.backbone"),
    "heads": (HEADS, names.HEADS, "model.head"),
    "head_inits": (HEAD_INITS, names.HEAD_INITS, "model.head_init"),
    "propagators": (PROPAGATORS, tuple(names.PROPAGATORS), "pretrain.propagator"),
    "positives": (POSITIVE_MODES, names.POSITIVES, "pretrain.positives"),
    "backgrounds": (BACKGROUND_MODES, names.BACKGROUNDS, "pretrain.background"),
    "table_refreshes": (TABLE_REFRESHES, names.TABLE_REFRESHES, "pretrain.table_refresh"),
    "neighbour_backends": (NEIGHBOUR_BACKENDS, names.NEIGHBOUR_BACKENDS, "graph.backend"),
}


def choices(dotted: str) -> tuple[object, ...]:
    """The values params accept for a key typed as a Literal."""
    *sections, key = dotted.split(".")
    cls: type = Config
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return typing.get_args(typing.get_type_hints(cls)[key])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_registry_holds_exactly_its_list_of_names(kind: str) -> None:
    registry, listed, _ = KINDS[kind]
    assert isinstance(registry, Registry)
    assert sorted(registry) == sorted(listed)
    assert registry.allowed == listed


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"datasets", "neighbour_backends"}))
def test_params_choices_are_the_lists(kind: str) -> None:
    _, listed, key = KINDS[kind]
    assert choices(key) == listed


def test_the_special_choices_besides_the_lists() -> None:
    # "auto" picks a backend; it is not one
    assert choices("graph.backend") == ("auto", *names.NEIGHBOUR_BACKENDS)
    assert choices("graph.index") == names.NEIGHBOUR_INDEXES == INDEXES
    # data.name is a string so that the error can say "not a known dataset"
    assert typing.get_type_hints(type(Config().data))["name"] is str


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_bad_value_lists_every_allowed_name(kind: str) -> None:
    _, listed, key = KINDS[kind]
    with pytest.raises(InvpropError, match=f"^params: {key} = 'nonesuch' ") as error:
        config_from_dict({}, [f"{key}=nonesuch"])
    message = str(error.value)
    assert "\n" not in message
    assert [name for name in listed if not re.search(rf"\b{name}\b", message)] == []


def test_a_registry_takes_declared_names_once_and_names_the_list_otherwise() -> None:
    registry: Registry[int] = Registry("widget", ("a", "b"), hint=" (see widget.kind)")
    assert registry.register("a")(1) == 1
    with pytest.raises(ValueError, match=r"widget 'c' is not declared: add it to its list in "):
        registry.add("c", 3)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.add("a", 2)
    assert "b" not in registry and registry.get("b") is None
    with pytest.raises(UnknownName) as error:
        registry["b"]
    assert str(error.value) == "unknown widget 'b'; allowed: a (see widget.kind)"
    # a missing key (KeyError), a bad value (ValueError), a one-line user error (InvpropError)
    assert isinstance(error.value, KeyError | ValueError) and isinstance(error.value, InvpropError)


def test_a_real_registry_refuses_an_undeclared_name() -> None:
    with pytest.raises(ValueError, match=r"backbone 'vgg' is not declared.*invprop/names.py"):
        BACKBONES.register("vgg")(lambda in_channels: torch.nn.Identity())
    assert "vgg" not in BACKBONES


def _one_hop(neighbours: torch.Tensor, anchors: torch.Tensor, hops: int):
    """Positives = the k table neighbours (a propagator declared as k wide)."""
    from invprop.method import Propagation

    ids = neighbours.index_select(0, anchors)
    mask = ids >= 0
    return Propagation(torch.where(mask, ids, 0), mask, mask.long())


def test_params_bound_n_pos_by_the_largest_set_a_propagator_declares(monkeypatch) -> None:
    monkeypatch.setitem(names.PROPAGATORS, "one_hop", lambda k, hops: k)
    base = ["pretrain.propagator=one_hop", "pretrain.k=4", "pretrain.hops=3"]
    assert config_from_dict({}, [*base, "pretrain.n_pos=4"]).pretrain.propagator == "one_hop"
    with pytest.raises(InvpropError, match=r"pretrain\.n_pos = 5 exceeds .* 'one_hop', 4 \(k=4"):
        config_from_dict({}, [*base, "pretrain.n_pos=5"])
    # the same n_pos is fine for the exact BFS (4 + 16 + 64)
    config_from_dict({}, ["pretrain.k=4", "pretrain.hops=3", "pretrain.n_pos=20"])


def test_propagate_holds_a_propagator_to_its_declared_width(monkeypatch) -> None:
    table = torch.tensor([[1, 2], [0, 2], [0, 1]])
    anchors = torch.tensor([0, 2])
    monkeypatch.setitem(PROPAGATORS, "one_hop", _one_hop)
    monkeypatch.setitem(names.PROPAGATORS, "one_hop", lambda k, hops: k)
    prop = propagate(table, anchors, 3, "one_hop")
    assert prop.ids.tolist() == [[1, 2], [0, 1]] and prop.hop.tolist() == [[1, 1], [1, 1]]
    monkeypatch.setitem(names.PROPAGATORS, "one_hop", names.PROPAGATORS["exact"])
    with pytest.raises(ValueError, match=r"'one_hop' returned sets 2 wide, .* as 14 \(k=2"):
        propagate(table, anchors, 3, "one_hop")


def test_each_training_baseline_has_a_switch_a_stage_and_a_results_row() -> None:
    from invprop.config import BaselinesConfig
    from invprop.pipeline import STAGE_NAMES, STAGES
    from invprop.tables import METHODS, pipeline_runs

    switches = typing.get_type_hints(BaselinesConfig)
    runs = [stage for stage, _ in pipeline_runs(Config())]
    for name, label in names.TRAINING_BASELINES.items():
        assert switches[name] is bool
        assert name in STAGE_NAMES and STAGES[name] == f"invprop.stages.{name}:run"
        assert (label, name) in METHODS and name in runs
