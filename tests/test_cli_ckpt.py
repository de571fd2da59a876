"""`invprop ckpt show|diff` on checkpoints of a real (tiny) pretraining run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from invprop.checkpoint import load_checkpoint, save_checkpoint, training_hash
from invprop.cli.ckpt import app
from invprop.config import config_from_dict
from invprop.stages.prepare import prepare
from invprop.training import train

TINY = {
    "data": {"name": "synthetic", "image_size": 16, "train_limit": 128, "test_limit": 32},
    "model": {"dim": 16},
    "pretrain": {
        "epochs": 2,
        "batch_size": 32,
        "n_background": 32,
        "n_pos": 8,
        "snapshot_epochs": [1],
        "threads": 1,
        "device": "cpu",
    },
    "embed": {"tags": ["final"]},
    "transfer": {"targets": []},
}

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder after a 2-epoch run: models/pretrain/{final,last}.pt, snapshots/epoch_0001.pt,
    plus `lr.pt`, the final checkpoint relabelled as a run with another learning rate."""
    folder = tmp_path_factory.mktemp("ckpt")
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        (folder / "params.yaml").write_text(yaml.safe_dump(TINY))
        cfg = config_from_dict(TINY)
        prepare(cfg, "synthetic")
        train(cfg)
    finally:
        os.chdir(cwd)
    state = load_checkpoint(folder / "models/pretrain/final.pt")
    state["config"]["pretrain"]["lr"] = 0.01
    state["params_hash"] = training_hash(config_from_dict(state["config"]))
    save_checkpoint(folder / "lr.pt", state)
    return folder


def invoke_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_show_json_describes_the_checkpoint(run_dir: Path) -> None:
    path = run_dir / "models/pretrain/final.pt"
    info = invoke_json("show", str(path))
    cfg = config_from_dict(TINY)
    assert info["epoch"] == 2 and info["epochs"] == 2
    assert info["params_hash"] == training_hash(cfg)
    assert info["params_hash_matches_config"] is True
    assert (info["dataset"], info["image_size"], info["channels"]) == ("synthetic", 16, 1)
    assert (info["backbone"], info["head"], info["dim"]) == ("small_cnn", "mlp_hidden_bn", 16)
    assert info["bank"] == {"vectors": [128, 16], "neighbours": [128, 4]}
    assert info["bank_unfilled_rows"] == 0
    assert info["size_bytes"] == path.stat().st_size
    assert info["model_parameters"] > 0 and info["has_optimizer"] is True
    assert info["history_length"] == 2
    assert info["last_epoch"]["epoch"] == 2 and "loss" in info["last_epoch"]


def test_show_prints_a_table(run_dir: Path) -> None:
    result = runner.invoke(app, ["show", str(run_dir / "models/pretrain/snapshots/epoch_0001.pt")])
    assert result.exit_code == 0, result.output
    assert "1 of 2" in result.stdout and "small_cnn" in result.stdout


def test_diff_of_a_snapshot_and_the_final_checkpoint(run_dir: Path) -> None:
    snapshot = run_dir / "models/pretrain/snapshots/epoch_0001.pt"
    final = run_dir / "models/pretrain/final.pt"
    result = invoke_json("diff", str(snapshot), str(final))
    assert result["epoch"] == {"a": 1, "b": 2}
    assert result["history_length"] == {"a": 1, "b": 2}
    assert result["params"] == {} and result["same_training_params"] is True
    assert result["params_hash"]["a"] == result["params_hash"]["b"]
    assert result["size_bytes"] == {"a": snapshot.stat().st_size, "b": final.stat().st_size}
    assert result["model_equal"] is False and result["bank_equal"] is False


def test_diff_names_the_params_that_differ(run_dir: Path) -> None:
    result = invoke_json("diff", str(run_dir / "models/pretrain/final.pt"), str(run_dir / "lr.pt"))
    assert result["params"] == {"pretrain.lr": {"a": 0.03, "b": 0.01}}
    assert result["same_training_params"] is False
    assert result["model_equal"] is True and result["bank_equal"] is True

    table = runner.invoke(app, ["diff", str(run_dir / "lr.pt"), str(run_dir / "lr.pt")])
    assert table.exit_code == 0, table.output
    assert "identical" in table.stdout


def test_last_and_final_checkpoints_of_a_finished_run_are_equal(run_dir: Path) -> None:
    last, final = run_dir / "models/pretrain/last.pt", run_dir / "models/pretrain/final.pt"
    result = invoke_json("diff", str(last), str(final))
    assert result["model_equal"] is True and result["bank_equal"] is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint not found"),
        ("text", "is not a torch checkpoint"),
        ({"weights": torch.zeros(2)}, "is not an invprop checkpoint"),
        ({"version": 1, "epoch": 3}, "is not a complete invprop checkpoint: no params_hash"),
    ],
    ids=["missing", "text-file", "foreign-torch-file", "incomplete"],
)
def test_bad_files_give_one_line_and_exit_2(
    tmp_path: Path, run_dir: Path, content: object, message: str
) -> None:
    path = tmp_path / "bad.pt"
    if content == "text":
        path.write_text("hello, not a checkpoint\n")
    elif content is not None:
        torch.save(content, path)
    for args in (["show", str(path)], ["diff", str(run_dir / "lr.pt"), str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
