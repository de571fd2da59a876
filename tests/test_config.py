"""The config: defaults, overrides, validation errors that name the key, presets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from invprop.bounds import max_positives
from invprop.config import (
    RENAMED_KEYS,
    Config,
    apply_preset,
    config_diff,
    config_from_dict,
    deep_merge,
    flat_keys,
    load_config,
    params_hash,
    restore_types,
    save_params,
    with_current_names,
)
from invprop.errors import InvpropError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_and_presets_are_valid() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.data.name == "fashion_mnist"
    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        merged = deep_merge(
            yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(preset.read_text())
        )
        config_from_dict(merged)


def test_empty_params_give_defaults() -> None:
    assert config_from_dict({}) == Config()


def test_renamed_head_errors_are_one_line_and_name_the_new_value() -> None:
    for old, new in (("mlp", "mlp_hidden_bn"), ("mlp_bn", "mlp_hidden_out_bn")):
        with pytest.raises(InvpropError) as error:
            config_from_dict({"model": {"head": old}})
        assert "\n" not in str(error.value) and f"use '{new}'" in str(error.value)
        # a config recorded before the rename (a checkpoint's) reads under the new name
        recorded = {"model": {"head": old, "dim": 16}, "seed": 3}
        cfg = config_from_dict(with_current_names(recorded))
        assert (cfg.model.head, cfg.model.dim, cfg.seed) == (new, 16, 3)
        assert recorded["model"]["head"] == old  # not modified in place
    assert with_current_names({"seed": 1}) == {"seed": 1}
    # a value renamed from a flag, two sections deep
    old_flag = {"evaluate": {"linear": {"batchnorm": True, "lr": 1.0}}}
    assert with_current_names(old_flag) == {
        "evaluate": {"linear": {"batchnorm": "train", "lr": 1.0}}
    }
    assert with_current_names({"evaluate": {"linear": {"batchnorm": 1}}})["evaluate"] == {
        "linear": {"batchnorm": 1}  # an integer was never the flag: validation names it
    }


def test_explicit_normalisation_needs_one_value_per_channel() -> None:
    cfg = config_from_dict({"augment": {"mean": [0.5], "std": [0.25]}})
    assert (cfg.augment.mean, cfg.augment.std) == ([0.5], [0.25])
    with pytest.raises(InvpropError, match=r"augment\.mean has 3 values for data\.channels = 1"):
        config_from_dict({"augment": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    with pytest.raises(InvpropError, match=r"augment\.std = \[0\.0\] is out of range"):
        config_from_dict({"augment": {"mean": [0.5], "std": [0.0]}})


def test_exponent_floats_parse_as_numbers() -> None:
    # PyYAML reads 5e-4 as a string; people write it anyway.
    assert config_from_dict({"pretrain": {"weight_decay": "5e-4"}}).pretrain.weight_decay == 5e-4


def test_override_sets_typed_value() -> None:
    cfg = config_from_dict({}, ["pretrain.epochs=7", "graph.backend=torch", "data.root=/x"])
    assert (cfg.pretrain.epochs, cfg.graph.backend, cfg.data.root) == (7, "torch", "/x")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.epochs=0", "pretrain.epochs = 0 is out of range: must be >= 1"),
        (
            "pretrain.invp=yes please",
            "pretrain.invp = 'yes please' is invalid: expected true or false",
        ),
        ("pretrain.lr=-1", "pretrain.lr = -1.0 is out of range: must be > 0"),
        ("pretrain.lr=fast", "pretrain.lr = 'fast' is invalid: expected a number"),
        ("pretrain.positives=medium", "expected one of 'hard', 'easy'"),
        ("pretrain.hops=0", "pretrain.hops = 0 is out of range"),
        ("pretrain.n_pos=85", "pretrain.n_pos = 85 exceeds the largest possible positive set"),
        ("pretrain.batch_size=1.5", "pretrain.batch_size = 1.5 is invalid: expected an integer"),
        ("pretrain.bogus=1", "unknown key pretrain.bogus"),
        ("bogus=1", "unknown key bogus"),
        ("data.name=mnist", "data.name = 'mnist' is not a known dataset"),
        ("augment.crop_scale=[0.9, 0.1]", "augment.crop_scale = [0.9, 0.1] must satisfy"),
        ("propagate.k=30", "propagate.k = 30 must be <= graph.k = 20"),
        ("embed.tags=[epoch_0009]", "embed.tags has 'epoch_0009'"),
        ("transfer.targets=[fashion_mnist]", "transfer.targets contains the pretraining dataset"),
        ("pretrain.ramp_epoch=9", "pretrain.ramp_epoch = 9 >= pretrain.epochs"),
        ("novalue", "must look like key.sub=value"),
        ("model.head=mlp", "model.head = 'mlp' was renamed: use 'mlp_hidden_bn'"),
        ("model.head=mlp_bn", "model.head = 'mlp_bn' was renamed: use 'mlp_hidden_out_bn'"),
        ("augment.mean=[0.5]", "augment.mean and augment.std must be set together"),
        ("evaluate.linear.milestones=[40, 200]", "evaluate.linear.milestones = [40, 200] has"),
        ("pretrain.lr_milestones=[2, 9]", "pretrain.lr_milestones = [2, 9] has epochs past"),
        ("pretrain.background=exclusive", "expected one of 'code', 'code_inclusive', 'paper'"),
        ("pretrain.loss_eps=1", "pretrain.loss_eps = 1.0 is out of range: must be < 1"),
        (
            "evaluate.linear.batchnorm=true",
            "evaluate.linear.batchnorm = True was renamed: use 'train' (the same thing); the "
            "authors' ImageNet probe keeps it in eval mode: 'eval'",
        ),
        (
            "evaluate.linear.batchnorm=false",
            "evaluate.linear.batchnorm = False was renamed: use 'none'",
        ),
        ("evaluate.linear.layers=[]", "evaluate.linear.layers is empty"),
        (
            "evaluate.linear.layers=[{name: a}, {name: a}]",
            "evaluate.linear.layers names a layer twice",
        ),
        ("evaluate.linear.layers=[{name: features, grid: 2}]", "features are pooled already"),
        (
            "evaluate.linear.layers=[{name: a, grid: 0}]",
            "evaluate.linear.layers[0].grid = 0 is out",
        ),
        (
            "evaluate.linear.layers=[{name: layer3}]",
            "evaluate.linear.layers is for protocol sgd_aug",
        ),
        (
            "model.head_init=xavier",
            "model.head_init = 'xavier' is invalid: expected one of 'torch'",
        ),
    ],
)
def test_bad_values_name_key_and_allowed(override: str, message: str) -> None:
    with pytest.raises(InvpropError, match="^(params: )?" + ".*" + _escape(message)):
        config_from_dict({}, [override])


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@given(k=st.integers(1, 6), hops=st.integers(1, 4), extra=st.integers(0, 5))
def test_n_pos_bound_is_k_plus_k2_up_to_kl(k: int, hops: int, extra: int) -> None:
    largest = sum(k**h for h in range(1, hops + 1))
    assert max_positives(k, hops) == largest
    base = [f"pretrain.k={k}", f"pretrain.hops={hops}"]
    config_from_dict({}, [*base, f"pretrain.n_pos={largest}"])
    if extra:
        with pytest.raises(InvpropError, match=r"pretrain\.n_pos"):
            config_from_dict({}, [*base, f"pretrain.n_pos={largest + extra}"])


@given(
    value=st.one_of(
        st.text(max_size=5), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers())
    )
)
def test_integer_keys_reject_anything_but_positive_integers(value: object) -> None:
    with pytest.raises(InvpropError, match=r"pretrain\.batch_size"):
        config_from_dict({"pretrain": {"batch_size": value}})


@given(
    epochs=st.integers(2, 1000),  # the default snapshot is at epoch 2
    lr=st.floats(1e-6, 10),
    seed=st.integers(0, 2**31),
)
def test_overrides_round_trip_through_to_dict(epochs: int, lr: float, seed: int) -> None:
    cfg = config_from_dict({}, [f"pretrain.epochs={epochs}", f"pretrain.lr={lr!r}", f"seed={seed}"])
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.pretrain.epochs == epochs and cfg.pretrain.lr == lr and cfg.seed == seed


def test_apply_preset_merges_validates_and_keeps_comments(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("# top comment\npretrain:\n  epochs: 3  # short\n  lr: 0.1\n")
    preset = tmp_path / "preset.yaml"
    preset.write_text("pretrain:\n  epochs: 9\nmodel:\n  backbone: resnet18_cifar\n")
    cfg = apply_preset(params, preset).config
    text = params.read_text()
    assert "# top comment" in text and "# short" in text
    assert (cfg.pretrain.epochs, cfg.pretrain.lr, cfg.model.backbone) == (9, 0.1, "resnet18_cifar")
    assert load_config(params) == cfg


def test_apply_writes_small_and_large_floats_as_floats(tmp_path: Path) -> None:
    # ruamel's 1e-07 would read back as a string under YAML 1.1 (PyYAML, the stages' reader)
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    preset = tmp_path / "p.yaml"
    preset.write_text("pretrain:\n  loss_eps: 1.0e-7\n  lr: 2.5e+3\n")
    apply_preset(params, preset)
    written = yaml.safe_load(params.read_text())["pretrain"]
    assert (written["loss_eps"], written["lr"]) == (1e-7, 2500.0)
    assert "loss_eps: 1.0e-07" in params.read_text()


def test_bad_preset_leaves_params_untouched(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  epochs: 3\n")
    preset = tmp_path / "bad.yaml"
    preset.write_text("pretrain:\n  epochs: -3\n")
    with pytest.raises(InvpropError, match=r"pretrain\.epochs = -3"):
        apply_preset(params, preset)
    assert params.read_text() == "pretrain:\n  epochs: 3\n"


def test_config_diff_lists_changed_keys() -> None:
    a = config_from_dict({})
    b = config_from_dict({}, ["graph.k=30", "seed=4"])
    assert config_diff(a, b) == {"graph.k": (20, 30), "seed": (0, 4)}


def test_to_dict_of_named_sections_and_params_hash() -> None:
    cfg = config_from_dict({}, ["graph.k=5"])
    assert cfg.to_dict("seed", "graph") == {"seed": 0, "graph": cfg.to_dict()["graph"]}
    assert params_hash({"a": 1, "b": [2]}) == params_hash({"b": [2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
    data = config_from_dict({}).to_dict("data")
    assert params_hash(data) == params_hash(cfg.to_dict("data"))


def test_config_imports_no_torch_and_the_method_core_no_config():
    """config.py stays torch-free (fast `invprop --help`); the method core gets
    max_positives from invprop.bounds, not from the params layer."""
    code = (
        "import sys, invprop.config; torch_by_config = 'torch' in sys.modules; "
        "del sys.modules['invprop.config']; import invprop.method; "
        "print(torch_by_config, 'invprop.config' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_params_yaml_restates_exactly_the_defaults() -> None:
    # Defaults live in config.py; params.yaml lists every key (DVC tracks them there) with
    # the same values, so a preset's diff against it is the preset alone.
    text = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_config(ROOT / "params.yaml") == Config()
    assert sorted(flat_keys(text)) == sorted(flat_keys(Config().to_dict()))


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_preset_diff_shows_only_the_keys_it_sets(preset: Path) -> None:
    set_here = flat_keys(yaml.safe_load(preset.read_text()))
    changed = config_diff(load_config(ROOT / "params.yaml"), load_config(preset))
    assert changed
    assert set(changed) <= set(set_here), set(changed) - set(set_here)


def test_stacked_presets_report_kept_values_and_fresh_resets_them(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    first = tmp_path / "first.yaml"
    first.write_text("pretrain:\n  warmup_epochs: 1\n  lr: 0.1\n")
    second = tmp_path / "second.yaml"
    second.write_text("pretrain:\n  lr: 0.5\n")
    apply_preset(params, first)
    stacked = apply_preset(params, second)
    assert stacked.changed == {"pretrain.lr": (0.1, 0.5)}
    assert stacked.kept == {"pretrain.warmup_epochs": (0, 1)}
    assert load_config(params).pretrain.warmup_epochs == 1

    apply_preset(params, first)
    fresh = apply_preset(params, second, fresh=True)
    assert fresh.kept == {}
    assert fresh.changed == {"pretrain.lr": (0.1, 0.5), "pretrain.warmup_epochs": (1, 0)}
    assert load_config(params) == config_from_dict({"pretrain": {"lr": 0.5}})
    assert "# invprop params" in params.read_text()  # comments survive the reset


def test_an_empty_mapping_replaces_rather_than_merges() -> None:
    base = {"transfer": {"roots": {"svhn": "/a"}, "targets": ["digits"]}}
    assert deep_merge(base, {"transfer": {"roots": {}}}) == {
        "transfer": {"roots": {}, "targets": ["digits"]}
    }


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_KEYS.items()))
def test_a_renamed_key_fails_in_one_line_naming_the_new_key(
    tmp_path: Path, old: str, new: str
) -> None:
    section, name = old.split(".")
    value = Config().to_dict()[section][new.split(".")[1]]
    message = f"{old} was renamed to {new}"
    with pytest.raises(InvpropError, match=message) as raised:
        config_from_dict({section: {name: value}})
    assert "\n" not in str(raised.value)
    with pytest.raises(InvpropError, match=message):
        config_from_dict({}, [f"{old}={value}"])
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    preset = tmp_path / "old.yaml"
    preset.write_text(yaml.safe_dump({section: {name: value}}))
    with pytest.raises(InvpropError, match=message):
        apply_preset(params, preset)
    assert params.read_text() == (ROOT / "params.yaml").read_text()  # left as it was
    assert config_from_dict({}, [f"{new}={value}"]).to_dict()[section][new.split(".")[1]] == value


def test_a_checkpoint_written_before_a_rename_reads_under_the_new_names() -> None:
    from invprop.checkpoint import checkpoint_config

    stored = Config().to_dict()
    stored["pretrain"]["knn_k"] = stored["pretrain"].pop("k") + 1
    stored["pretrain"]["propagation"] = "concat"
    del stored["pretrain"]["propagator"]
    stored["model"]["head"] = "mlp_bn"  # a renamed value beside the renamed keys
    cfg = checkpoint_config({"config": stored})
    assert (cfg.pretrain.k, cfg.pretrain.propagator) == (Config().pretrain.k + 1, "concat")
    assert cfg.model.head == "mlp_hidden_out_bn"


def test_restore_types_reads_strings_as_the_values_they_stand_for() -> None:
    # What Snakemake's --config 'pretrain={epochs: 8, ...}' delivers: every scalar a string.
    given = {
        "seed": "3",
        "data": {"root": "123", "train_limit": "10000", "name": "digits"},
        "pretrain": {"epochs": "8", "lr": "0.1", "invp": "false", "precision": "fp32"},
        "augment": {"crop_scale": ["0.3", "1.0"]},
        "evaluate": {"knn_k": ["20", "1"], "linear": {"layers": [{"name": "4", "grid": "3"}]}},
        "embed": {"tags": ["final"]},
        "bogus": "1",
    }
    assert restore_types(given) == {
        "seed": 3,
        "data": {"root": "123", "train_limit": 10000, "name": "digits"},  # root is a string
        "pretrain": {"epochs": 8, "lr": 0.1, "invp": False, "precision": "fp32"},
        "augment": {"crop_scale": [0.3, 1.0]},
        # a list of mappings: each item typed as its own section (a name stays a string)
        "evaluate": {"knn_k": [20, 1], "linear": {"layers": [{"name": "4", "grid": 3}]}},
        "embed": {"tags": ["final"]},
        "bogus": "1",  # unknown: left for validation to name
    }


def test_save_params_writes_a_loadable_file_only_when_it_changes(tmp_path: Path) -> None:
    cfg = config_from_dict({}, ["pretrain.epochs=9"])
    path = save_params(cfg, tmp_path / "deep" / "params.yaml")
    assert load_config(path) == cfg
    before = path.stat().st_mtime_ns
    save_params(cfg, path)
    assert path.stat().st_mtime_ns == before


def test_apply_never_writes_a_params_file_that_reads_back_otherwise(tmp_path: Path) -> None:
    """A list that changes form (flow [] to block and back) beside an end-of-line comment:
    ruamel 0.18 then moves the comment onto the next key and writes broken YAML. Either the
    file reads back as exactly the merged values, or apply refuses, naming the fix, and
    leaves the file as it was."""
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  snapshot_epochs: []       # e.g. [1]: keep epoch 1\n  k: 4\n")
    steps = [
        "pretrain:\n  epochs: 9\n  snapshot_epochs: [3, 4]\n",
        "pretrain:\n  snapshot_epochs: []\n",
    ]
    for number, text in enumerate(steps):
        preset = tmp_path / f"preset{number}.yaml"
        preset.write_text(text)
        before = params.read_text()
        want = deep_merge(yaml.safe_load(before), yaml.safe_load(text))
        try:
            apply_preset(params, preset)
        except InvpropError as exc:
            assert "move that comment to a line of its own" in str(exc)
            assert params.read_text() == before
        else:
            assert yaml.safe_load(params.read_text()) == want
