"""The stages of a dvc.yaml as DVC itself resolves them (foreach expanded), and the tiny
pipeline's params, for the tests that compare it with the Snakefile and run it end to end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from invprop.config import deep_merge

TINY_PARAMS = Path(__file__).with_name("pipeline_params.yaml")


def tiny_params(root: Path) -> dict[str, Any]:
    """`root`/params.yaml with the tiny overlay merged in (every key dvc.yaml tracks exists)."""
    return deep_merge(
        yaml.safe_load((root / "params.yaml").read_text()),
        yaml.safe_load(TINY_PARAMS.read_text()),
    )


@dataclass(frozen=True)
class DvcStage:
    name: str
    cmd: str
    deps: frozenset[str]  # paths, params.yaml included
    outs: frozenset[str]  # every output: cached artifacts, metrics and plots
    persisted: frozenset[str]  # `persist: true`: kept between runs
    cached: frozenset[str]
    metrics: frozenset[str]
    params: frozenset[str]  # dotted keys of params.yaml


def dvc_stages(root: Path) -> dict[str, DvcStage]:
    """Every stage of `root`/dvc.yaml by name (e.g. prepare_target@digits)."""
    from dvc.repo import Repo

    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            is_params = [dep.__class__.__name__ == "ParamsDependency" for dep in stage.deps]
            stages[stage.name] = DvcStage(
                name=stage.name,
                cmd=stage.cmd,
                deps=frozenset(
                    str(dep.def_path) for dep, p in zip(stage.deps, is_params, strict=True) if not p
                ),
                outs=frozenset(str(out.def_path) for out in stage.outs),
                persisted=frozenset(str(out.def_path) for out in stage.outs if out.persist),
                cached=frozenset(str(out.def_path) for out in stage.outs if out.use_cache),
                metrics=frozenset(str(out.def_path) for out in stage.outs if out.metric),
                params=frozenset(
                    key
                    for dep, p in zip(stage.deps, is_params, strict=True)
                    if p
                    for key in dep.params
                ),
            )
    return stages
