"""Seed studies (invprop.study): DVC's experiment listing read back, variants told apart by
their params, mean ± std over seeds and the paired Student-t interval against scipy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from invprop import study
from invprop.cli import app
from invprop.errors import InvpropError
from invprop.study import Run, paired_difference, runs_from_show, study_table, variant_labels

FEATURES = "knn_clean/features/k200/top1"
FIGURES = {"features": FEATURES, "linear": "linear/top1"}


def scipy_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """The paired t interval as scipy computes it: ttest_rel's 95% confidence interval."""
    interval = stats.ttest_rel(a, b).confidence_interval(0.95)
    return float(interval.low), float(interval.high)


def make_run(name: str, seed: int, epochs: int, invp: float, baseline: float | None) -> Run:
    metrics = {f"invp/{FEATURES}": invp, "invp/linear/top1": invp + 0.05}
    metrics |= {f"invp/val/{FEATURES}": invp - 0.01}
    if baseline is None:
        metrics["instance_discrimination/status"] = "not run"
    else:
        metrics[f"instance_discrimination/{FEATURES}"] = baseline
    params = {
        "seed": seed,
        "pretrain.epochs": epochs,
        "evaluate.baselines.instance_discrimination": baseline is not None,
        "evaluate.knn_k": [200, 20],
    }
    return Run(name, params, metrics)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_interval_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.8, 0.02, n), rng.normal(0.79, 0.02, n)
    diff = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    assert diff is not None and diff.n == n
    assert diff.mean == pytest.approx(float(np.mean(a - b)))
    assert (diff.low, diff.high) == pytest.approx(scipy_interval(list(a), list(b)))


def test_pairs_only_shared_seeds_and_needs_two_for_an_interval() -> None:
    diff = paired_difference({0: 0.9, 1: 0.8, 7: 0.1}, {1: 0.7, 2: 0.5, 7: 0.2})
    assert diff is not None and diff.n == 2
    assert diff.mean == pytest.approx(((0.8 - 0.7) + (0.1 - 0.2)) / 2)
    single = paired_difference({3: 0.9}, {3: 0.7})
    assert single is not None and single.mean == pytest.approx(0.2) and single.low is None
    assert paired_difference({0: 0.9}, {1: 0.7}) is None


def test_runs_from_show_reads_finished_experiments_and_names_the_rest() -> None:
    def exp(name: str, state: str | None, metrics: bool = True, error: bool = False) -> dict:
        data = {
            "params": {"params.yaml": {"data": {"seed": 1, "pretrain": {"epochs": 4}}}},
            "metrics": {"reports/evaluate.json": {"data": {"invp/linear/top1": 0.8}}}
            if metrics
            else {},
        }
        tip = {"rev": "abcdef0123", "name": name, "data": data, "error": None}
        if error:
            tip["error"] = {"msg": "failed", "type": "ReproductionError"}
        executor = None if state is None else {"state": state, "name": None, "local": None}
        return {"revs": [tip], "executor": executor, "name": name}

    shown = [
        {
            "rev": "workspace",
            "name": None,
            "data": {},
            "error": None,
            "experiments": None,
        },
        {
            "rev": "1234567",
            "name": "main",
            "data": {},
            "error": None,
            "experiments": [
                exp("done", None),
                exp("done-too", "success"),
                exp("waiting", "queued"),
                exp("going", "running"),
                exp("broken", "failed"),
                exp("errored", None, error=True),
                exp("partial", None, metrics=False),
            ],
        },
    ]
    runs, pending = runs_from_show(shown, "reports/evaluate.json")
    assert [run.name for run in runs] == ["done", "done-too"]
    assert runs[0].params == {"seed": 1, "pretrain.epochs": 4} and runs[0].seed == 1
    assert runs[0].metrics == {"invp/linear/top1": 0.8}
    assert pending == {
        "queued": ["waiting"],
        "running": ["going"],
        "failed": ["broken", "errored"],
        "no evaluate report": ["partial"],
    }


def test_variants_are_told_apart_by_params_other_than_seed_and_baseline_switches() -> None:
    runs = [
        make_run("a", 0, 4, 0.80, 0.79),
        make_run("b", 1, 4, 0.81, 0.80),
        make_run("c", 0, 20, 0.85, None),
    ]
    assert variant_labels(runs) == {
        "a": "pretrain.epochs=4",
        "b": "pretrain.epochs=4",
        "c": "pretrain.epochs=20",
    }
    assert set(variant_labels(runs[:2]).values()) == {""}


def test_study_table_means_stds_and_paired_differences() -> None:
    invp = {0: 0.80, 1: 0.83, 2: 0.81}
    base = {0: 0.79, 1: 0.80, 2: 0.805}
    longer = {0: 0.86, 2: 0.84}  # seed 1 not run: pairs with two seeds only
    runs = [make_run(f"e4-s{s}", s, 4, invp[s], base[s]) for s in invp]
    runs += [make_run(f"e20-s{s}", s, 20, longer[s], None) for s in longer]
    rows = study_table(runs, "instance_discrimination", FIGURES)
    by = {(row.figure, row.variant): row for row in rows}
    assert set(by) == {
        ("features", "invp [pretrain.epochs=4]"),
        ("features", "instance_discrimination [pretrain.epochs=4]"),
        ("features", "invp [pretrain.epochs=20]"),
        ("linear", "invp [pretrain.epochs=4]"),
        ("linear", "invp [pretrain.epochs=20]"),
    }
    row = by["features", "invp [pretrain.epochs=4]"]
    values = [invp[s] for s in (0, 1, 2)]
    assert row.seeds == [0, 1, 2] and row.mean == pytest.approx(np.mean(values))
    assert row.std == pytest.approx(np.std(values, ddof=1))
    assert row.difference is not None and row.difference.n == 3
    want = scipy_interval(values, [base[s] for s in (0, 1, 2)])
    assert (row.difference.low, row.difference.high) == pytest.approx(want)
    baseline_row = by["features", "instance_discrimination [pretrain.epochs=4]"]
    assert baseline_row.is_baseline and baseline_row.difference is None
    longer_row = by["features", "invp [pretrain.epochs=20]"]
    assert longer_row.difference is not None and longer_row.difference.n == 2
    assert longer_row.difference.mean == pytest.approx(np.mean([0.86 - 0.79, 0.84 - 0.805]))
    # No baseline figure for the linear probe here: nothing to pair with.
    assert by["linear", "invp [pretrain.epochs=4]"].difference is None
    # A full label names the baseline; the validation figures sit under val/.
    val = study_table(runs, "invp [pretrain.epochs=4]", {"features": FEATURES}, split="val")
    short, long = val
    assert (short.variant, long.variant) == (
        "invp [pretrain.epochs=4]",
        "invp [pretrain.epochs=20]",
    )
    assert short.is_baseline and short.mean == pytest.approx(np.mean(values) - 0.01)
    assert long.difference is not None
    assert long.difference.mean == pytest.approx(np.mean([0.86 - 0.80, 0.84 - 0.81]))


def test_study_table_errors_name_the_fix() -> None:
    runs = [make_run("a", 0, 4, 0.8, 0.79), make_run("b", 0, 20, 0.85, 0.8)]
    with pytest.raises(InvpropError, match="names 2 variants; give one in full"):
        study_table(runs, "instance_discrimination", FIGURES)
    with pytest.raises(InvpropError, match="'nope' is not a variant of this study"):
        study_table(runs, "nope", FIGURES)
    twins = [make_run("a", 0, 4, 0.8, 0.79), make_run("a2", 0, 4, 0.81, 0.79)]
    with pytest.raises(InvpropError, match="experiments a and a2 are both seed 0"):
        study_table(twins, "instance_discrimination", FIGURES)
    with pytest.raises(InvpropError, match="no finished experiments"):
        study_table([], "instance_discrimination", FIGURES)
    with pytest.raises(InvpropError, match="split 'train' is not one of"):
        study_table(runs[:1], "instance_discrimination", FIGURES, split="train")


def show_output(runs: list[Run], queued: list[str]) -> list[dict]:
    """`dvc exp show --json` as DVC shapes it, for `runs` finished and `queued` waiting."""

    def nested(flat: dict) -> dict:
        out: dict = {}
        for key, value in flat.items():
            *parents, last = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return out

    def exp(name: str, params: dict, metrics: dict | None, state: str | None) -> dict:
        data = {"params": {"params.yaml": {"data": nested(params)}}, "metrics": {}}
        if metrics is not None:
            data["metrics"]["reports/evaluate.json"] = {"data": metrics}
        executor = None if state is None else {"state": state}
        tip = {"rev": "0" * 40, "name": name, "data": data, "error": None}
        return {"revs": [tip], "executor": executor, "name": name}

    experiments = [exp(run.name, run.params, run.metrics, None) for run in runs]
    experiments += [exp(name, {"seed": 9}, None, "queued") for name in queued]
    return [{"rev": "0" * 7, "name": "main", "data": {}, "experiments": experiments}]


def test_cli_prints_the_table_and_what_is_still_queued(monkeypatch) -> None:
    runs = [make_run(f"s{s}", s, 4, 0.80 + s / 100, 0.79) for s in range(3)]
    runs.append(make_run("long-s0", 0, 20, 0.9, 0.8))
    monkeypatch.setattr(
        study, "read_experiments", lambda repo, all_commits: show_output(runs, ["long-s1"])
    )
    runner = CliRunner()
    table = runner.invoke(app, ["study", "--where", "pretrain.epochs=4", "--figure", FEATURES])
    assert table.exit_code == 0, table.output
    assert "invp" in table.output and "+2.00" in table.output and "baseline" in table.output
    assert "1 experiment(s) queued: long-s1" in table.output
    md = runner.invoke(app, ["study", "--markdown", "--where", "pretrain.epochs=4"])
    lines = md.output.splitlines()
    assert "| kNN K=200, backbone features | invp | 3 | 81.00 ± 1.00 | +2.00 (" in md.output
    assert lines[2] == "| figure | variant | seeds | mean ± std (%) | difference (95% interval) |"
    assert (
        "| kNN K=200, backbone features | instance_discrimination | 3 | 79.00 ± 0.00 | baseline |"
        in lines
    )
    as_json = runner.invoke(app, ["study", "--json", "--where", "pretrain.epochs=4"])
    data = json.loads(as_json.output)
    assert data["experiments"] == ["s0", "s1", "s2"] and data["not_finished"] == {
        "queued": ["long-s1"]
    }
    rows = {(r["figure"], r["variant"]): r for r in data["rows"]}
    assert rows["kNN K=200, backbone features", "invp"]["mean"] == pytest.approx(0.81)
    bad = runner.invoke(app, ["study", "--where", "pretrain.epochs=7"])
    assert bad.exit_code == 2
    assert "error: --where pretrain.epochs=7: no finished experiment has" in bad.output


def test_cli_names_a_repository_that_is_not_a_folder(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(app, ["study", "--repo", str(missing)])
    assert result.exit_code == 2
    assert f"error: {missing} is not a folder; give the DVC repository with --repo" in (
        result.output
    )
