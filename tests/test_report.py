"""The report stage: tables with the known numbers, valid linked figures, "not run" for what
is absent, clear errors for what is required, and byte-identical reruns."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest
from conftest import exact_table, write_bank_checkpoint
from PIL import Image
from report_data import EVALUATE, TRANSFER

from invprop.config import config_from_dict
from invprop.errors import InvpropError
from invprop.figures import choose_anchors
from invprop.stages import report

ROOT = Path(__file__).resolve().parents[1]

PARAMS = {
    "seed": 0,
    "data": {"name": "digits", "train_limit": 120, "test_limit": 60},
    "transfer": {"targets": []},
    "pretrain": {"epochs": 3, "snapshot_epochs": [1, 2]},
    "embed": {"tags": ["final"]},  # the explorer page's test covers several tags
    "graph": {"k": 6},
    "propagate": {"k": 4, "hops": 2, "n_pos": 6},
    "report": {"anchors": 2, "map_points": 40},
}

INVP_ROW = "| InvP | 81.2 | 79.9 | 80.5 | 85.7 |"
RANDOM_ROW = "| Random init | 30.1 | 40.5 | – | 45.0 |"
PIXELS_ROW = "| Raw pixels | – | 77.8 | – | 80.0 |"
ID_OFF_ROW = (
    "| Instance discrimination | not run (evaluate.baselines.instance_discrimination is off) "
    "| – | – | – |"
)


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_tsv(name: str, values: list[float]) -> None:
    """A dvclive curve as pretrain writes it: epoch e at step e - 1."""
    folder = Path("dvclive/pretrain/plots/metrics")
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"step\t{name}"] + [f"{step}\t{value}" for step, value in enumerate(values)]
    (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Every required input, from the real graph and propagate stages on digits pixels;
    no transfer.json, no snapshots, instance discrimination off, no kNN monitor curve."""
    from invprop.data import load_prepared
    from invprop.io import save_npz
    from invprop.stages import graph, propagate
    from invprop.stages.prepare import prepare

    root = tmp_path_factory.mktemp("report")
    cfg = config_from_dict(PARAMS)
    with chdir(root):
        prepare(cfg, "digits")
        data = load_prepared("data/prepared/digits")
        arrays = {}
        for split in (data.train, data.test):
            pixels = np.asarray(split.images, dtype=np.float64).reshape(len(split), -1)
            arrays[f"{split.name}_features"] = unit(pixels)
            arrays[f"{split.name}_embeddings"] = unit(pixels)
            arrays[f"{split.name}_labels"] = np.asarray(split.labels, dtype=np.int64)
        folder = Path("artifacts/embeddings/final")
        folder.mkdir(parents=True)
        save_npz(folder / "embeddings.npz", arrays)
        meta = {
            "tag": "final",
            "dataset": "digits",
            "epoch": 3,
            "checkpoint_sha256": "0" * 64,
            "num_classes": 10,
            "counts": {"train": len(data.train), "test": len(data.test)},
        }
        (folder / "meta.json").write_text(json.dumps(meta))
        graph.run(cfg, "final")
        with pytest.warns(UserWarning, match="no pretrain snapshots"):
            propagate.run(cfg, "final")
        Path("reports/evaluate.json").write_text(json.dumps(EVALUATE))
        Path("reports/pretrain.json").write_text(
            json.dumps(
                {
                    "epochs": 3,
                    "device": "cpu",
                    "footprint": {"wall_seconds": 42.25, "peak_rss_mb": 900},
                }
            )
        )
        Path("reports/embed_final.json").write_text(json.dumps({"seconds": 3.0, "device": "cpu"}))
        write_tsv("loss", [9.1, 8.2, 7.4])
        write_tsv("loss_instance", [9.1, 8.0, 7.0])
        write_tsv("loss_invariance", [0.0, 1.1, 0.8])
        write_tsv("lr", [0.03, 0.02, 0.005])
    return root, cfg


@pytest.fixture(scope="module")
def full(base, tmp_path_factory):
    """`base` plus every optional input: transfer.json, snapshots (propagate rerun over
    their banks), instance-discrimination figures and the kNN monitor curve."""
    from invprop.stages import propagate

    root = tmp_path_factory.mktemp("full") / "ws"
    shutil.copytree(base[0], root)
    cfg = base[1]
    with chdir(root):
        with np.load("artifacts/embeddings/final/embeddings.npz") as data:
            train = data["train_embeddings"]
        rng = np.random.default_rng(1)
        for epoch, noise in ((1, 2.0), (2, 0.5), (3, 0.1)):
            vectors = unit(train + noise * rng.standard_normal(train.shape) / 8)
            name = "final.pt" if epoch == 3 else f"snapshots/epoch_{epoch:04d}.pt"
            write_bank_checkpoint(
                Path("models/pretrain") / name, epoch, vectors, exact_table(vectors, 4), cfg
            )
        propagate.run(cfg, "final")
        evaluate = dict(EVALUATE)
        del evaluate["instance_discrimination/status"]
        evaluate |= {
            "instance_discrimination/knn_clean/embeddings/k200/top1": 0.7012,
            "instance_discrimination/knn_clean/features/k200/top1": 0.6949,
            "instance_discrimination/knn_bank/k200/top1": 0.7,
            "instance_discrimination/linear/top1": 0.75,
        }
        Path("reports/evaluate.json").write_text(json.dumps(evaluate))
        Path("reports/transfer.json").write_text(json.dumps(TRANSFER))
        write_tsv("knn_bank_top1", [0.5, 0.6, 0.7])
    return root, cfg


def run_report(root: Path, cfg) -> tuple[str, dict[str, bytes]]:
    with chdir(root):
        report.run(cfg)
        markdown = Path("reports/report.md").read_text()
        figures = {p.name: p.read_bytes() for p in sorted(Path("reports/figures").iterdir())}
    return markdown, figures


def linked_pngs(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]+\]\(figures/([^)]+\.png)\)", markdown)


# ---------------------------------------------------------------------------------------
# Inputs and choices (the tables are tests/test_tables.py's)


def test_read_curves_turns_steps_into_epochs(tmp_path):
    with chdir(tmp_path):
        write_tsv("loss", [3.0, 2.0])
        Path("dvclive/pretrain/plots/metrics/lr.tsv").write_text(
            "step\tlr\n0\t0.1\n1\t0.2\n1\t0.3\n"
        )
        curves = report.read_curves()
        assert curves["loss"][0].tolist() == [1, 2] and curves["loss"][1].tolist() == [3.0, 2.0]
        assert curves["lr"][1].tolist() == [0.1, 0.3]  # a repeated step keeps the last value
        Path("dvclive/pretrain/plots/metrics/lr.tsv").write_text("epoch\tvalue\n1\t0.1\n")
        with pytest.raises(InvpropError, match=r"lr\.tsv is not a dvclive curve"):
            report.read_curves()


def test_choose_anchors_is_seeded_and_class_balanced():
    labels = np.repeat(np.arange(5), 20)
    np.random.default_rng(0).shuffle(labels)
    picked = choose_anchors(labels, 5, seed=3)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]
    assert picked == choose_anchors(labels, 5, seed=3)
    assert picked != choose_anchors(labels, 5, seed=4)
    assert labels[choose_anchors(labels, 2, seed=0)].tolist() == [0, 2]  # evenly spaced
    seven = choose_anchors(labels, 7, seed=0)
    assert len(set(seven)) == 7 and sorted(labels[seven].tolist()) == [0, 0, 1, 1, 2, 3, 4]
    unlabelled = choose_anchors(np.full(10, -1), 3, seed=0)
    assert len(set(unlabelled)) == 3


# ---------------------------------------------------------------------------------------
# The stage


def check_figures(markdown: str, figures: dict[str, bytes]) -> None:
    linked = linked_pngs(markdown)
    assert linked and sorted(linked) == sorted(figures)  # every PNG linked, every link there
    for name in linked:
        data = figures[name]
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
        with Image.open(Path("reports/figures") / name) as image:
            image.verify()
        with Image.open(Path("reports/figures") / name) as image:
            assert image.width >= 500 and image.height >= 300, name
            if not name.startswith("neighbours_"):
                assert "Software" not in image.info, name  # no version tag in the bytes
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 5, name  # something is drawn


def test_report_without_optional_inputs_says_not_run(base):
    root, cfg = base
    markdown, figures = run_report(root, cfg)
    lines = markdown.splitlines()
    for row in (INVP_ROW, RANDOM_ROW, PIXELS_ROW, ID_OFF_ROW):
        assert row in lines
    assert "| all | not run (reports/transfer.json not found) |" in lines
    assert "Positive purity against epoch: not run (no pretrain snapshots" in markdown
    assert "kNN monitor against epoch: not run" in markdown
    assert "| pretrain | 42.2 | 900 | cpu |" in lines
    assert "| instance_discrimination | not run | – | – |" in lines
    assert "| embed@final | – | – | cpu |" in lines  # run, without a footprint
    assert "| transfer | not run | – | – |" in lines
    assert "| report | this run | – | – |" in lines  # the stage's own row
    assert not re.search(r"\d{4}-\d{2}-\d{2}", markdown)  # no dates
    with chdir(root):
        check_figures(markdown, figures)
        stats = json.loads(Path("artifacts/propagation/final/stats.json").read_text())
    hop1 = stats["per_hop"][0]
    c = hop1["cumulative"]
    want = (
        f"| 1 | {c['size']:.1f} | {100 * c['purity']:.1f} | {100 * c['hard_purity']:.1f} | "
        f"{100 * c['easy_purity']:.1f} | {hop1['new']['size']:.1f} | "
        f"{100 * hop1['new']['purity']:.1f} |"
    )
    assert want in lines
    assert {"training_curves.png", "purity_hop.png", "map_pca.png", "map_tsne.png"} <= set(figures)
    assert sum(name.startswith("neighbours_") for name in figures) == cfg.report.anchors
    assert "purity_epoch.png" not in figures and "knn_monitor.png" not in figures


def test_report_with_every_optional_input(full):
    root, cfg = full
    markdown, figures = run_report(root, cfg)
    lines = markdown.splitlines()
    assert "| Instance discrimination | 70.1 | 69.5 | 70.0 | 75.0 |" in lines
    assert "| semi-supervised, 1% labels | – | – | 65.4 | 20.0 |" in lines
    assert "| transfer to digits | 92.3 | 50.0 | 95.5 | – |" in lines
    assert re.findall(r"not run \(", markdown) == []  # every optional part ran
    assert "| transfer | – | – | – |" in lines  # run without its footprint
    assert {"purity_epoch.png", "knn_monitor.png"} <= set(figures)
    with chdir(root):
        check_figures(markdown, figures)


def test_reruns_are_byte_identical(full):
    root, cfg = full
    first = run_report(root, cfg)
    second = run_report(root, cfg)
    assert first[0] == second[0]
    assert first[1].keys() == second[1].keys()
    for name in first[1]:
        assert first[1][name] == second[1][name], name


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("reports/evaluate.json", r"reports/evaluate\.json not found; run the evaluate stage"),
        (
            "artifacts/embeddings/final/embeddings.npz",
            r"artifacts/embeddings/final/embeddings\.npz not found; run the embed@final stage",
        ),
        (
            "artifacts/propagation/final/stats.json",
            r"stats\.json not found; run the propagate@final stage",
        ),
        ("dvclive/pretrain/plots/metrics/lr.tsv", r"lr\.tsv not found; run the pretrain stage"),
    ],
)
def test_missing_required_input_is_a_clear_error_and_keeps_the_old_report(
    base, tmp_path, path, message
):
    root = tmp_path / "ws"
    shutil.copytree(base[0], root, ignore=shutil.ignore_patterns("report.md", "figures"))
    with chdir(root):
        Path("reports/report.md").write_text("previous report\n")
        Path(path).unlink()
        with pytest.raises(InvpropError, match=message):
            report.run(base[1])
        assert Path("reports/report.md").read_text() == "previous report\n"
        assert not Path("reports/figures").exists()
        assert not [p for p in Path("reports").iterdir() if p.name.startswith(".")]


def test_stage_entry_point_prints_a_missing_input_as_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from invprop import pipeline

    # pipeline.STAGES gains "report" from the lead; registering it here changes nothing then.
    monkeypatch.setitem(pipeline.STAGES, "report", "invprop.stages.report:run")
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert pipeline.main("report", []) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "reports/evaluate.json not found; run the evaluate stage" in err
    assert not Path("reports").exists()  # nothing created before the inputs are checked


def test_metrics_cli_shows_the_results_tables(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from invprop.cli import app

    monkeypatch.chdir(tmp_path)
    Path("reports").mkdir()
    Path("reports/evaluate.json").write_text(json.dumps(EVALUATE))
    result = CliRunner().invoke(app, ["metrics", "--table", "--json"])
    assert result.exit_code == 0, result.output
    tables = json.loads(result.output)
    assert tables[0]["rows"][0] == ["InvP", "81.2", "79.9", "80.5", "85.7"]


def _rows(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


@pytest.mark.slow
def test_plot_data_files_follow_the_stats_and_dvc_plots_renders_them(full, tmp_path):
    import subprocess
    import sys

    root = tmp_path / "ws"
    shutil.copytree(full[0], root)
    run_report(root, full[1])
    stats = json.loads((root / "artifacts/propagation/final/stats.json").read_text())
    hops = _rows(root / "reports/plots/purity_hop.tsv")
    assert [int(r["hop"]) for r in hops] == [row["hop"] for row in stats["per_hop"]]
    for got, row in zip(hops, stats["per_hop"], strict=True):
        assert float(got["hard"]) == pytest.approx(row["cumulative"]["hard_purity"], abs=1e-6)
        assert float(got["new"]) == pytest.approx(row["new"]["purity"], abs=1e-6)
    epochs = _rows(root / "reports/plots/purity_epoch.tsv")
    assert [int(r["epoch"]) for r in epochs] == sorted(row["epoch"] for row in stats["epochs"])

    # The top-level plots of the real dvc.yaml render from these files and the curves,
    # the InvP and instance-discrimination curves overlaid in one plot.
    baseline = root / "dvclive/instance_discrimination/plots/metrics"
    shutil.copytree(root / "dvclive/pretrain/plots/metrics", baseline)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")  # what dvc.yaml interpolates
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    shown = subprocess.run(
        [dvc, "plots", "show", "--json"], cwd=root, capture_output=True, text=True, check=True
    )
    data = json.loads(shown.stdout)
    assert "data" in data, data
    data = data["data"]
    for name in ("purity_per_hop", "purity_per_epoch", "training_loss"):
        assert data[name] and data[name][0]["content"]["data"]["values"], name
    overlay = data["knn_monitor_invp_vs_instance_discrimination"][0]["content"]["data"]["values"]
    assert {row["filename"].split("/")[0] for row in overlay} == {
        "pretrain",
        "instance_discrimination",
    }
