"""The transfer stage (invprop.stages.transfer): class-balanced subsets, the one fine-tuning loop on
a separable toy problem, the stage end to end on a tiny checkpoint, and its input errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_model_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from invprop.checkpoint import build_encoder
from invprop.config import Config, config_from_dict, deep_merge
from invprop.data import load_prepared
from invprop.errors import InvpropError
from invprop.sampling import balanced_subset
from invprop.stages import transfer as transfer_stage
from invprop.stages.prepare import prepare
from invprop.stages.transfer import (
    finetune,
    finetune_steps,
    fraction_label,
    load_target,
    transfer,
)

N_TRAIN, N_TEST = 200, 100


def make_config(**sections) -> Config:
    params = {
        "seed": 0,
        "data": {
            "name": "synthetic",
            "image_size": 16,
            "channels": 1,
            "train_limit": N_TRAIN,
            "test_limit": N_TEST,
        },
        "model": {"backbone": "small_cnn", "head": "mlp_hidden_bn", "dim": 16},
        "pretrain": {"device": "cpu", "n_background": 64, "threads": 1},
        "embed": {"batch_size": 256},
        "evaluate": {
            "linear": {"c_grid": [0.1, 1.0], "max_iter": 25, "val_fraction": 0.2},
            "baselines": {"random_init": True},  # on here whatever the default: it is tested
        },
        "transfer": {
            "targets": ["digits"],
            "semi_fractions": [0.1, 0.5],
            "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        },
    }
    return config_from_dict(deep_merge(params, sections))


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread (the stage sets pretrain.threads = 1 too), restored afterwards: on
    shared cores, one thread is faster than two fighting over them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with prepared synthetic (16x16) and digits (8x8) data and final.pt."""
    root = tmp_path_factory.mktemp("transfer_project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = make_config()
        prepare(cfg, "synthetic")
        prepare(cfg, "digits")
        write_model_checkpoint(cfg, Path("models/pretrain/final.pt"), 2, "random")
    return root


@pytest.fixture
def workdir(project, tmp_path, monkeypatch) -> Path:
    """A private copy of the project, as the current directory."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    return copy


# ---------------------------------------------------------------------------------------
# Subsets


def expected_per_class(labels: np.ndarray, fraction: float) -> int:
    """The documented rule, written out plainly."""
    labelled = [int(v) for v in labels if v >= 0]
    counts = {c: labelled.count(c) for c in set(labelled)}
    share = math.floor(fraction * len(labelled) / len(counts) + 1e-9)
    return min(max(1, share), min(counts.values()))


label_arrays = st.lists(st.integers(-1, 6), min_size=1, max_size=300).map(
    lambda v: np.asarray(v, dtype=np.int64)
)
fractions = st.floats(0.001, 1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(labels=label_arrays, fraction=fractions, seed=st.integers(0, 2**32 - 1))
def test_subset_is_exactly_class_balanced_and_reproducible(labels, fraction, seed):
    if not (labels >= 0).any():
        with pytest.raises(ValueError, match="no labelled rows"):
            balanced_subset(labels, fraction, seed)
        return
    subset = balanced_subset(labels, fraction, seed)
    assert subset.dtype == np.int64
    assert np.all(np.diff(subset) > 0)  # sorted and unique
    assert subset.size == 0 or (subset[0] >= 0 and subset[-1] < labels.size)
    picked = labels[subset]
    assert (picked >= 0).all()  # never an unlabeled row
    classes = np.unique(labels[labels >= 0])
    counts = [(picked == c).sum() for c in classes]  # every class, exactly as many
    assert counts == [expected_per_class(labels, fraction)] * classes.size
    np.testing.assert_array_equal(balanced_subset(labels, fraction, seed), subset)


@st.composite
def class_sized_labels(draw) -> np.ndarray:
    """Shuffled labels with 1..8 classes of 1..80 rows each (rare classes are rarer here
    than in `label_arrays`, so the per-class count varies with the fraction)."""
    counts = draw(st.lists(st.integers(1, 80), min_size=1, max_size=8))
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(draw(st.integers(0, 1000))).permutation(labels)


@settings(max_examples=60, deadline=None)
@given(labels=class_sized_labels(), a=fractions, b=fractions, seed=st.integers(0, 1000))
def test_smaller_fractions_are_nested_in_larger_ones(labels, a, b, seed):
    small, large = sorted((a, b))
    assert np.isin(balanced_subset(labels, small, seed), balanced_subset(labels, large, seed)).all()


def test_subset_of_fashion_mnist_sizes_and_seed():
    labels = np.repeat(np.arange(10), 6000)
    np.random.default_rng(0).shuffle(labels)
    one = balanced_subset(labels, 0.01, seed=0)
    assert one.size == 600 and np.bincount(labels[one]).tolist() == [60] * 10
    ten = balanced_subset(labels, 0.1, seed=0)
    assert ten.size == 6000 and np.isin(one, ten).all()  # nested
    assert balanced_subset(labels, 0.29, seed=0).size == 17400  # 0.29 * 6000 is 1739.99...
    assert not np.array_equal(balanced_subset(labels, 0.01, seed=1), one)
    assert balanced_subset(labels, 1e-6, seed=0).size == 10  # at least one per class
    # imbalanced: capped at the smallest class, still exactly balanced
    skewed = np.array([0] * 50 + [1] * 3)
    assert np.bincount(skewed[balanced_subset(skewed, 1.0, seed=0)]).tolist() == [3, 3]
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_fraction_labels_and_step_rule():
    assert [fraction_label(f) for f in (0.01, 0.1, 0.005, 1.0, 0.07)] == [
        "1pct",
        "10pct",
        "0.5pct",
        "100pct",
        "7pct",
    ]
    # 1% of Fashion-MNIST: 4 batches a pass, but an epoch is at least 20 steps
    assert finetune_steps(600, 5, 128) == (4, 100)
    assert finetune_steps(6000, 5, 128) == (46, 230)
    assert finetune_steps(10, 2, 128) == (1, 40)


# ---------------------------------------------------------------------------------------
# Fine-tuning


def test_finetune_learns_a_separable_problem_deterministically(workdir):
    cfg = make_config(transfer={"finetune": {"epochs": 5, "batch_size": 32, "lr": 0.1}})
    data = load_prepared("data/prepared/synthetic")
    rows = np.arange(len(data.train))
    device = torch.device("cpu")
    results = []
    for _ in range(2):
        encoder = build_encoder(cfg)
        before = [p.detach().clone() for p in encoder.backbone.parameters()]
        results.append(
            finetune(encoder, data.train, rows, data.test, data.meta, 10, cfg, device, "toy")
        )
        after = list(encoder.backbone.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    first, second = results
    assert first.steps == 5 * 20 and first.passes == 17  # 6 batches a pass
    assert first.top1 >= 0.9  # chance is 0.1
    assert first.top5 >= first.top1 and math.isfinite(first.train_loss)
    assert (first.top1, first.top5, first.train_loss) == (
        second.top1,
        second.top5,
        second.train_loss,
    )


# ---------------------------------------------------------------------------------------
# The stage


def test_stage_writes_flat_metrics_and_subsets(workdir):
    cfg = make_config()
    transfer_stage.run(cfg)
    metrics = json.loads(Path("reports/transfer.json").read_text())
    for prefix in ("", "random_init/"):
        for pct in ("10pct", "50pct"):
            assert f"{prefix}semi/{pct}/finetune/top1" in metrics
        for kind in ("linear", "finetune"):
            assert f"{prefix}transfer/digits/{kind}/top1" in metrics
    assert "random_init/status" not in metrics
    accuracies = {k: v for k, v in metrics.items() if k.endswith(("/top1", "/top5"))}
    assert len(accuracies) == 2 * 2 * (2 + 2)  # 2 networks x (2 fractions + 2 protocols)
    assert all(0.0 <= v <= 1.0 for v in accuracies.values())
    assert all(isinstance(v, int | float | str) for v in metrics.values())  # flat
    assert metrics["semi/10pct/labels"] == 20 and metrics["semi/10pct/per_class"] == 2
    assert metrics["semi/50pct/labels"] == 100
    assert metrics["transfer/digits/train_images"] == len(
        load_prepared("data/prepared/digits").train
    )
    assert metrics["transfer/digits/linear/protocol"] == "lbfgs"
    assert metrics["transfer/checkpoint_epoch"] == 2 and metrics["transfer/seconds"] > 0
    # the pretrained and the random-init network start differently, so they end differently
    assert (
        metrics["semi/50pct/finetune/train_loss"]
        != metrics["random_init/semi/50pct/finetune/train_loss"]
    )

    labels = load_prepared("data/prepared/synthetic").train.labels
    for pct, fraction in (("10pct", 0.1), ("50pct", 0.5)):
        subset = np.load(f"artifacts/transfer/subsets/synthetic_{pct}.npy")
        assert subset.dtype == np.int64
        np.testing.assert_array_equal(subset, balanced_subset(labels, fraction, cfg.data.seed))
    meta = json.loads(Path("artifacts/transfer/meta.json").read_text())
    assert meta["sizes"] == {"synthetic_10pct": 20, "synthetic_50pct": 100}
    assert meta["data_seed"] == cfg.data.seed
    assert sorted(p.name for p in Path("artifacts/transfer").iterdir()) == ["meta.json", "subsets"]


def test_baseline_off_says_so(workdir):
    cfg = make_config(
        evaluate={"baselines": {"random_init": False}},
        transfer={"targets": [], "semi_fractions": [0.05]},
    )
    metrics, subsets = transfer(cfg)
    assert metrics["random_init/status"].startswith("not run")
    assert not any(k.startswith("random_init/") and k != "random_init/status" for k in metrics)
    assert list(subsets) == ["synthetic_5pct"] and "semi/5pct/finetune/top5" in metrics


def test_missing_target_names_the_dvc_stage(workdir):
    shutil.rmtree("data/prepared/digits")
    with pytest.raises(InvpropError, match=r"dvc repro prepare_target@digits"):
        transfer(make_config())
    assert not Path("reports/transfer.json").exists()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"data": {"image_size": 20}}, "data.image_size"),
        ({"data": {"channels": 3}}, "data.channels"),
        ({"data": {"name": "digits"}, "transfer": {"targets": []}}, "data.name"),
    ],
)
def test_checkpoint_that_does_not_match_params_is_refused(workdir, change, key):
    with pytest.raises(InvpropError, match=rf"{key} = .*rerun pretraining"):
        transfer(make_config(**change))


def test_target_with_unlabeled_images_is_refused(workdir):
    labels_path = Path("data/prepared/digits/train_labels.npy")
    labels = np.load(labels_path)
    labels[:5] = -1
    np.save(labels_path, labels)
    with pytest.raises(InvpropError, match=r"5 of \d+ train images .* unlabeled"):
        load_target("digits")
    with pytest.raises(InvpropError, match="unlabeled"):
        transfer(make_config())


def test_stage_entry_point_reports_a_missing_target_in_one_line(workdir, monkeypatch, capsys):
    import yaml

    from invprop import pipeline

    # Registered here until invprop/pipeline.py lists the stage; a no-op afterwards.
    monkeypatch.setitem(pipeline.STAGES, "transfer", "invprop.stages.transfer:run")
    Path("params.yaml").write_text(yaml.safe_dump(make_config().to_dict()))
    shutil.rmtree("data/prepared/digits")
    assert pipeline.main("transfer", []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("invprop transfer: error: transfer target 'digits'")
    assert "dvc repro prepare_target@digits" in err[-1]
    assert not Path("artifacts/transfer").exists()
