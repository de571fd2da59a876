"""Every stage lists, in dvc.yaml and the Snakefile, all the invprop code it runs.

The code a stage runs is found from the code itself: the modules its stage function's
module imports inside invprop, transitively (imports inside functions included, since a
stage runs them; `if TYPE_CHECKING:` blocks excluded). A listed folder covers what is
inside it. A missed module means an edit to it leaves a stale artifact cached as up to date.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from dvc_pipeline import dvc_stages

from invprop.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]

# Modules no stage lists, each for a reason that means an edit to it cannot change an
# artifact's content.
NOT_DEPENDENCIES = {
    # Its values reach the stages as params keys, which DVC and Snakemake track one by one;
    # a new key must not rerun everything. Its defaults cannot change a computation
    # unnoticed: params.yaml restates every one (tests/test_config.py).
    "invprop/config.py": "values tracked as params",
    # The allowed names of params values (invprop/names.py): a name picks which registered
    # code runs, and that code is listed; adding a name must rerun nothing. A propagator's
    # declared largest positive set only bounds params and is checked against its code. A
    # training baseline's name comes with its evaluate.baselines key and its stage's
    # outputs, which the stages that read them track.
    "invprop/names.py": "allowed params values only",
    # The exception type that carries user errors; no computation.
    "invprop/errors.py": "exception type only",
    # Loads params, dispatches to the stage function and records its wall time and memory
    # in the stage's report, which is a metric (not cached), never an artifact.
    "invprop/pipeline.py": "dispatch and footprint only",
    # Logging set-up and progress display: what a stage says while it works, never what
    # it computes (track() yields every item of the loop it wraps, unchanged).
    "invprop/logs.py": "messages and progress only",
    "invprop/__init__.py": "package marker",
}


def module_file(name: str) -> Path | None:
    """The source file of module `invprop.x.y`, or None when `name` is not a module."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` outside `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(path: Path) -> set[str]:
    """The invprop modules a file imports (a package's __init__ counts when a submodule of
    it is imported, since Python runs it)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {
                ".".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if parts[0] == "invprop" and module_file(".".join(parts[:i]))
            }
    return found


def code_of(module: str) -> set[str]:
    """Repo-relative source files of `module` and everything it imports inside invprop."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)))
    return {str(module_file(name).relative_to(ROOT)) for name in seen}


def stage_code(stage: str) -> set[str]:
    """The source files pipeline stage `stage` runs: its function's module, walked."""
    return code_of(STAGES[stage].partition(":")[0])


def missing_deps(stage: str, listed: frozenset[str]) -> set[str]:
    """The code stage `stage` runs that `listed` (its dependency paths) does not cover."""
    needed = stage_code(stage) - set(NOT_DEPENDENCIES)
    return {
        path for path in needed if not any(path == d or path.startswith(d + "/") for d in listed)
    }


def needless_deps(stage: str, listed: frozenset[str]) -> set[str]:
    """The invprop modules that `listed` covers (a listed folder: every module in it) and
    stage `stage` never runs: an edit to one would rerun the stage for nothing. Other
    files (explorer.html) are read, not run, and not judged here."""
    covered = set()
    for dep in listed:
        if dep.startswith("invprop"):
            path = ROOT / dep
            if path.is_dir():
                covered |= {str(f.relative_to(ROOT)) for f in path.rglob("*.py")}
            elif path.suffix == ".py":
                covered.add(dep)
    return covered - stage_code(stage)


def stage_function_name(dvc_stage: str) -> str:
    """dvc.yaml's stage name -> the pipeline stage it runs (embed@final -> embed)."""
    name = dvc_stage.split("@")[0]
    return "prepare" if name == "prepare_target" else name


def listed_deps(orchestrator: str) -> dict[str, frozenset[str]]:
    """Each stage's dependency paths as `orchestrator` (dvc or snakemake) lists them."""
    if orchestrator == "dvc":
        return {name: stage.deps for name, stage in dvc_stages(ROOT).items()}
    from test_pipeline_dag import snakemake_stages

    return {name: stage.deps for name, stage in snakemake_stages().items()}


@pytest.mark.parametrize("orchestrator", ["dvc", "snakemake"])
def test_every_stage_lists_the_code_it_runs(orchestrator: str) -> None:
    listed = listed_deps(orchestrator)
    missing = {
        name: sorted(missing_deps(stage_function_name(name), deps)) for name, deps in listed.items()
    }
    assert {name: paths for name, paths in missing.items() if paths} == {}
    assert {stage_function_name(name) for name in listed} == set(STAGES)


@pytest.mark.parametrize("orchestrator", ["dvc", "snakemake"])
def test_every_listed_file_is_run_by_its_stage(orchestrator: str) -> None:
    # Folders are listed whole only where the stage runs all of them: a module a stage does
    # not run, inside a folder it lists, reruns it for nothing after every edit.
    listed = listed_deps(orchestrator)
    needless = {
        name: sorted(needless_deps(stage_function_name(name), deps))
        for name, deps in listed.items()
    }
    assert {name: paths for name, paths in needless.items() if paths} == {}


def test_the_import_walk_finds_what_a_stage_imports(tmp_path: Path) -> None:
    # The walk itself: known edges of the real code, function-level imports included.
    assert "invprop/method/bank.py" in code_of("invprop.training")
    assert "invprop/io.py" in code_of("invprop.config")  # imported inside a function
    assert "invprop/method/__init__.py" in code_of("invprop.training")
    assert missing_deps("pretrain", frozenset({"invprop"})) == set()
    assert "invprop/method/loss.py" in missing_deps(
        "pretrain", frozenset({"invprop/stages/pretrain.py", "invprop/training.py"})
    )
    # A listed folder counts every file in it; the prepare stage trains nothing.
    assert "invprop/method/bank.py" in needless_deps("prepare", frozenset({"invprop/method"}))
    assert needless_deps("pretrain", frozenset({"invprop/method"})) == set()


def test_exempt_modules_exist_and_hide_nothing_they_import() -> None:
    for path in NOT_DEPENDENCIES:
        assert (ROOT / path).is_file(), path
    # The walk goes through exempt modules: what config.py imports (io.py) is still needed.
    assert "invprop/io.py" in missing_deps("pretrain", frozenset({"invprop/training.py"}))
