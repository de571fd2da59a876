"""`invprop study`: one table from the experiments of a seed study (see invprop.study).

    dvc exp run --queue -S seed=0 -S evaluate.baselines.instance_discrimination=true   # x seeds
    dvc queue start                                                                   # runs them
    invprop study --baseline instance_discrimination                                 # the table

Figures are percentages: mean ± std over seeds, and the paired difference against the
baseline with its Student-t 95% interval (n-1 degrees of freedom).
"""

from __future__ import annotations

from pathlib import Path

import typer

from invprop.cli.common import JSON_OPTION, command, print_json, print_table
from invprop.errors import InvpropError


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def study(
    baseline: str = typer.Option(
        "instance_discrimination",
        "--baseline",
        help="The variant every other is paired with by seed: a representation "
        "(invp, instance_discrimination, ...) or a full variant label.",
    ),
    figure: list[str] = typer.Option(
        [],
        "--figure",
        metavar="KEY",
        help="A figure of evaluate.json under a representation's prefix, e.g. "
        "knn_clean/features/k20/top1 (repeatable; default: kNN K=200 on features, "
        "embeddings and bank, and the linear probe).",
    ),
    split: str = typer.Option(
        "test", "--split", help="test, or val: the held-out validation part of train."
    ),
    where: list[str] = typer.Option(
        [],
        "--where",
        metavar="KEY=VALUE",
        help="Only experiments whose param KEY equals VALUE (YAML), e.g. pretrain.epochs=20.",
    ),
    repo: Path = typer.Option(Path("."), "--repo", help="The DVC repository."),
    all_commits: bool = typer.Option(
        False, "--all-commits", help="Experiments of every commit, not only of HEAD."
    ),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the table as Markdown (for docs/results.md)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Aggregate a seed study's DVC experiments: mean ± std per variant, and the paired
    difference (by seed) against a baseline with a Student-t 95% interval."""
    from invprop.config import parse_override
    from invprop.study import (
        DEFAULT_FIGURES,
        read_experiments,
        runs_from_show,
        study_table,
    )
    from invprop.workspace import stage_report  # numpy: not for `invprop --help`

    shown = read_experiments(repo, all_commits)
    runs, pending = runs_from_show(shown, stage_report("evaluate").as_posix())
    for text in where:
        path, value = parse_override(text)
        key = ".".join(path)
        runs = [run for run in runs if run.params.get(key) == value]
        if not runs:
            raise InvpropError(f"--where {text}: no finished experiment has {key} = {value!r}")
    figures = {key: key for key in figure} if figure else DEFAULT_FIGURES
    rows = study_table(runs, baseline, figures, split)
    if as_json:
        print_json(
            {
                "split": split,
                "baseline": baseline,
                "experiments": sorted(run.name for run in runs),
                "not_finished": pending,
                "rows": [row.to_dict() for row in rows],
            }
        )
        return
    table_rows = []
    for row in rows:
        std = "" if row.std is None else f" ± {100 * row.std:.2f}"
        diff = row.difference
        if diff is None:
            difference = "baseline" if row.is_baseline else "no shared seed"
        else:
            interval = "" if diff.low is None else f" ({_percent(diff.low)}, {_percent(diff.high)})"
            difference = f"{_percent(diff.mean)}{interval}"
        table_rows.append(
            (row.figure, row.variant, len(row.seeds), f"{100 * row.mean:.2f}{std}", difference)
        )
    title = f"study ({split}): {len(runs)} experiments, paired by seed against {baseline}"
    columns = ["figure", "variant", "seeds", "mean ± std (%)", "difference (95% interval)"]
    if markdown:
        from invprop.tables import Table

        cells = [[str(cell) for cell in row] for row in table_rows]
        typer.echo(Table(title, columns, cells).markdown())
    else:
        print_table(title, columns, table_rows)
    for state, names in sorted(pending.items()):
        typer.echo(f"  {len(names)} experiment(s) {state}: {', '.join(sorted(names))}")


def register(app: typer.Typer) -> None:
    """Add `study` to the `invprop` app."""
    command(app, "study")(study)
