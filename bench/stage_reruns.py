"""How many stages rerun after an edit to each invprop module, from dvc.yaml's deps.

    python bench/stage_reruns.py                     # this checkout
    python bench/stage_reruns.py --before main~3     # a git revision against this checkout

A stage reruns when a path it lists in dvc.yaml covers the edited file (the file itself,
or a folder holding it). Of those, the stages that do not run the file (the import walk
of tests/test_stage_deps.py, taken from the analysed tree itself) rerun needlessly.
Stages are dvc.yaml's definitions (a foreach stage counts once). Prints a Markdown
table: per module, stages rerun / of them needlessly, for each tree; `--json` prints the
figures of one tree instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage_code_deps(root: Path) -> dict[str, set[str]]:
    """dvc.yaml's stages (definitions) -> the code paths each lists."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {
        name: {d for d in (stage.get("do", stage)).get("deps", []) if d.startswith("invprop")}
        for name, stage in stages.items()
    }


def figures(root: Path) -> dict[str, dict[str, Any]]:
    """Per invprop module of the tree at `root`: the stages an edit to it reruns, and
    which of them run it."""
    sys.path.insert(0, str(root / "tests"))
    spec = importlib.util.spec_from_file_location("walk", root / "tests" / "test_stage_deps.py")
    walk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walk)  # its ROOT is `root`: the walk reads that tree's code
    runs = {}
    for name, deps in stage_code_deps(root).items():
        function = "prepare" if name == "prepare_target" else name
        runs[name] = (walk.code_of(f"invprop.stages.{function}"), deps)
    out = {}
    for path in sorted(p.relative_to(root).as_posix() for p in (root / "invprop").rglob("*.py")):
        rerun = [
            name
            for name, (_, deps) in runs.items()
            if any(path == d or path.startswith(d + "/") for d in deps)
        ]
        needless = [name for name in rerun if path not in runs[name][0]]
        out[path] = {"rerun": rerun, "needless": needless}
    return out


def tree_at(revision: str, into: Path) -> Path:
    """The files of git `revision` extracted into `into`."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def figures_in_subprocess(root: Path) -> dict[str, dict[str, Any]]:
    """`figures(root)` in a fresh interpreter, so two trees' test modules never mix."""
    out = subprocess.run(
        [sys.executable, __file__, "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{len(entry['rerun'])} / {len(entry['needless'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree to analyse")
    parser.add_argument("--before", help="a git revision to compare the tree with")
    parser.add_argument("--json", action="store_true", help="print one tree's figures")
    options = parser.parse_args()
    if options.json:
        print(json.dumps(figures(options.root.resolve())))
        return
    after = figures_in_subprocess(options.root.resolve())
    columns = {"this tree": after}
    if options.before:
        with tempfile.TemporaryDirectory() as scratch:
            before = figures_in_subprocess(tree_at(options.before, Path(scratch)))
        columns = {options.before: before, "this tree": after}
    modules = sorted(set().union(*columns.values()))
    print("| module | " + " | ".join(f"{name}: rerun / needless" for name in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for module in modules:
        print(f"| `{module}` | " + " | ".join(cell(c.get(module)) for c in columns.values()) + " |")
    for name, column in columns.items():
        total = sum(len(e["rerun"]) for e in column.values())
        needless = sum(len(e["needless"]) for e in column.values())
        print(f"\n{name}: {total} stage reruns over all module edits, {needless} needless")


if __name__ == "__main__":
    main()
