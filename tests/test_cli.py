"""The top-level CLI: --help lists every noun, params show|diff|apply, stage, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from invprop.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_every_sub_app() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for noun in ("data", "ckpt", "bank", "graph", "propagate", "knn", "metrics", "stage", "params"):
        assert noun in result.output


def test_params_show_resolves_defaults_and_overrides(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  epochs: 3\n")
    result = invoke("params", "show", "--params", str(params), "--set", "graph.k=7", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["pretrain"]["epochs"] == 3 and shown["graph"]["k"] == 7
    assert shown["propagate"]["hops"] == 3  # a default filled in


def test_params_diff_and_apply(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  epochs: 3\n")
    preset = tmp_path / "preset.yaml"
    preset.write_text("pretrain:\n  epochs: 9\n  invp: false\n")
    diff = json.loads(invoke("params", "diff", str(params), str(preset), "--json").output)
    assert diff == {
        "pretrain.epochs": {"first": 3, "second": 9},
        "pretrain.invp": {"first": True, "second": False},
    }
    result = invoke("params", "apply", str(preset), "--params", str(params))
    assert result.exit_code == 0 and "2 value(s) changed" in result.output
    assert yaml.safe_load(params.read_text())["pretrain"] == {"epochs": 9, "invp": False}

    second = tmp_path / "second.yaml"
    second.write_text("pretrain:\n  lr: 0.5\n")
    result = invoke("params", "apply", str(second), "--params", str(params), "--json")
    assert json.loads(result.output) == {
        "changed": {"pretrain.lr": {"old": 0.03, "new": 0.5}},
        "kept": {"pretrain.epochs": 9, "pretrain.invp": False},
    }
    result = invoke("params", "apply", str(second), "--params", str(params), "--fresh")
    assert result.exit_code == 0, result.output
    assert "pretrain.epochs: 9 -> 4" in result.output and "kept" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("params", "show", "--params", "missing.yaml"), "params file not found: missing.yaml"),
        (("params", "show", "--set", "pretrain.hops=0"), "pretrain.hops = 0 is out of range"),
        (("stage", "bogus"), "unknown stage 'bogus'"),
    ],
)
def test_user_errors_are_one_line_with_nonzero_exit(
    args: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_stage_runs_the_pipeline_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"name": "synthetic", "image_size": 8, "train_limit": 30, "test_limit": 10},
                "transfer": {"targets": []},
            }
        )
    )
    result = invoke("stage", "prepare", "synthetic")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "data/prepared/synthetic/meta.json").read_text())
    assert meta["counts"] == {"train": 30, "test": 10}
    footprint = json.loads((tmp_path / "reports/prepare_synthetic.json").read_text())["footprint"]
    assert set(footprint) == {"wall_seconds", "cpu_seconds", "peak_rss_mb"}
    assert 0 < footprint["wall_seconds"] < 600 and footprint["peak_rss_mb"] > 10


def test_a_stage_without_its_own_report_gets_one_for_its_footprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invprop import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setitem(pipeline.STAGES, "report", "builtins:id")  # a stage that writes nothing
    assert pipeline.stage_report("report") == Path("reports/report.json")
    assert pipeline.stage_report("embed", ["epoch_0002"]) == Path("reports/embed_epoch_0002.json")
    assert pipeline.main("report", []) == 0
    written = json.loads((tmp_path / "reports/report.json").read_text())
    assert set(written) == {"footprint"} and written["footprint"]["wall_seconds"] >= 0
