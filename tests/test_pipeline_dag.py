"""dvc.yaml and the Snakefile describe the same DAG: stages, commands, inputs, outputs, params."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from dvc_pipeline import dvc_stages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The one documented difference between the two commands: Snakemake passes the params file
# it resolved (overrides included) and sends the output to the job's log.
SNAKEMAKE_SUFFIX = re.compile(r" --params \.snakemake/invprop/params\.yaml > logs/\S+\.log 2>&1$")


@dataclass(frozen=True)
class Stage:
    cmd: str
    deps: frozenset[str]
    outs: frozenset[tuple[str, bool]]  # (path, kept between runs)
    params: frozenset[str]


def dvc_view() -> dict[str, Stage]:
    """dvc.yaml's stages in the shape the Snakemake side is read into."""
    return {
        name: Stage(
            stage.cmd,
            stage.deps,
            frozenset((out, out in stage.persisted) for out in stage.outs),
            stage.params,
        )
        for name, stage in dvc_stages(ROOT).items()
    }


def snakemake_rule_params() -> dict[str, frozenset[str]]:
    """The `tracked` params of every rule, read through Snakemake's own parser."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        OutputSettings,
        Quietness,
        ResourceSettings,
        StorageSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            storage_settings=StorageSettings(),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )
        workflow = workflow_api._get_workflow()
        # Parsing without building a DAG: the private entry point is the only way to read
        # rule params; snakemake is pinned in constraints.txt.
        workflow.include(ROOT / "Snakefile", overwrite_default_target=True)
        return {rule.name: frozenset(rule.params.get("tracked", {})) for rule in workflow.rules}


def snakemake_stages() -> dict[str, Stage]:
    """Every job of a forced dry run, named like DVC names foreach stages (rule@wildcard)."""
    out = subprocess.run(
        [BIN / "snakemake", "--dry-run", "--forceall", "--printshellcmds", "--cores", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    params = snakemake_rule_params()
    stages = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue

        def field(name: str, block: str = block) -> list[str]:
            found = re.search(rf"^\s+{name}: (.*)$", block, re.MULTILINE)
            return [v.strip() for v in found.group(1).split(",")] if found else []

        wildcards = [value.split("=", 1)[1] for value in field("wildcards")]
        name = "@".join([head.group(1), *wildcards])
        cmd = re.search(r"^Shell command: (.*)$", block, re.MULTILINE).group(1)
        assert SNAKEMAKE_SUFFIX.search(cmd), cmd
        cmd = SNAKEMAKE_SUFFIX.sub("", cmd)
        # DVC's `persist: true` is Snakemake's update() flag, printed as "path (update)".
        outs = {
            (re.sub(r" \(update\)$", "", out), out.endswith(" (update)")) for out in field("output")
        }
        stages[name] = Stage(cmd, frozenset(field("input")), frozenset(outs), params[head.group(1)])
    return stages


@pytest.mark.slow
def test_dvc_and_snakemake_describe_the_same_dag() -> None:
    dvc = dvc_view()
    snake = snakemake_stages()
    outputs = {path for stage in dvc.values() for path, _ in stage.outs}
    assert sorted(dvc) == sorted(snake)
    for name in dvc:
        assert dvc[name].cmd == snake[name].cmd, name
        assert dvc[name].outs == snake[name].outs, name
        # DVC lists params.yaml itself as a dependency; Snakemake tracks params per rule.
        # A DVC dependency on a parent folder (data/prepared) stands for the outputs inside
        # it, which Snakemake lists one by one.
        deps = set()
        for dep in dvc[name].deps - {"params.yaml"}:
            inside = {out for out in outputs if out.startswith(dep + "/")}
            deps |= inside or {dep}
        assert deps == snake[name].deps, name
        assert dvc[name].params == snake[name].params, name
