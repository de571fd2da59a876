"""The stages of a dvc.yaml as DVC itself resolves them (foreach expanded), for the tests
that compare it with the Snakefile and run it end to end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
