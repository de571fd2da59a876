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

from invprop.config import config_from_dict
from invprop.errors import InvpropError
from invprop.stages import report

PARAMS = {
    "seed": 0,
    "data": {"name": "digits", "train_limit": 120, "test_limit": 60},
    "transfer": {"targets": []},
    "pretrain": {"epochs": 3, "snapshot_epochs": [1, 2]},
    "graph": {"k": 6},
    "propagate": {"k": 4, "hops": 2, "n_pos": 6},
    "report": {"anchors": 2, "map_points": 40},
}

EVALUATE = {
    "invp/epoch": 3,
    "invp/knn_clean/embeddings/k200/top1": 0.81234,
    "invp/knn_clean/embeddings/k20/top1": 0.5,
    "invp/knn_clean/features/k200/top1": 0.7988,
    "invp/knn_clean/features/k20/top1": 0.5,
    "invp/knn_bank/k200/top1": 0.80451,
    "invp/knn_bank/k20/top1": 0.5,
    "invp/linear/top1": 0.8567,
    "random_init/knn_clean/embeddings/k200/top1": 0.3012,
    "random_init/knn_clean/features/k200/top1": 0.4049,
    "random_init/linear/top1": 0.45,
    "pixels/knn/k200/top1": 0.7777,
    "pixels/linear/top1": 0.8,
    "instance_discrimination/status": "not run (evaluate.baselines.instance_discrimination is off)",
    "evaluate/seconds": 12.345,
    "evaluate/device": "cpu",
    "evaluate/num_classes": 10,
    "evaluate/train_images": 120,
    "evaluate/test_images": 60,
}
INVP_ROW = "| InvP | 81.2 | 79.9 | 80.5 | 85.7 |"
RANDOM_ROW = "| Random init | 30.1 | 40.5 | – | 45.0 |"
PIXELS_ROW = "| Raw pixels | – | 77.8 | – | 80.0 |"
ID_OFF_ROW = (
    "| Instance discrimination | not run (evaluate.baselines.instance_discrimination is off) "
    "| – | – | – |"
)
TRANSFER = {  # the keys invprop/stages/transfer.py writes
    "semi/10pct/finetune/top1": 0.9012,
    "semi/10pct/labels": 12,
    "semi/1pct/finetune/top1": 0.6543,
    "semi/dataset": "digits",
    "transfer/digits/linear/top1": 0.9234,
    "transfer/digits/linear/top5": 0.99,
    "transfer/digits/finetune/top1": 0.9555,
    "transfer/digits/train_images": 1437,
    "random_init/semi/1pct/finetune/top1": 0.2001,
    "random_init/transfer/digits/linear/top1": 0.5,
    "transfer/seconds": 7.0,
}


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
# Tables


def test_results_table_holds_the_known_numbers(tmp_path):
    (tmp_path / "evaluate.json").write_text(json.dumps(EVALUATE))
    table = report.results_table(tmp_path)
    assert table.columns == [
        "method",
        "kNN K=200 embeddings",
        "kNN K=200 features",
        "kNN K=200 bank",
        "linear probe",
    ]
    assert table.rows == [
        ["InvP", "81.2", "79.9", "80.5", "85.7"],
        ["Instance discrimination", EVALUATE["instance_discrimination/status"], "–", "–", "–"],
        ["Random init", "30.1", "40.5", "–", "45.0"],
        ["Raw pixels", "–", "77.8", "–", "80.0"],
    ]
    assert INVP_ROW in table.markdown().splitlines()
    # without K=200 the largest K evaluated heads the table
    smaller = {k.replace("k200", "k50"): v for k, v in EVALUATE.items()}
    (tmp_path / "evaluate.json").write_text(json.dumps(smaller))
    assert report.results_table(tmp_path).columns[1] == "kNN K=50 embeddings"
    assert report.results_table(tmp_path).rows[0] == ["InvP", "81.2", "79.9", "80.5", "85.7"]


def test_percent_formatting():
    assert [report.percent(v) for v in (0.81234, 1, 0.0, 0.99951, None, "x")] == [
        "81.2",
        "100.0",
        "0.0",
        "100.0",
        "–",
        "–",
    ]


def test_transfer_table_pivots_settings_and_protocols(tmp_path):
    missing = report.transfer_table(tmp_path)
    assert missing.rows == [["all", f"not run ({tmp_path / 'transfer.json'} not found)"]]
    data = dict(TRANSFER, **{"transfer/svhn/linear/status": "not run (no data)"})
    (tmp_path / "transfer.json").write_text(json.dumps(data))
    table = report.transfer_table(tmp_path)
    assert table.columns == [
        "setting",
        "linear (InvP)",
        "linear (random init)",
        "finetune (InvP)",
        "finetune (random init)",
    ]
    assert table.rows == [
        ["semi-supervised, 1% labels", "–", "–", "65.4", "20.0"],
        ["semi-supervised, 10% labels", "–", "–", "90.1", "–"],
        ["transfer to digits", "92.3", "50.0", "95.5", "–"],
        ["transfer to svhn", "not run (no data)", "–", "–", "–"],
    ]
    assert table.notes == []
    off = {k: v for k, v in data.items() if not k.startswith("random_init/")}
    off["random_init/status"] = "not run (evaluate.baselines.random_init is off)"
    (tmp_path / "transfer.json").write_text(json.dumps(off))
    table = report.transfer_table(tmp_path)
    assert table.columns == ["setting", "linear (InvP)", "finetune (InvP)"]
    assert table.notes == ["Random init baseline: not run (evaluate.baselines.random_init is off)."]
    assert "- Random init baseline: not run" in table.markdown()


def test_stage_times_table_reads_each_stage_footprint(tmp_path):
    def footprint(seconds: float, mb: float) -> dict:
        return {"footprint": {"wall_seconds": seconds, "cpu_seconds": 1.0, "peak_rss_mb": mb}}

    (tmp_path / "prepare_digits.json").write_text(json.dumps(footprint(0.456, 181.9)))
    (tmp_path / "pretrain.json").write_text(json.dumps(footprint(42.25, 2048) | {"device": "cuda"}))
    (tmp_path / "evaluate.json").write_text(json.dumps(EVALUATE))  # no footprint recorded
    table = report.stage_times_table(tmp_path, "digits")
    rows = {row[1]: row for row in table.rows}
    assert rows["prepare_digits.json"] == ["prepare", "prepare_digits.json", "0.5", "182", "–"]
    assert rows["pretrain.json"] == ["pretrain", "pretrain.json", "42.2", "2,048", "cuda"]
    assert rows["evaluate.json"] == ["evaluate", "evaluate.json", "–", "–", "cpu"]
    assert rows["transfer.json"] == ["transfer", "transfer.json", "not run", "–", "–"]
    assert [r[0] for r in table.rows][:2] == ["prepare", "pretrain"]


def test_missing_evaluate_report_is_a_clear_error(tmp_path):
    with pytest.raises(InvpropError, match=r"evaluate\.json not found; run the evaluate stage"):
        report.results_table(tmp_path)


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
    picked = report.choose_anchors(labels, 5, seed=3)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]
    assert picked == report.choose_anchors(labels, 5, seed=3)
    assert picked != report.choose_anchors(labels, 5, seed=4)
    assert labels[report.choose_anchors(labels, 2, seed=0)].tolist() == [0, 2]  # evenly spaced
    seven = report.choose_anchors(labels, 7, seed=0)
    assert len(set(seven)) == 7 and sorted(labels[seven].tolist()) == [0, 0, 1, 1, 2, 3, 4]
    unlabelled = report.choose_anchors(np.full(10, -1), 3, seed=0)
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
    assert "| pretrain | pretrain.json | 42.2 | 900 | cpu |" in lines
    assert "| transfer | transfer.json | not run | – | – |" in lines
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
    assert "| transfer | transfer.json | – | – | – |" in lines  # run without its footprint
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
