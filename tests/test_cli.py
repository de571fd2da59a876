"""The top-level CLI: --help lists every noun, params show|diff|apply, stage, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from invprop.cli import app
from invprop.config import Config

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
    default_epochs = Config().pretrain.epochs
    assert f"pretrain.epochs: 9 -> {default_epochs}" in result.output
    assert "kept" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("params", "show", "--params", "missing.yaml"), "params file not found: missing.yaml"),
        (("params", "show", "--set", "pretrain.hops=0"), "pretrain.hops = 0 is out of range"),
        (("stage", "bogus"), "'bogus' is not one of 'prepare', 'pretrain'"),
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


def _leaf_commands(group, path=()):
    """(path, click command) of every command of the app, sub-apps walked recursively."""
    for name, sub in group.commands.items():
        if hasattr(sub, "commands"):  # a group: a sub-app
            yield from _leaf_commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def test_every_command_has_json() -> None:
    import typer

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    # the walk reaches the sub-apps' commands, not just the top
    assert {("params", "apply"), ("data", "grid"), ("stage",), ("bank", "stats")} <= set(commands)
    missing = [
        " ".join(path)
        for path, command in commands.items()
        if not any("--json" in param.opts for param in command.params)
    ]
    assert missing == []


def test_version() -> None:
    from invprop import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"invprop {__version__}\n"


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (("stage", "bogus"), "'prepare', 'pretrain'"),
        (("data", "grid", ".", "--out", "x.png", "--split", "val"), "'train', 'test'"),
        (("knn", "x.pt", "--device", "gpu"), "'auto', 'cpu', 'cuda'"),
    ],
)
def test_fixed_choices_are_refused_in_one_line_with_the_valid_values(
    args: tuple[str, ...], choices: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Invalid value") and choices in lines[0]


def test_fixed_choices_complete_in_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for tag in ("final", "epoch_0002", "not_a_tag"):
        (tmp_path / "artifacts/graph" / tag).mkdir(parents=True)

    def complete(line: str) -> list[str]:
        """What bash's completion asks `invprop` for the last word of `line`."""
        env = {
            "_INVPROP_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(line.split(" ")) - 1),
        }
        result = runner.invoke(app, [], prog_name="invprop", env=env)
        return result.output.split()

    assert complete("invprop stage pre") == ["prepare", "pretrain"]
    assert complete("invprop data grid d --split ") == ["train", "test"]
    assert complete("invprop knn x.pt --device c") == ["cpu", "cuda"]
    assert complete("invprop graph neighbours 1 --tag ") == ["epoch_0002", "final"]
    result = invoke("graph", "neighbours", "1", "--tag", "epoch_0009")
    assert result.exit_code == 2
    assert "'epoch_0009' is not a tag of artifacts/graph: epoch_0002, final" in result.output


def test_params_apply_and_stage_print_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("pretrain:\n  epochs: 3\n")
    Path("preset.yaml").write_text("pretrain:\n  epochs: 9\n")
    result = invoke("params", "apply", "preset.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["changed"] == {"pretrain.epochs": {"old": 3, "new": 9}}
    Path("params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"name": "synthetic", "image_size": 8, "train_limit": 30, "test_limit": 10},
                "transfer": {"targets": []},
            }
        )
    )
    result = invoke("stage", "prepare", "synthetic", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["stage"] == "prepare" and shown["exit_status"] == 0
    assert shown["written"]["reports/prepare_synthetic.json"]["counts"] == {"train": 30, "test": 10}


def test_a_narrow_table_folds_long_values_instead_of_cutting_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from invprop.cli.common import print_table

    monkeypatch.setenv("COLUMNS", "40")
    note = "not run (evaluate.baselines.random_init is off)"
    print_table("results", ["method", "kNN", "linear"], [["Random init", note, 0.5]])
    out = capsys.readouterr().out
    assert "…" not in out
    # The note's column, read down its lines: every character is there.
    pieces = [line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 4]
    assert "evaluate.baselines.random_init" in "".join(pieces)
    assert "0.5" in out
