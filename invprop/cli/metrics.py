"""`invprop metrics`: every figure in `reports/*.json`, now or at git revisions, side by side.

    invprop metrics                                  # all reports of the workspace
    invprop metrics reports/evaluate.json --json     # one file, machine-readable
    invprop metrics --rev HEAD~1                     # HEAD~1 against the workspace
    invprop metrics --rev v1 --rev v2                # two revisions and their difference
    invprop metrics --table                          # the report's results tables

Nested JSON is flattened with "/" (the evaluate stage already writes flat keys); lists
stay lists. Tables show one file each, figures rounded for reading; --json keeps the
full values. A file at a revision is read with `git show REV:./path`; a revision or an
explicitly named file that does not exist is a one-line error.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import typer

from invprop.cli.common import JSON_OPTION, command, print_json, print_table, print_tables
from invprop.errors import InvpropError

WORKSPACE = "workspace"

FILES_ARGUMENT = typer.Argument(
    None, help="Metric JSON files (default: every reports/*.json).", show_default=False
)
REV_OPTION = typer.Option(
    [],
    "--rev",
    metavar="REV",
    help="A git revision to read the files at; once: REV vs the workspace, twice: A vs B.",
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a/b": 1, "c": [1, 2]}."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}/{key}" if prefix else str(key))
        return out
    return {prefix: data}


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise InvpropError("git is not installed; --rev needs git") from exc


def check_revision(rev: str) -> None:
    """Fail with a one-line message unless `rev` names a commit of the current repository."""
    result = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if result.returncode != 0:
        inside = _git("rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0:
            raise InvpropError(f"--rev {rev}: {Path.cwd()} is not inside a git repository")
        raise InvpropError(
            f"--rev {rev}: no such git revision (try a commit, branch or tag; see `git log`)"
        )


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvpropError(f"{where} is not valid JSON ({exc})") from exc
    return flatten(data) if isinstance(data, dict) else {"value": data}


def _default_files(rev: str | None) -> list[Path]:
    from invprop.workspace import REPORTS_DIR as REPORTS  # numpy: not for `invprop --help`

    if rev is None:
        return sorted(REPORTS.glob("*.json"))
    listing = _git("ls-tree", "--name-only", rev, f"{REPORTS}/")
    return sorted(Path(line) for line in listing.stdout.splitlines() if line.endswith(".json"))


def read_metrics(files: list[Path], rev: str | None, strict: bool) -> dict[str, dict[str, Any]]:
    """{path: {metric: value}} of `files` in the workspace (rev None) or at `rev`.

    strict: a missing file is an error (files named by the user); otherwise it is skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        if rev is None:
            if not path.is_file():
                if strict:
                    raise InvpropError(f"{path} not found in the workspace")
                continue
            out[str(path)] = _parse(path.read_text(), str(path))
            continue
        shown = _git("show", f"{rev}:./{path.as_posix()}")
        if shown.returncode != 0:
            if strict:
                raise InvpropError(f"{path} does not exist at revision {rev}")
            continue
        out[str(path)] = _parse(shown.stdout, f"{path} at {rev}")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """{path: {metric: {"a", "b", "diff"}}} over the union; diff = b - a for numbers."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(set(a) | set(b)):
        left, right = a.get(path, {}), b.get(path, {})
        rows = {}
        for metric in sorted(set(left) | set(right)):
            va, vb = left.get(metric), right.get(metric)
            diff = vb - va if _is_number(va) and _is_number(vb) else None
            rows[metric] = {"a": va, "b": vb, "diff": diff}
        out[path] = rows
    return out


TABLE_OPTION = typer.Option(
    False, "--table", help="The report's results tables (InvP vs baselines, transfer, times)."
)
PARAMS_OPTION = typer.Option(
    Path("params.yaml"),
    "--params",
    help="With --table: the params whose stage runs the stage-times table lists.",
)


def metrics(
    files: list[Path] | None = FILES_ARGUMENT,
    rev: list[str] = REV_OPTION,
    table: bool = TABLE_OPTION,
    params: Path = PARAMS_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show metrics from reports/*.json, or compare them between git revisions.

    Example: invprop metrics --table; invprop metrics --rev HEAD~1 reports/evaluate.json
    """
    from invprop.workspace import REPORTS_DIR as REPORTS  # numpy: not for `invprop --help`

    if table:
        from invprop.config import Config, load_config
        from invprop.tables import StageReports, results_tables

        cfg = load_config(params) if params.exists() else Config()
        tables = results_tables(StageReports(REPORTS), cfg)
        if as_json:
            print_json([t.to_dict() for t in tables])
            return
        print_tables(tables)
        return
    if len(rev) > 2:
        raise InvpropError(f"--rev given {len(rev)} times; give it once (vs workspace) or twice")
    for name in rev:
        check_revision(name)
    named = list(files or [])
    if not rev:
        chosen = named or _default_files(None)
        if not chosen:
            raise InvpropError(
                f"no {REPORTS}/*.json in {Path.cwd()}; run the pipeline (dvc repro) or name files"
            )
        found = read_metrics(chosen, None, strict=True)
        if as_json:
            print_json(found)
            return
        for path, values in found.items():
            print_table(path, ["metric", "value"], list(values.items()))
        return

    revisions: list[str | None] = [rev[0], rev[1] if len(rev) == 2 else None]
    labels = [name or WORKSPACE for name in revisions]
    if named:
        sides = [read_metrics(named, r, strict=False) for r in revisions]
        for path in named:
            if all(str(path) not in side for side in sides):
                raise InvpropError(f"{path} exists neither at {labels[0]} nor at {labels[1]}")
    else:
        chosen = sorted(set(_default_files(revisions[0])) | set(_default_files(revisions[1])))
        if not chosen:
            raise InvpropError(f"no {REPORTS}/*.json at {labels[0]} or {labels[1]}")
        sides = [read_metrics(chosen, r, strict=False) for r in revisions]
    table = compare(sides[0], sides[1])
    if as_json:
        print_json({"a": labels[0], "b": labels[1], "metrics": table})
        return
    for path, values in table.items():
        print_table(
            f"{path}: {labels[0]} vs {labels[1]}",
            ["metric", labels[0], labels[1], "diff"],
            [(metric, v["a"], v["b"], v["diff"]) for metric, v in values.items()],
        )


def register(app: typer.Typer) -> None:
    """Add `metrics` to the `invprop` app."""
    command(app, "metrics")(metrics)
