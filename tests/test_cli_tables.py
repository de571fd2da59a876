"""Every table the CLI prints fits 80 columns without splitting a word.

80 columns is what rich uses when the output goes to a file or a pipe. Each command that
prints a table runs once on a small workspace of real artifacts (prepared digits, two
checkpoints, the embed, graph and propagate stages' outputs, evaluate and transfer
reports with the longest words the stages write), with COLUMNS=80; every word of every
table it printed must be in its output, whole.
"""

from __future__ import annotations

import json
import re
import subprocess
from contextlib import chdir
from pathlib import Path

import pytest
import typer
import yaml
from conftest import write_model_checkpoint
from test_tables import EVALUATE, TRANSFER, words
from typer.testing import CliRunner

from invprop.cli import app
from invprop.config import config_from_dict
from invprop.tables import Table

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "seed": 0,
    "data": {"name": "digits", "image_size": 16, "train_limit": 120, "test_limit": 40},
    "model": {"backbone": "small_cnn", "head": "mlp_hidden_bn", "dim": 16},
    "transfer": {"targets": ["synthetic"]},
    "pretrain": {"epochs": 2, "snapshot_epochs": [1], "k": 4},
    "embed": {"tags": ["final", "epoch_0001"]},
    "graph": {"k": 8},
    "propagate": {"k": 4, "hops": 2, "n_pos": 6},
}
VAL = {  # evaluate's validation figures: the longest keys it writes
    f"{prefix}/val/knn_clean/{kind}/k200/top1": 0.5
    for prefix in ("invp", "instance_discrimination")
    for kind in ("embeddings", "features")
}

# Every command, and the arguments it runs with here; commands that print no table:
COMMANDS = {
    "params diff": ["params", "diff", "params.yaml", str(ROOT / "presets/fmnist-gpu.yaml")],
    "params cost": ["params", "cost", "--train-images", "5000", "--test-images", "1000"],
    "data show": ["data", "show", "data/prepared/digits"],
    "ckpt show": ["ckpt", "show", "models/pretrain/final.pt"],
    "ckpt diff": [
        "ckpt",
        "diff",
        "models/pretrain/snapshots/epoch_0001.pt",
        "models/pretrain/final.pt",
    ],
    "bank stats": ["bank", "stats", "models/pretrain/final.pt"],
    "graph neighbours": ["graph", "neighbours", "3"],
    "graph neighbours --embeddings": [
        "graph",
        "neighbours",
        "0",
        "--embeddings",
        "photos.npz",
        "--k",
        "3",
    ],
    "propagate show": ["propagate", "show", "3"],
    "propagate stats": ["propagate", "stats"],
    "knn": ["knn", "artifacts/embeddings/final", "--k", "20"],
    "knn --train": ["knn", "--train", "photos.npz", "--queries", "photos.npz", "--k", "3"],
    "embed": ["embed", "models/pretrain/final.pt", "photos", "--out", "photos2.npz"],
    "metrics": ["metrics"],
    "metrics --rev": ["metrics", "--rev", "HEAD"],
    "metrics --table": ["metrics", "--table"],
    "study": ["study", "--where", "pretrain.epochs=4"],
}
# Commands that print no table: YAML, a PNG's path, a stage's own log, the export's code
# to load it, the lines of what is missing before sharing.
NO_TABLE = {"params show", "params apply", "data grid", "stage", "ckpt export", "share"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, writers):
    from invprop.checkpoint import image_preprocessing, load_checkpoint, save_checkpoint
    from invprop.data import load_prepared
    from invprop.inference import normalisation
    from invprop.stages import embed, graph, propagate
    from invprop.stages.prepare import prepare
    from invprop.workspace import PRETRAIN

    root = tmp_path_factory.mktemp("cli_tables")
    cfg = config_from_dict(PARAMS)
    with chdir(root):
        Path("params.yaml").write_text(yaml.safe_dump(PARAMS))
        prepare(cfg, "digits")
        write_model_checkpoint(cfg, PRETRAIN.snapshot(1), 1, "random")
        write_model_checkpoint(cfg, PRETRAIN.final, 2, "forward")
        state = load_checkpoint(
            PRETRAIN.final
        )  # what `invprop embed` needs, as training records it
        prepared = load_prepared("data/prepared/digits")
        mean, std = normalisation(prepared.meta, cfg.data.channels)
        state["preprocessing"] = image_preprocessing(cfg, prepared.shape, mean, std)
        save_checkpoint(PRETRAIN.final, state)
        embed.run(cfg, "final", "epoch_0001")
        graph.run(cfg, "final")
        propagate.run(cfg, "final")
        Path("reports/evaluate.json").write_text(json.dumps(EVALUATE | VAL))
        Path("reports/transfer.json").write_text(json.dumps(TRANSFER))
        pretrain = {
            "device": "cpu",
            "epochs": 2,
            "table_purity": [0.1923828125, 0.21484375],
            "footprint": {"wall_seconds": 1.12, "cpu_seconds": 5.732, "peak_rss_mb": 813.4},
        }
        Path("reports/pretrain.json").write_text(json.dumps(pretrain))
        writers.image_folder(Path("photos"), {"cat": 3, "dog": 3}, size=16, mode="L")
        result = CliRunner().invoke(
            app, ["embed", "models/pretrain/final.pt", "photos", "--out", "photos.npz"]
        )
        assert result.exit_code == 0, result.output
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(["git", "init", "-q"], check=True)
        subprocess.run([*git, "add", "reports"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "reports"], check=True)
        # the workspace differs from HEAD: a figure changed, a file added
        Path("reports/evaluate.json").write_text(
            json.dumps(EVALUATE | VAL | {"invp/linear/top1": 0.9})
        )
        Path("reports/report.json").write_text(json.dumps({"footprint": pretrain["footprint"]}))
    return root


@pytest.fixture
def printed(monkeypatch):
    """The invprop.tables.Table objects the CLI renders."""
    tables: list[Table] = []
    renderable = Table.renderable

    def spy(self, width):
        tables.append(self)
        return renderable(self, width)

    monkeypatch.setattr(Table, "renderable", spy)
    return tables


def leaf_commands(group, path=()):
    for name, sub in group.commands.items():
        if hasattr(sub, "commands"):
            yield from leaf_commands(sub, (*path, name))
        else:
            yield " ".join((*path, name))


def test_every_command_is_covered():
    commands = set(leaf_commands(typer.main.get_command(app)))
    covered = {name.split(" --")[0] for name in COMMANDS}
    assert commands == covered | NO_TABLE


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_table_fits_80_columns_without_splitting_a_word(
    command, workspace, printed, monkeypatch
):
    if command == "study":  # a study's experiments, as in tests/test_study.py
        import test_study

        from invprop import study

        runs = [test_study.make_run(f"s{s}", s, 4, 0.80 + s / 100, 0.79) for s in range(3)]
        runs.append(test_study.make_run("long-s0", 0, 20, 0.9, 0.8))
        shown = test_study.show_output(runs, ["long-s1"])
        monkeypatch.setattr(study, "read_experiments", lambda repo, all_commits: shown)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(workspace)
    result = CliRunner().invoke(app, COMMANDS[command])
    assert result.exit_code == 0, result.output
    assert printed, f"{command} printed no table"
    wanted: dict[str, int] = {}
    for table in printed:
        texts = [table.title, *table.columns, *(c for row in table.rows for c in row)]
        for word in words(" ".join([*texts, *table.notes])):
            wanted[word] = wanted.get(word, 0) + 1
    found: dict[str, int] = {}
    for word in words(result.stdout):
        found[word] = found.get(word, 0) + 1
    split = {word: n for word, n in wanted.items() if found.get(word, 0) < n}
    assert split == {}, result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    # rounded for reading (JSON keeps every digit): 4 significant digits or 4 decimals
    for figure in re.findall(r"\d[\d,]*\.\d+", result.stdout):
        significant = figure.replace(",", "").replace(".", "").lstrip("0")
        assert min(len(significant), len(figure.split(".")[1])) <= 4, figure


@pytest.mark.parametrize(
    ("command", "rows"),
    [
        ("bank stats", ["concat duplicate rate", "neighbour label purity", "table rows filled"]),
        ("propagate show", ["hop 1", "hop 2"]),
    ],
)
def test_purities_and_rates_read_as_percentages_as_in_every_other_table(
    command, rows, workspace, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(workspace)
    result = CliRunner().invoke(app, COMMANDS[command])
    assert result.exit_code == 0, result.output
    for row in rows:
        (line,) = [line for line in result.stdout.splitlines() if f" {row} " in line]
        assert re.search(r"\b\d{1,3}\.\d%", line), line
