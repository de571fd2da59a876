"""The result tables (invprop.tables): the known numbers, every stage run in the stage-time
table, figures rounded for reading, and terminal layouts that never split a word."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from dvc_pipeline import dvc_stages, tiny_params
from report_data import EVALUATE, TRANSFER
from rich.console import Console

from invprop.config import config_from_dict
from invprop.errors import InvpropError
from invprop.tables import (
    StageReports,
    Table,
    fit_widths,
    percent,
    pipeline_runs,
    readable,
    results_table,
    results_tables,
    stage_times_table,
    transfer_table,
    wrap,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def write(folder: Path, name: str, data: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def render(table: Table, width: int = 80) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width).print(table.renderable(width))
    return buffer.getvalue()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def assert_whole_words(table: Table, out: str, width: int) -> None:
    """Every word of the table is in the output as often as in the table (a split word
    leaves pieces instead), and no line is wider than `width`."""
    texts = [table.title, *table.columns, *(c for row in table.rows for c in row), *table.notes]
    wanted: dict[str, int] = {}
    for word in words(" ".join(texts)):
        wanted[word] = wanted.get(word, 0) + 1
    found: dict[str, int] = {}
    for word in words(out):
        found[word] = found.get(word, 0) + 1
    assert {w: n for w, n in wanted.items() if found.get(w, 0) < n} == {}, out
    assert max(len(line) for line in out.splitlines()) <= width, out


# ---------------------------------------------------------------------------------------
# The report's tables


def test_results_table_holds_the_known_numbers(tmp_path):
    write(tmp_path, "evaluate", EVALUATE)
    table = results_table(StageReports(tmp_path))
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
    assert "| InvP | 81.2 | 79.9 | 80.5 | 85.7 |" in table.markdown().splitlines()
    # without K=200 the largest K evaluated heads the table
    smaller = {k.replace("k200", "k50"): v for k, v in EVALUATE.items()}
    write(tmp_path, "evaluate", smaller)
    assert results_table(StageReports(tmp_path)).columns[1] == "kNN K=50 embeddings"
    assert results_table(StageReports(tmp_path)).rows[0] == ["InvP", "81.2", "79.9", "80.5", "85.7"]


def test_validation_table_reads_the_val_figures(tmp_path):
    write(tmp_path, "evaluate", EVALUATE)
    cfg = config_from_dict({})
    assert [t.title for t in results_tables(StageReports(tmp_path), cfg)][:2] == [
        "Representation quality (test, top-1, %)",
        "Semi-supervised fine-tuning and transfer (test top-1, %)",
    ]
    val = {
        "invp/val/knn_clean/embeddings/k200/top1": 0.9,
        "invp/val/knn_clean/features/k200/top1": 0.8,
        "invp/val/knn_bank/k200/top1": 0.7,
        "invp/val/linear/top1": 0.6,
        "pixels/val/knn/k200/top1": 0.5,
        "pixels/val/linear/top1": 0.4,
    }
    write(tmp_path, "evaluate", EVALUATE | val)
    tables = results_tables(StageReports(tmp_path), cfg)
    assert tables[0].rows == results_table(StageReports(tmp_path)).rows  # test figures unchanged
    table = tables[1]
    assert table.title == "Representation quality (validation part of train, top-1, %)"
    assert table.rows == [
        ["InvP", "90.0", "80.0", "70.0", "60.0"],
        ["Instance discrimination", EVALUATE["instance_discrimination/status"], "–", "–", "–"],
        ["Random init", "not run (no random_init/ figures in evaluate.json)", "–", "–", "–"],
        ["Raw pixels", "–", "50.0", "–", "40.0"],
    ]
    assert any("Validation: a class-stratified" in note for note in table.notes)


def test_transfer_table_pivots_settings_and_protocols(tmp_path):
    missing = transfer_table(StageReports(tmp_path))
    assert missing.rows == [["all", f"not run ({tmp_path / 'transfer.json'} not found)"]]
    data = dict(TRANSFER, **{"transfer/svhn/linear/status": "not run (no data)"})
    write(tmp_path, "transfer", data)
    table = transfer_table(StageReports(tmp_path))
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
    write(tmp_path, "transfer", off)
    table = transfer_table(StageReports(tmp_path))
    assert table.columns == ["setting", "linear (InvP)", "finetune (InvP)"]
    assert table.notes == ["Random init baseline: not run (evaluate.baselines.random_init is off)."]
    assert "- Random init baseline: not run" in table.markdown()


def test_missing_or_bad_reports_are_clear_errors(tmp_path):
    with pytest.raises(InvpropError, match=r"evaluate\.json not found; run the evaluate stage"):
        results_table(StageReports(tmp_path))
    (tmp_path / "evaluate.json").write_text("[1, 2]")
    with pytest.raises(InvpropError, match=r"evaluate\.json must hold a JSON object"):
        results_table(StageReports(tmp_path))
    (tmp_path / "evaluate.json").write_text("{oops")
    with pytest.raises(InvpropError, match=r"evaluate\.json is not valid JSON"):
        results_table(StageReports(tmp_path))


# ---------------------------------------------------------------------------------------
# Stage times


@pytest.mark.parametrize("params", ["repo", "tiny"])
def test_pipeline_runs_are_the_stages_of_dvc_yaml(params, tmp_path):
    """Every stage run dvc.yaml resolves, named as DVC names it, in pipeline order, with
    the report invprop.pipeline records its footprint in."""
    from dvc.repo import Repo

    from invprop.pipeline import stage_report

    values = tiny_params(ROOT) if params == "tiny" else yaml.safe_load(PARAMS.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    Repo.init(str(tmp_path), no_scm=True).close()
    cfg = config_from_dict(values)
    runs = pipeline_runs(cfg)
    assert sorted(stage for stage, _ in runs) == sorted(dvc_stages(tmp_path))
    assert [stage.split("@")[0] for stage, _ in runs][:2] == ["prepare", "prepare_target"]
    assert runs[-3:] == [("evaluate", "evaluate"), ("transfer", "transfer"), ("report", "report")]
    for stage, name in runs:
        base, _, item = stage.partition("@")
        args = [item] if item else ([cfg.data.name] if base == "prepare" else [])
        base = "prepare" if base == "prepare_target" else base
        assert stage_report(base, args) == Path("reports") / f"{name}.json"


def test_stage_times_table_lists_every_stage_run(tmp_path):
    def footprint(seconds: float, mb: float) -> dict:
        return {"footprint": {"wall_seconds": seconds, "cpu_seconds": 1.0, "peak_rss_mb": mb}}

    cfg = config_from_dict(
        {
            "data": {"name": "synthetic"},
            "transfer": {"targets": ["digits"]},
            "pretrain": {"snapshot_epochs": [1]},
            "embed": {"tags": ["final", "epoch_0001"]},
        }
    )
    write(tmp_path, "prepare_synthetic", footprint(0.456, 181.9))
    write(tmp_path, "prepare_digits", footprint(4.4, 159.2))
    write(tmp_path, "pretrain", footprint(42.25, 2048) | {"device": "cuda"})
    write(tmp_path, "instance_discrimination", footprint(30.0, 1999.5) | {"device": "cuda"})
    write(tmp_path, "embed_epoch_0001", footprint(0.11, 718.3) | {"device": "cpu"})
    write(tmp_path, "evaluate", EVALUATE)  # no footprint recorded
    write(tmp_path, "report", footprint(6.6, 707.5))
    table = stage_times_table(StageReports(tmp_path), pipeline_runs(cfg))
    assert table.columns == ["stage", "seconds", "peak memory (MB)", "device"]
    assert table.rows == [
        ["prepare", "0.5", "182", "–"],
        ["prepare_target@digits", "4.4", "159", "–"],
        ["pretrain", "42.2", "2,048", "cuda"],
        ["instance_discrimination", "30.0", "2,000", "cuda"],
        ["embed@final", "not run", "–", "–"],
        ["embed@epoch_0001", "0.1", "718", "cpu"],
        ["graph@final", "not run", "–", "–"],
        ["graph@epoch_0001", "not run", "–", "–"],
        ["propagate@final", "not run", "–", "–"],
        ["propagate@epoch_0001", "not run", "–", "–"],
        ["evaluate", "–", "–", "cpu"],
        ["transfer", "not run", "–", "–"],
        ["report", "6.6", "708", "–"],  # its previous run (`invprop metrics --table`)
    ]
    running = stage_times_table(StageReports(tmp_path), pipeline_runs(cfg), running="report")
    assert running.rows[-1] == ["report", "this run", "–", "–"]  # the report stage's own row
    assert running.rows[:-1] == table.rows[:-1]


# ---------------------------------------------------------------------------------------
# Numbers for reading


def test_percent_formatting():
    assert [percent(v) for v in (0.81234, 1, 0.0, 0.99951, None, "x")] == [
        "81.2",
        "100.0",
        "0.0",
        "100.0",
        "–",
        "–",
    ]


def test_readable_rounds_figures_and_keeps_text():
    assert readable(0.09998499974999583) == "0.09998"  # `propagate stats`' chance purity
    assert [readable(v) for v in (1.0, 0.5, 6.799380779266357, 1079.1047, 12345.6)] == [
        "1",
        "0.5",
        "6.799",
        "1,079",
        "12,346",
    ]
    assert [readable(v) for v in (None, 7, True, "lbfgs", 1e-05)] == [
        "–",
        "7",
        "True",
        "lbfgs",
        "1e-05",
    ]
    assert readable([0.1923828125, 0.21484375]) == "[0.1924, 0.2148]"
    assert readable({"all": 0.14300959, "hard": None}) == "{all: 0.143, hard: –}"


# ---------------------------------------------------------------------------------------
# Terminal layout


def test_wrap_breaks_at_spaces_and_inside_keys_never_inside_a_word():
    assert wrap("not run (evaluate.baselines.random_init is off)", 19) == [
        "not run (evaluate.",
        "baselines.",
        "random_init is off)",
    ]
    assert wrap("instance_discrimination/knn_clean/embeddings/k200/top1", 40) == [
        "instance_discrimination/knn_clean/",
        "embeddings/k200/top1",
    ]
    assert wrap("0.8123 and 3.5", 4) == ["0.8123", "and", "3.5"]  # numbers stay whole
    assert wrap("a\nb c", 10) == ["a", "b c"]
    assert wrap("", 5) == [""]


def test_fit_widths_keeps_every_word_whole_or_gives_up():
    columns = ["method", "kNN K=200 embeddings", "linear probe"]
    rows = [["Instance discrimination", "not run (evaluate.baselines.random_init is off)", "–"]]
    natural = fit_widths(columns, rows, 200)
    assert natural == [23, 47, 12]  # room enough: every cell on one line
    widths = fit_widths(columns, rows, 50)
    assert sum(widths) + 3 * 3 + 1 <= 50
    assert widths[0] >= len("discrimination") and widths[1] >= len("random_init")
    assert widths[2] >= len("linear") and widths[2] >= len("probe")
    assert fit_widths(columns, rows, 30) is None  # 14 + 11 + 6 cells of words and borders


def test_a_table_renders_at_80_columns_without_splitting_a_word(tmp_path):
    write(tmp_path, "evaluate", EVALUATE)
    write(tmp_path, "transfer", TRANSFER)
    cfg = config_from_dict({"transfer": {"targets": ["digits", "cifar10"]}})
    tables = results_tables(StageReports(tmp_path), cfg)
    for table in tables:
        out = render(table)
        assert_whole_words(table, out, 80)
        assert "┃" in out  # a boxed table: its words fit side by side
    # The example: the row label breaks between its words, the status after a dot.
    lines = render(tables[0]).splitlines()
    assert any(
        re.match(r"│ Instance +│ not run \(evaluate\.baselines\. +│", line) for line in lines
    )
    assert any(
        re.match(r"│ discrimination │ instance_discrimination is off\) +│", line) for line in lines
    )


def test_a_table_too_wide_for_its_words_prints_one_block_per_row():
    table = Table(
        "results",
        ["method", "kNN", "linear"],
        [["Instance discrimination", "not run (evaluate.baselines.random_init is off)", "0.5"]],
        ["A note long enough to wrap over more than one line of a narrow terminal."],
    )
    out = render(table, 30)
    assert "┃" not in out
    assert_whole_words(table, out, 30)
    assert out.splitlines()[1:4] == [
        "  method  Instance",
        "          discrimination",
        "  kNN     not run (evaluate.",
    ]


def test_cells_are_text_not_rich_markup():
    table = Table("params", ["key", "value"], [["embed.tags", readable(["final", "epoch_0010"])]])
    assert "[final, epoch_0010]" in render(table)  # rich would take [final, ...] for a tag
