"""The embed and evaluate stages and the `invprop knn` / `invprop metrics` commands, on a
tiny synthetic dataset (16x16 grey) and a tiny checkpoint built here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import write_model_checkpoint
from typer.testing import CliRunner

from invprop.augment import center
from invprop.checkpoint import (
    build_encoder,
    checkpoint_config,
    encoder_from_checkpoint,
    load_checkpoint,
    training_hash,
    training_params,
)
from invprop.cli import knn as knn_cli
from invprop.cli import metrics as metrics_cli
from invprop.config import Config, config_diff, config_from_dict, deep_merge
from invprop.data import Split, convert_channels, load_prepared
from invprop.data.prepared import ImageFiles
from invprop.errors import InvpropError
from invprop.inference import extract, input_normalisation, normalisation
from invprop.stages import embed as embed_stage
from invprop.stages import evaluate as evaluate_stage
from invprop.stages import instance_discrimination as baseline
from invprop.stages.prepare import prepare
from invprop.workspace import (
    EMBEDDING_ARRAYS,
    INSTANCE_DISCRIMINATION,
    INSTANCE_DISCRIMINATION_EMBEDDINGS,
    INSTANCE_DISCRIMINATION_OFF,
    load_embeddings,
    stage_report,
)

N_TRAIN, N_TEST, K = 120, 60, [20, 1]


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
        "pretrain": {"device": "cpu", "n_background": 64},
        "embed": {"batch_size": 50, "tags": ["final"]},
        "evaluate": {
            "knn_k": K,
            "linear": {"c_grid": [0.1, 1.0], "max_iter": 25, "val_fraction": 0.2},
            # This module's own choice, apart from the defaults: both cheap baselines on,
            # the trained one off unless a test turns it on.
            "baselines": {"pixels": True, "random_init": True, "instance_discrimination": False},
        },
    }
    return config_from_dict(deep_merge(params, sections))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with prepared data, final.pt and the final embeddings."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = make_config()
        prepare(cfg, "synthetic")
        write_model_checkpoint(cfg, Path("models/pretrain/final.pt"), 3, "forward")
        embed_stage.run(cfg)
    return root


@pytest.fixture
def workdir(project, tmp_path, monkeypatch) -> Path:
    """A private copy of the project, as the current directory."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    return copy


# ---------------------------------------------------------------------------------------
# extract


def test_extract_is_center_then_embed_in_eval_mode(workdir):
    cfg = make_config()
    prepared = load_prepared("data/prepared/synthetic")
    encoder = build_encoder(cfg).train()
    features, embeddings = extract(encoder, prepared.test, prepared.meta, cfg, "cpu", 7)
    assert encoder.training  # mode restored
    images = torch.from_numpy(np.array(prepared.test.images))
    mean, std = normalisation(prepared.meta, 1)
    with torch.no_grad():
        want_f, want_e = encoder.eval().embed(center(images, 16, mean, std))
    assert features.shape == (N_TEST, encoder.feature_dim) and embeddings.shape == (N_TEST, 16)
    assert features.dtype == embeddings.dtype == torch.float32
    torch.testing.assert_close(features, want_f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embeddings, want_e, rtol=1e-4, atol=1e-5)


def test_explicit_normalisation_constants_feed_the_network():
    """augment.mean/std (the authors' fixed constants) replace the pretraining dataset's
    own statistics in every view; other datasets (transfer targets) keep theirs."""
    fixed = {"mean": [0.4], "std": [0.3]}
    cfg = make_config(augment=fixed)
    meta = {"dataset": "synthetic", "mean": [0.5], "std": [0.25]}
    assert input_normalisation(meta, cfg) == ([0.4], [0.3])
    assert input_normalisation({**meta, "dataset": "digits"}, cfg) == ([0.5], [0.25])
    assert input_normalisation(meta, make_config()) == ([0.5], [0.25])
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    split = Split("test", images, np.zeros(6, dtype=np.int64))
    encoder = build_encoder(cfg).eval()
    _, embeddings = extract(encoder, split, meta, cfg, "cpu")
    with torch.no_grad():
        want = encoder.embed(center(torch.from_numpy(images), 16, [0.4], [0.3]))[1]
    torch.testing.assert_close(embeddings, want, rtol=1e-4, atol=1e-5)


def test_extract_streams_image_files_like_arrays(workdir, tmp_path):
    from PIL import Image

    cfg = make_config(data={"channels": 3})  # grey files fed to an RGB model
    prepared = load_prepared("data/prepared/synthetic")
    images = np.array(prepared.test.images[:10])
    folder = tmp_path / "files"
    folder.mkdir()
    names = []
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i}.png")
        names.append(f"{i}.png")
    labels = np.asarray(prepared.test.labels[:10])
    as_files = Split("test", ImageFiles(folder, names, (1, 16, 16)), labels)
    as_arrays = Split("test", images, labels)
    encoder = build_encoder(cfg)
    f_files, e_files = extract(encoder, as_files, prepared.meta, cfg, "cpu", 4)
    f_arrays, e_arrays = extract(encoder, as_arrays, prepared.meta, cfg, "cpu", 3)
    torch.testing.assert_close(f_files, f_arrays)
    torch.testing.assert_close(e_files, e_arrays)
    # The grey plane repeated three times, with the grey statistics repeated too.
    x = convert_channels(torch.from_numpy(images), 3)
    mean, std = normalisation(prepared.meta, 3)
    assert mean == prepared.meta["mean"] * 3
    with torch.no_grad():
        torch.testing.assert_close(
            e_arrays, encoder.eval().embed(center(x, 16, mean, std))[1], rtol=1e-4, atol=1e-5
        )


# ---------------------------------------------------------------------------------------
# embed stage


def test_embed_stage_artifact(project, monkeypatch):
    monkeypatch.chdir(project)
    folder = project / "artifacts/embeddings/final"
    with np.load(folder / "embeddings.npz") as data:
        arrays = {key: data[key] for key in data.files}
    assert sorted(arrays) == sorted(EMBEDDING_ARRAYS)
    assert arrays["train_features"].shape == (N_TRAIN, 256)
    assert arrays["train_embeddings"].shape == (N_TRAIN, 16)
    assert arrays["test_features"].shape == (N_TEST, 256)
    assert arrays["test_embeddings"].shape == (N_TEST, 16)
    assert arrays["train_features"].dtype == np.float32
    assert arrays["train_labels"].dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(arrays["test_embeddings"], axis=1), 1, rtol=1e-5)
    prepared = load_prepared("data/prepared/synthetic")
    np.testing.assert_array_equal(arrays["train_labels"], prepared.train.labels)
    np.testing.assert_array_equal(arrays["test_labels"], prepared.test.labels)

    meta = json.loads((folder / "meta.json").read_text())
    from invprop.io import file_sha256

    assert meta["tag"] == "final" and meta["epoch"] == 3 and meta["dataset"] == "synthetic"
    assert meta["checkpoint"] == "models/pretrain/final.pt"
    assert meta["checkpoint_sha256"] == file_sha256("models/pretrain/final.pt")
    assert meta["training_hash"] == training_hash(make_config())
    assert meta["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert meta["dims"] == {"features": 256, "embeddings": 16}
    assert meta["num_classes"] == len(prepared.classes)
    report = json.loads((project / "reports/embed_final.json").read_text())
    assert report["counts"] == meta["counts"] and report["seconds"] >= 0

    # The stored embeddings are the checkpoint's network applied to the clean images.
    encoder, cfg, _ = encoder_from_checkpoint("models/pretrain/final.pt")
    _, test_embeddings = extract(encoder, prepared.test, prepared.meta, cfg, "cpu")
    np.testing.assert_allclose(arrays["test_embeddings"], test_embeddings.numpy(), atol=1e-5)


def test_embed_is_reproducible_byte_for_byte(workdir, project):
    embed_stage.run(make_config())
    again = Path("artifacts/embeddings/final/embeddings.npz").read_bytes()
    assert again == (project / "artifacts/embeddings/final/embeddings.npz").read_bytes()


def test_embed_snapshot_tag(workdir):
    cfg = make_config(pretrain={"snapshot_epochs": [2]}, embed={"tags": ["epoch_0002"]})
    write_model_checkpoint(cfg, Path("models/pretrain/snapshots/epoch_0002.pt"), 2, "forward")
    embed_stage.run(cfg)
    assert load_embeddings("artifacts/embeddings/epoch_0002").meta["epoch"] == 2
    assert Path("reports/embed_epoch_0002.json").is_file()


def test_embed_rejects_bad_tags_and_missing_checkpoints(workdir):
    cfg = make_config()
    with pytest.raises(InvpropError, match="epoch_NNNN"):
        embed_stage.run(cfg, "epoch_7")
    with pytest.raises(InvpropError, match="checkpoint not found"):
        embed_stage.run(cfg, "epoch_0009")


def test_embed_rejects_checkpoint_of_other_data(workdir):
    # The checkpoint was trained at 16x16; params now ask for 20x20.
    cfg = make_config(data={"image_size": 20})
    with pytest.raises(InvpropError, match=r"data\.image_size = 16 .* data\.image_size = 20"):
        embed_stage.run(cfg)
    assert load_embeddings("artifacts/embeddings/final").meta["epoch"] == 3  # untouched


def test_embeddings_with_mismatched_rows_are_refused(workdir):
    path = Path("artifacts/embeddings/final/embeddings.npz")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["train_labels"] = arrays["train_labels"][:-1]
    np.savez(path, **arrays)
    with pytest.raises(InvpropError, match=r"embeddings\.npz.*train_features has 120 rows.*119"):
        load_embeddings("artifacts/embeddings/final")
    with pytest.raises(InvpropError, match=r"embeddings\.npz"):
        evaluate_stage.run(make_config())


def test_embeddings_of_other_data_are_refused(workdir):
    path = Path("artifacts/embeddings/final/embeddings.npz")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays = {key: value[:-5] for key, value in arrays.items()}  # consistent, but too short
    np.savez(path, **arrays)
    with pytest.raises(InvpropError, match="rerun the embed stage"):
        evaluate_stage.run(make_config())


def test_stale_embeddings_are_refused(workdir):
    write_model_checkpoint(make_config(), Path("models/pretrain/final.pt"), 4, "forward")
    with pytest.raises(InvpropError, match="sha256"):
        evaluate_stage.run(make_config())


# ---------------------------------------------------------------------------------------
# evaluate stage


def knn_keys(prefix: str) -> set[str]:
    return {f"{prefix}/k{k}/{m}" for k in K for m in ("top1", "top5")} | {f"{prefix}/seconds"}


def linear_keys(prefix: str) -> set[str]:
    return {f"{prefix}/{m}" for m in ("top1", "top5", "c", "seconds", "protocol")}


def expected_keys(prefix: str, bank: bool) -> set[str]:
    """The keys of one trained representation, on test and on the validation part."""
    keys = set()
    for where in (prefix, f"{prefix}/val"):
        for kind in ("embeddings", "features"):
            keys |= knn_keys(f"{where}/knn_clean/{kind}")
        if bank:
            keys |= knn_keys(f"{where}/knn_bank")
        keys |= linear_keys(f"{where}/linear")
    return keys


def test_evaluate_writes_flat_metrics(workdir):
    evaluate_stage.run(make_config())
    metrics = json.loads(Path("reports/evaluate.json").read_text())
    want = expected_keys("invp", bank=True) | expected_keys("random_init", bank=False)
    want |= knn_keys("pixels/knn") | knn_keys("pixels/val/knn")
    want |= linear_keys("pixels/linear") | linear_keys("pixels/val/linear")
    want |= {"random_init/extract/seconds", "invp/epoch"}
    want |= {"instance_discrimination/status"}
    want |= {f"evaluate/{m}" for m in ("seconds", "device", "num_classes")}
    want |= {"evaluate/train_images", "evaluate/test_images"}
    assert set(metrics) == want
    assert all(not isinstance(v, dict | list) for v in metrics.values())  # flat
    accuracies = {k: v for k, v in metrics.items() if k.endswith(("/top1", "/top5"))}
    assert all(0.0 <= v <= 1.0 for v in accuracies.values())
    assert all(
        metrics[k.replace("/top1", "/top5")] >= v
        for k, v in accuracies.items()
        if k.endswith("/top1")
    )
    assert metrics["invp/linear/c"] in (0.1, 1.0)
    assert metrics["invp/linear/protocol"] == "lbfgs"
    assert metrics["instance_discrimination/status"] == (
        "not run (evaluate.baselines.instance_discrimination is off)"
    )
    # The synthetic shapes are easy: raw pixels are well above chance (10 classes).
    assert metrics["pixels/knn/k20/top1"] > 0.4
    assert metrics["pixels/linear/top1"] > 0.4
    assert metrics["invp/epoch"] == 3


def test_evaluate_bank_knn_uses_the_bank(workdir):
    # The bank was filled with the checkpoint's own clean train embeddings, so kNN on the
    # bank equals clean kNN on the embeddings, up to float error.
    off = {"pixels": False, "random_init": False}
    metrics = evaluate_stage.evaluate(make_config(evaluate={"baselines": off}))
    for k in K:
        assert metrics[f"invp/knn_bank/k{k}/top1"] == pytest.approx(
            metrics[f"invp/knn_clean/embeddings/k{k}/top1"], abs=1.5 / N_TEST
        )
    assert metrics["pixels/status"] == "not run (evaluate.baselines.pixels is off)"
    assert metrics["random_init/status"] == "not run (evaluate.baselines.random_init is off)"


def test_a_validation_part_with_no_image_is_refused_naming_the_param() -> None:
    labels = np.repeat(np.arange(10), 4)  # 4 images a class: 10% of each rounds to 0
    with pytest.raises(InvpropError, match=r"evaluate.val_fraction = 0.1 holds out no image"):
        evaluate_stage.validation_rows(labels, make_config(evaluate={"val_fraction": 0.1}))
    fit, val = evaluate_stage.validation_rows(labels, make_config(evaluate={"val_fraction": 0.25}))
    assert len(val) == 10 and len(fit) == 30


def test_validation_is_a_fixed_stratified_part_of_train_scored_against_the_rest(workdir):
    off = {"pixels": False, "random_init": False}
    cfg = make_config(evaluate={"baselines": off, "val_fraction": 0.25})
    metrics = evaluate_stage.evaluate(cfg)
    embeddings = load_embeddings("artifacts/embeddings/final")
    labels = embeddings["train_labels"]
    fit, val = (rows.numpy() for rows in evaluate_stage.validation_rows(labels, cfg))
    assert np.intersect1d(fit, val).size == 0 and fit.size + val.size == N_TRAIN
    for c in np.unique(labels):
        assert (labels[val] == c).sum() == round(0.25 * (labels == c).sum())
    # The data seed draws the rows; the training seed leaves them alone.
    retrained = dataclasses.replace(cfg, seed=7)
    assert np.array_equal(evaluate_stage.validation_rows(labels, retrained)[1].numpy(), val)
    redrawn = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seed=7))
    assert not np.array_equal(evaluate_stage.validation_rows(labels, redrawn)[1].numpy(), val)
    # K = 1: each validation row takes the label of its most cosine-similar fit row.
    for kind in ("features", "embeddings"):
        x = embeddings[f"train_{kind}"].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        nearest = fit[np.argmax(x[val] @ x[fit].T, axis=1)]
        want = float(np.mean(labels[nearest] == labels[val]))
        assert metrics[f"invp/val/knn_clean/{kind}/k1/top1"] == pytest.approx(want)
    assert metrics["invp/val/linear/c"] in (0.1, 1.0)


def test_instance_discrimination_stage_off_records_why_and_trains_nothing(workdir):
    baseline.run(make_config())
    assert json.loads((INSTANCE_DISCRIMINATION_EMBEDDINGS / "status.json").read_text()) == {
        "status": INSTANCE_DISCRIMINATION_OFF
    }
    assert sorted(p.name for p in INSTANCE_DISCRIMINATION_EMBEDDINGS.iterdir()) == ["status.json"]
    for folder in (INSTANCE_DISCRIMINATION.checkpoints, INSTANCE_DISCRIMINATION.metrics):
        assert folder.is_dir() and not any(folder.iterdir())
    assert json.loads(stage_report("instance_discrimination").read_text()) == {
        "status": INSTANCE_DISCRIMINATION_OFF
    }


def test_instance_discrimination_stage_trains_invp_off_and_evaluate_scores_it(workdir):
    one_epoch = {"epochs": 1, "batch_size": 30, "snapshot_epochs": []}
    on = {"instance_discrimination": True, "pixels": False, "random_init": False}
    cfg = make_config(pretrain=one_epoch, evaluate={"baselines": on})
    baseline.run(make_config(pretrain=one_epoch))  # off: only status.json
    with pytest.raises(InvpropError, match=r"instance_discrimination/ holds no embeddings"):
        evaluate_stage.run(cfg)

    baseline.run(cfg)
    state = load_checkpoint(INSTANCE_DISCRIMINATION.final)
    # It records the sections a training reads: those of `cfg`, with InvP off.
    invp_off = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, invp=False))
    assert state["config"] == training_params(invp_off)
    assert config_diff(cfg, checkpoint_config(state))["pretrain.invp"] == (True, False)
    assert state["history"][0]["loss_invariance"] == 0.0
    embeddings = load_embeddings(INSTANCE_DISCRIMINATION_EMBEDDINGS)
    assert embeddings.meta["checkpoint"] == str(INSTANCE_DISCRIMINATION.final)
    invp = load_embeddings("artifacts/embeddings/final")
    assert embeddings.arrays["train_embeddings"].shape == invp.arrays["train_embeddings"].shape
    assert not np.array_equal(
        embeddings.arrays["train_embeddings"], invp.arrays["train_embeddings"]
    )
    assert not (INSTANCE_DISCRIMINATION_EMBEDDINGS / "status.json").exists()
    assert json.loads(stage_report("instance_discrimination").read_text())["epochs"] == 1

    metrics = evaluate_stage.evaluate(cfg)
    assert expected_keys("instance_discrimination", bank=True) <= set(metrics)
    assert "instance_discrimination/status" not in metrics
    assert 0.0 <= metrics["instance_discrimination/knn_bank/k20/top1"] <= 1.0


def test_evaluate_sgd_augmented_protocol(workdir):
    cfg = make_config(
        evaluate={
            "linear": {"protocol": "sgd_augmented", "epochs": 8, "lr": 1.0, "batch_size": 8},
            "baselines": {"pixels": False, "random_init": True},
        }
    )
    first = evaluate_stage.evaluate(cfg)
    assert first["invp/linear/protocol"] == "sgd_augmented"
    assert first["random_init/linear/protocol"] == "sgd_augmented"
    assert "invp/linear/c" not in first
    assert 0 <= first["invp/linear/top1"] <= first["invp/linear/top5"] <= 1
    assert first["invp/linear/top1"] > 0.15  # it learned something (10 classes: chance 0.1)
    # the authors' figure beside the honest one: the best test epoch, never below the last
    best = "invp/linear/authors_best_on_test"
    assert first[f"{best}/top1"] >= first["invp/linear/top1"]
    assert 1 <= first[f"{best}/epoch"] <= 8 and 0 <= first[f"{best}/top5"] <= 1
    second = evaluate_stage.evaluate(cfg)
    assert second["invp/linear/top1"] == first["invp/linear/top1"]  # seeded
    assert second[f"{best}/top1"] == first[f"{best}/top1"]


def test_sgd_probe_step_schedule_and_batchnorm_run(workdir):
    linear = {
        "protocol": "sgd_augmented",
        "epochs": 3,
        "lr": 1.0,
        "batch_size": 16,
        "schedule": "step",
        "milestones": [1, 2],
        "batchnorm": "train",
    }
    cfg = make_config(evaluate={"linear": linear, "baselines": {"pixels": False}})
    metrics = evaluate_stage.evaluate(cfg)
    assert 0 <= metrics["invp/linear/top1"] <= metrics["invp/linear/authors_best_on_test/top1"]


# ---------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    knn_cli.register(app)
    metrics_cli.register(app)
    return app


def invoke(app, *args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_knn_of_embeddings_and_checkpoint(workdir, cli):
    code, out, _ = invoke(cli, "knn", "artifacts/embeddings/final", "--k", "20", "--json")
    assert code == 0, out
    from_folder = json.loads(out)
    code, out, _ = invoke(cli, "knn", "models/pretrain/final.pt", "--k", "20", "--json")
    assert code == 0, out
    from_checkpoint = json.loads(out)
    # Same network, same images, same function: the same figures, plus the bank's.
    for key in ("knn_clean/embeddings/k20/top1", "knn_clean/features/k20/top5"):
        assert from_folder[key] == pytest.approx(from_checkpoint[key], abs=1.5 / N_TEST)
    assert "knn_bank/k20/top1" in from_checkpoint and from_checkpoint["epoch"] == 3
    evaluate_stage.run(make_config())
    metrics = json.loads(Path("reports/evaluate.json").read_text())
    assert (
        from_folder["knn_clean/embeddings/k20/top1"]
        == (metrics["invp/knn_clean/embeddings/k20/top1"])
    )
    code, out, _ = invoke(cli, "knn", "models/pretrain/final.pt", "--k", "20")
    assert code == 0 and "knn_bank/k20/top1" in out


def test_cli_knn_user_errors(workdir, cli):
    code, _, err = invoke(cli, "knn", "nowhere.pt")
    assert code == 2 and err.count("\n") == 1 and "nowhere.pt not found" in err
    Path("broken").mkdir()
    code, _, err = invoke(cli, "knn", "broken")
    assert code == 2 and err.count("\n") == 1 and "embeddings.npz" in err


def git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_cli_metrics_workspace_and_revisions(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    Path("reports").mkdir()
    Path("reports/evaluate.json").write_text(json.dumps({"invp/linear/top1": 0.5, "x": "a"}))
    Path("reports/pretrain.json").write_text(json.dumps({"loss": {"final": 2.0}}))
    git("init", "-q", cwd=tmp_path)
    git("add", "reports", cwd=tmp_path)
    git("commit", "-q", "-m", "one", cwd=tmp_path)
    Path("reports/evaluate.json").write_text(json.dumps({"invp/linear/top1": 0.75, "x": "b"}))
    git("commit", "-q", "-am", "two", cwd=tmp_path)
    Path("reports/evaluate.json").write_text(json.dumps({"invp/linear/top1": 0.8, "new": 1}))

    code, out, _ = invoke(cli, "metrics", "--json")
    assert code == 0
    assert json.loads(out) == {
        "reports/evaluate.json": {"invp/linear/top1": 0.8, "new": 1},
        "reports/pretrain.json": {"loss/final": 2.0},
    }
    code, out, _ = invoke(cli, "metrics", "reports/pretrain.json", "--json")
    assert json.loads(out) == {"reports/pretrain.json": {"loss/final": 2.0}}

    code, out, _ = invoke(cli, "metrics", "--rev", "HEAD~1", "--rev", "HEAD", "--json")
    assert code == 0, out
    both = json.loads(out)
    assert (both["a"], both["b"]) == ("HEAD~1", "HEAD")
    row = both["metrics"]["reports/evaluate.json"]["invp/linear/top1"]
    assert row == {"a": 0.5, "b": 0.75, "diff": 0.25}
    assert both["metrics"]["reports/evaluate.json"]["x"] == {"a": "a", "b": "b", "diff": None}
    assert both["metrics"]["reports/pretrain.json"]["loss/final"]["diff"] == 0.0

    code, out, _ = invoke(cli, "metrics", "--rev", "HEAD", "--json")  # HEAD vs workspace
    one = json.loads(out)["metrics"]["reports/evaluate.json"]
    assert one["invp/linear/top1"]["diff"] == pytest.approx(0.05)
    assert one["new"] == {"a": None, "b": 1, "diff": None}

    code, out, _ = invoke(cli, "metrics", "--rev", "HEAD~1", "--rev", "HEAD")
    assert code == 0 and "invp/linear/top1" in out and "0.25" in out
    code, out, _ = invoke(cli, "metrics")
    assert code == 0 and "loss/final" in out


def test_cli_metrics_user_errors(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke(cli, "metrics")
    assert code == 2 and err.count("\n") == 1 and "no reports/*.json" in err
    code, _, err = invoke(cli, "metrics", "missing.json")
    assert code == 2 and err.count("\n") == 1 and "missing.json not found" in err
    code, _, err = invoke(cli, "metrics", "--rev", "HEAD")
    assert code == 2 and err.count("\n") == 1 and "not inside a git repository" in err

    Path("reports").mkdir()
    Path("reports/a.json").write_text("{}")
    git("init", "-q", cwd=tmp_path)
    git("add", "reports", cwd=tmp_path)
    git("commit", "-q", "-m", "one", cwd=tmp_path)
    code, _, err = invoke(cli, "metrics", "--rev", "no-such-branch")
    assert code == 2 and err.count("\n") == 1 and "no-such-branch: no such git revision" in err
    code, _, err = invoke(cli, "metrics", "--rev", "HEAD", "--rev", "HEAD", "reports/b.json")
    assert code == 2 and err.count("\n") == 1 and "reports/b.json exists neither" in err
    Path("reports/bad.json").write_text("{oops")
    code, _, err = invoke(cli, "metrics", "reports/bad.json")
    assert code == 2 and err.count("\n") == 1 and "not valid JSON" in err
