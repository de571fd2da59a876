"""The import picture: primitives below the workspace module, stages side by side above it.

Uses the import walk of tests/test_stage_deps.py (function-level imports included,
`if TYPE_CHECKING:` blocks excluded).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from dvc_pipeline import dvc_stages
from test_stage_deps import code_of, imported_modules, module_file

from invprop.pipeline import STAGE_NAMES, STAGES

ROOT = Path(__file__).resolve().parents[1]


def invprop_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "invprop").rglob("*.py")
    )


def test_no_name_in_a_package_hides_one_of_its_modules() -> None:
    """`import invprop.x.y as m` gives the module y, never an object of package x that is
    also named y (the function invprop.method.propagate hid its module until that was
    renamed invprop.method.propagation)."""
    hidden = []
    for module in invprop_modules():
        package, _, name = module.rpartition(".")
        imported = importlib.import_module(module)  # which binds it in its package
        if package and getattr(importlib.import_module(package), name) is not imported:
            hidden.append(module)
    assert hidden == []
    assert "invprop.method.propagation" in invprop_modules()


def test_each_stage_lives_in_a_module_named_as_its_dvc_stage() -> None:
    names = {name.split("@")[0] for name in dvc_stages(ROOT)} - {"prepare_target"}
    assert set(STAGE_NAMES) == names
    for name in STAGE_NAMES:
        assert STAGES[name] == f"invprop.stages.{name}:run"
        assert module_file(f"invprop.stages.{name}") is not None, name


def test_no_stage_imports_another_stage() -> None:
    for name in STAGE_NAMES:
        module = f"invprop.stages.{name}"
        others = {
            m for m in imported_modules(module_file(module)) if m.startswith("invprop.stages.")
        }
        assert others == set(), f"{module} imports {sorted(others)}"


def test_primitives_import_neither_the_workspace_nor_a_stage() -> None:
    # Above the primitives: the workspace, the training loop the training stages share
    # (it reads prepared data and writes checkpoints through the workspace) and the body
    # of the training baselines' stages, the cost estimate (it counts a training step, and
    # reads the prepared data's size), the stages, the CLI and the dispatcher.
    upper = (
        "invprop.workspace",
        "invprop.training",
        "invprop.baselines",
        "invprop.cost",
        "invprop.stages",
        "invprop.cli",
    )
    primitives = [
        m for m in invprop_modules() if not m.startswith(upper) and m != "invprop.pipeline"
    ]
    assert "invprop.inference" in primitives and "invprop.method.propagation" in primitives
    for module in primitives:
        found = imported_modules(module_file(module))
        assert not {m for m in found if m.startswith(upper)}, module
    assert not {
        m
        for m in imported_modules(module_file("invprop.workspace"))
        if m.startswith(("invprop.stages", "invprop.training", "invprop.cli"))
    }


def test_artifact_paths_are_spelled_in_the_workspace_module_only() -> None:
    """No string outside invprop/workspace.py starts with an artifact folder (messages and
    help texts may mention one mid-sentence; a path is a string that starts with it)."""
    roots = ("data/prepared", "models", "artifacts", "reports", "dvclive")
    found = []
    for path in sorted((ROOT / "invprop").rglob("*.py")):
        if path.name == "workspace.py" and path.parent.name == "invprop":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and any(node.value == r or node.value.startswith(r + "/") for r in roots)
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []


def test_no_cli_module_imports_a_stage_module() -> None:
    """The CLI and the stages share primitives (invprop.tables, invprop.figures, ...); a
    command never reaches into a stage, directly or through another module. (`invprop
    stage` runs one through invprop.pipeline, which imports it by name at run time.)"""
    cli = [m for m in invprop_modules() if m == "invprop.cli" or m.startswith("invprop.cli.")]
    assert "invprop.cli.metrics" in cli and len(cli) > 5
    for module in cli:
        reached = code_of(module)
        assert {p for p in reached if p.startswith("invprop/stages/")} == set(), module
    assert "invprop/tables.py" in code_of("invprop.cli.metrics")  # the walk sees function imports


def test_matplotlib_is_set_up_in_the_figures_module_only() -> None:
    """Every figure, the report's and the CLI's, is drawn by invprop/figures.py."""
    found = []
    for path in sorted((ROOT / "invprop").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "matplotlib" for name in names):
                found.append(str(path.relative_to(ROOT)))
    assert sorted(set(found)) == ["invprop/figures.py"]
