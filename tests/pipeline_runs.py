"""The tiny pipeline's workspaces and how two runs of it are compared, for the tests that
run the real orchestrators (test_orchestrators, test_slurm): a copy of the pipeline files
with the tiny params, a DVC run of it (conftest's session fixtures `pipeline_copy` and
`dvc_run`, so every module compares against one run), and the comparison of artifacts.

Each workspace is a copy of the pipeline files (dvc.yaml, Snakefile, stages/, invprop/,
profiles/, .dvcignore) taken once per session, so every orchestrator runs the same code even
while the repository changes underneath. The stages import `invprop` from the copy
(PYTHONPATH), so the code DVC hashes is the code that runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_pipeline import DvcStage, dvc_stages, tiny_params
from run_comparison import without_timing

from invprop.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE_FILES = ("dvc.yaml", "Snakefile", ".dvcignore", "stages", "invprop", "profiles")


def command_env(cwd: Path, first_on_path: Path | None = None) -> dict[str, str]:
    """The environment the venv's tools run with in workspace `cwd`."""
    path = os.pathsep.join(
        [*([str(first_on_path)] if first_on_path else []), str(BIN), os.environ.get("PATH", "")]
    )
    env = {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": str(cwd),
        "DVC_NO_ANALYTICS": "1",
        # Bytecode in invprop/ is covered by its own test below.
        "PYTHONDONTWRITEBYTECODE": "1",
        # Snakemake runs each job with OMP_NUM_THREADS = its threads (1 here); DVC passes
        # the environment on. One thread for both, so float sums agree to the last bit.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv in `cwd`, stdout and stderr together in `.stdout`."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env=command_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {result.returncode} in {cwd}:\n"
            + result.stdout[-6000:]
        )
    return result


def commit(workspace: Path, message: str) -> None:
    run(["git", "add", "-A"], workspace)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], workspace)


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def comparable_file(path: Path) -> Any:
    """What must be equal between two runs: JSON without timings, checkpoints by tensors."""
    if path.suffix == ".json":
        return without_timing(json.loads(path.read_text()))
    if path.suffix == ".pt":
        from invprop.checkpoint import load_checkpoint

        state = load_checkpoint(path)
        return {
            "epoch": state["epoch"],
            "params_hash": state["params_hash"],
            "config": state["config"],
            "history": without_timing(state.get("history")),
            "tensors": {
                f"{part}/{name}": tensor.numpy().tobytes()
                for part in ("model", "bank")
                for name, tensor in state[part].items()
            },
        }
    return path.read_bytes()


def artifact_files(workspace: Path, out: str) -> dict[str, Path]:
    """The files of one output (a file or a folder), minus Snakemake's directory stamps."""
    path = workspace / out
    if path.is_file():
        return {out: path}
    return {
        str(p.relative_to(workspace)): p
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".snakemake_timestamp"
    }


def require_tools() -> None:
    for tool in ("dvc", "snakemake"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not installed in {BIN}")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")


def make_pipeline_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline files, copied once, with params.yaml = repo params + tiny overlay."""
    require_tools()
    base = tmp_path_factory.mktemp("pipeline")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake_timestamp")
    for name in PIPELINE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, base / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, base / name)
    # Any other file a stage depends on (not made by a stage), e.g. a report template.
    repo_stages = dvc_stages(ROOT).values()
    made = [out for stage in repo_stages for out in stage.outs]
    for stage in repo_stages:
        for dep in stage.deps:
            source, target = ROOT / dep, base / dep
            if target.exists() or not source.exists() or any(within(dep, m) for m in made):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=ignore)
            else:
                shutil.copy2(source, target)
    params = tiny_params(ROOT)
    config_from_dict(params)  # the tiny params must be valid for the current schema
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (base / ".gitignore").write_text("__pycache__/\n.snakemake/\n")
    return base


def copy_workspace(source: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A copy of a workspace (git, DVC cache and all), without Snakemake's metadata."""
    workspace = tmp_path_factory.mktemp(name)
    shutil.copytree(
        source,
        workspace,
        dirs_exist_ok=True,
        symlinks=True,
        ignore=shutil.ignore_patterns(".snakemake"),
    )
    return workspace


@dataclass
class DvcRun:
    workspace: Path
    first: subprocess.CompletedProcess[str]


def make_dvc_run(pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> DvcRun:
    """A git + DVC repository of the pipeline after one `dvc repro`, committed."""
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "dvc")
    run(["git", "init", "-q"], workspace)
    run(["dvc", "init", "-q"], workspace)
    commit(workspace, "pipeline")
    first = run(["dvc", "repro"], workspace)
    commit(workspace, "dvc repro")
    return DvcRun(workspace, first)


def assert_same_artifacts(workspace: Path, reference: Path, stages: dict[str, DvcStage]) -> int:
    """Every metric (timings aside) and every cached output of `stages` equal in the two
    workspaces; returns how many metrics files were compared."""
    compared = 0
    for stage in stages.values():
        for metric in stage.metrics:
            expected = without_timing(json.loads((reference / metric).read_text()))
            assert without_timing(json.loads((workspace / metric).read_text())) == expected, metric
            compared += 1
        for out in stage.cached:
            expected_files = artifact_files(reference, out)
            files = artifact_files(workspace, out)
            assert sorted(files) == sorted(expected_files), out
            for rel, path in expected_files.items():
                assert comparable_file(files[rel]) == comparable_file(path), rel
    return compared
