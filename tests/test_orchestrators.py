"""Both orchestrators run the real pipeline end to end on tiny data (tests/pipeline_params.yaml).

One DVC workspace (conftest's session fixture `dvc_run`) serves the DVC checks (full run,
no-op rerun, an experiment, a params change that reruns only what follows) and the check
that Snakemake then has nothing to do; a second workspace runs Snakemake, whose metrics and
artifacts must equal DVC's. DvcStage names come from dvc.yaml, so the tests follow the
pipeline as stages are added. Workspaces and comparisons: tests/pipeline_runs.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_pipeline import DvcStage, dvc_stages
from pipeline_runs import (
    BIN,
    DvcRun,
    artifact_files,
    assert_same_artifacts,
    command_env,
    comparable_file,
    copy_workspace,
    run,
    within,
)
from scipy import stats

from invprop.study import runs_from_show

pytestmark = pytest.mark.slow

# Metric keys that are fractions: accuracies, neighbour purity, coverage, recall.
FRACTION_KEY = re.compile(r"(^|/|_)(top\d+|purity|coverage|recall|accuracy)(_|$)")


# ---------------------------------------------------------------------------------------
# Helpers


def ran_stages(output: str) -> set[str]:
    """Stages DVC says it ran: `Running stage 'graph@final':`."""
    return set(re.findall(r"^Running stage '([^']+)'", output, re.MULTILINE))


def planned_rules(output: str) -> set[str]:
    """Rules of the jobs a Snakemake (dry) run lists, without the target rule `all`."""
    return set(re.findall(r"^(?:local)?rule (\w+):$", output, re.MULTILINE)) - {"all"}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}/{key}" if prefix else str(key))
        return out
    return {prefix: data}


def set_param(workspace: Path, key: str, value: Any) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def downstream(stages: dict[str, DvcStage], roots: set[str]) -> set[str]:
    """`roots` and every stage that depends on their outputs, transitively."""
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for name, stage in stages.items():
            if name in found:
                continue
            outs = [out for other in found for out in stages[other].outs]
            if any(within(dep, out) or within(out, dep) for dep in stage.deps for out in outs):
                found.add(name)
                changed = True
    return found


def reads_param(stage: DvcStage, key: str) -> bool:
    """Whether `stage` tracks params key `key` (directly or through its section)."""
    return any(key == p or key.startswith(p + ".") for p in stage.params)


# ---------------------------------------------------------------------------------------
# Workspaces


@pytest.fixture(scope="module")
def snakemake_run(pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pipeline run by Snakemake with the local profile, in its own workspace."""
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "snakemake")
    run(["snakemake", "--cores", "2", "--workflow-profile", "profiles/local"], workspace)
    return workspace


@pytest.fixture(scope="module")
def stages(dvc_run: DvcRun) -> dict[str, DvcStage]:
    return dvc_stages(dvc_run.workspace)


# ---------------------------------------------------------------------------------------
# DVC


def test_dvc_repro_runs_every_stage_and_writes_fractions_in_range(
    dvc_run: DvcRun, stages: dict[str, DvcStage]
) -> None:
    assert ran_stages(dvc_run.first.stdout) == set(stages)
    workspace = dvc_run.workspace
    for stage in stages.values():
        for out in stage.outs:
            assert (workspace / out).exists(), f"{stage.name} did not write {out}"
    fractions = 0
    for stage in stages.values():
        for metric in stage.metrics:
            values = flatten(json.loads((workspace / metric).read_text()))
            for key, value in values.items():
                if not FRACTION_KEY.search(key):
                    continue
                for number in value if isinstance(value, list) else [value]:
                    if isinstance(number, int | float):
                        assert 0 <= number <= 1, f"{metric}: {key} = {value}"
                        fractions += 1
    assert fractions > 0
    evaluate = flatten(json.loads((workspace / "reports/evaluate.json").read_text()))
    # Every representation the tiny params turn on was scored, the trained baseline too.
    for prefix in ("invp", "pixels", "instance_discrimination"):
        assert 0 <= evaluate[f"{prefix}/linear/top1"] <= 1, prefix


def test_second_dvc_repro_does_nothing(dvc_run: DvcRun) -> None:
    again = run(["dvc", "repro"], dvc_run.workspace)
    assert ran_stages(again.stdout) == set(), again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    status = run(["dvc", "status", "--json"], dvc_run.workspace)
    assert json.loads(status.stdout) == {}


def test_dvc_experiment_with_one_param_changed(dvc_run: DvcRun) -> None:
    workspace = dvc_run.workspace
    run(["dvc", "exp", "run", "--temp", "-S", "evaluate.knn_temperature=0.1"], workspace)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)

    def experiments(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("name") and node.get("data", {}).get("params"):
                yield node
            for value in node.values():
                yield from experiments(value)
        elif isinstance(node, list):
            for value in node:
                yield from experiments(value)

    found = [
        exp
        for exp in experiments(shown)
        if exp["data"]["params"]["params.yaml"]["data"]["evaluate"]["knn_temperature"] == 0.1
    ]
    assert found, "dvc exp show lists no experiment with evaluate.knn_temperature = 0.1"
    metrics = flatten(found[0]["data"]["metrics"]["reports/evaluate.json"]["data"])
    top1 = [v for k, v in metrics.items() if k.endswith("top1")]
    assert top1 and all(0 <= v <= 1 for v in top1)
    # --temp leaves the workspace alone.
    assert run(["git", "status", "--porcelain"], workspace).stdout == ""
    assert json.loads(run(["dvc", "status", "--json"], workspace).stdout) == {}


def test_changing_graph_k_reruns_only_graph_and_what_follows(
    dvc_run: DvcRun, stages: dict[str, DvcStage], tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = copy_workspace(dvc_run.workspace, tmp_path_factory, "graph_k")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    set_param(workspace, "graph.k", params["graph"]["k"] - 2)
    result = run(["dvc", "repro"], workspace)

    ran = ran_stages(result.stdout)
    direct = {name for name, stage in stages.items() if reads_param(stage, "graph.k")}
    graph_stages = {name for name in stages if name.split("@")[0] == "graph"}
    propagate_stages = {name for name in stages if name.split("@")[0] == "propagate"}
    assert graph_stages and graph_stages <= direct
    # Everything that reads the graph reruns (its folder changed); nothing upstream does.
    assert graph_stages | propagate_stages <= ran, result.stdout
    assert ran <= downstream(stages, direct), result.stdout
    upstream = {"prepare", "prepare_target", "pretrain", "embed", "evaluate"}
    assert not {name for name in ran if name.split("@")[0] in upstream}, result.stdout


# ---------------------------------------------------------------------------------------
# Snakemake


def test_snakemake_gives_the_same_metrics_and_artifacts_as_dvc(
    dvc_run: DvcRun, snakemake_run: Path, stages: dict[str, DvcStage]
) -> None:
    assert assert_same_artifacts(snakemake_run, dvc_run.workspace, stages)
    evaluate = flatten(json.loads((snakemake_run / "reports/evaluate.json").read_text()))
    assert not any(math.isnan(v) for v in evaluate.values() if isinstance(v, float))


def test_snakemake_has_nothing_to_do_after_its_own_run(snakemake_run: Path) -> None:
    dry = run(["snakemake", "-n", "--workflow-profile", "profiles/local"], snakemake_run)
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]


def test_snakemake_has_nothing_to_do_after_a_dvc_run(dvc_run: DvcRun) -> None:
    """Snakemake has no provenance for DVC's outputs; they exist and are newer than their
    inputs (DVC ran the stages in order), so a dry run plans nothing."""
    dry = run(["snakemake", "-n", "--workflow-profile", "profiles/local"], dvc_run.workspace)
    assert planned_rules(dry.stdout) == set(), dry.stdout[-3000:]
    assert "Nothing to be done" in dry.stdout


def test_snakemake_jobs_compute_with_the_overrides_it_records(
    pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--config reads nested values as strings; the job still trains for the integer number
    of epochs given, reads it from the params file Snakemake wrote, and tracks it: without
    the override the rule is due again."""
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "snakemake_override")
    override = ["--config", "pretrain={epochs: 1, lr: 0.05}"]
    # --config takes every word after it, so the target comes first.
    run(["snakemake", "--cores", "1", "reports/pretrain.json", *override], workspace)
    assert json.loads((workspace / "reports/pretrain.json").read_text())["epochs"] == 1
    resolved = yaml.safe_load((workspace / ".snakemake/invprop/params.yaml").read_text())
    assert (resolved["pretrain"]["epochs"], resolved["pretrain"]["lr"]) == (1, 0.05)
    assert "[pretrain] done in" in (workspace / "logs/pretrain.log").read_text()

    again = run(["snakemake", "-n", "--cores", "1", "reports/pretrain.json", *override], workspace)
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]
    plain = run(["snakemake", "-n", "--cores", "1", "reports/pretrain.json"], workspace)
    assert "pretrain" in planned_rules(plain.stdout), plain.stdout[-3000:]


def test_snakemake_refuses_an_override_it_cannot_honour(
    pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "snakemake_refused")
    bad = ["snakemake", "-n", "--cores", "1", "--config", "pretrain={epochs: 0}"]
    result = run(bad, workspace, check=False)
    assert result.returncode != 0
    assert "params: pretrain.epochs = 0 is out of range: must be >= 1" in result.stdout


# ---------------------------------------------------------------------------------------
# A seed study: experiments queued and run by DVC, aggregated by `invprop study`

STUDY_SEEDS = (1, 2)
STUDY_FIGURES = ("knn_clean/features/k20/top1", "linear/top1")


@pytest.fixture(scope="module")
def seed_study(dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the DVC workspace, its other experiments removed, in which one experiment
    per seed was queued (up to evaluate, baseline on) and run by DVC's queue worker."""
    workspace = copy_workspace(dvc_run.workspace, tmp_path_factory, "study")
    run(["dvc", "exp", "remove", "--all-commits"], workspace, check=False)
    for seed in STUDY_SEEDS:
        queue = ["dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "evaluate"]
        run([*queue, "-S", f"seed={seed}"], workspace)
    run(["dvc", "queue", "start", "--jobs", "1"], workspace)
    deadline = time.monotonic() + 600
    while True:  # the worker runs in the background; wait for it to finish both
        shown = json.loads(run(["dvc", "exp", "show", "--json"], workspace).stdout)
        runs, pending = runs_from_show(shown, "reports/evaluate.json")
        if not pending.get("queued") and not pending.get("running"):
            break
        assert time.monotonic() < deadline, f"the queue did not finish: {pending}"
        time.sleep(2)
    assert sorted(r.name for r in runs) == [f"seed{s}" for s in STUDY_SEEDS], pending
    return workspace


def test_seed_study_pairs_invp_with_its_baseline_by_seed(seed_study: Path) -> None:
    figures = [arg for key in STUDY_FIGURES for arg in ("--figure", key)]
    result = run([str(BIN / "invprop"), "study", "--json", *figures], seed_study)
    table = json.loads(result.stdout)
    assert table["experiments"] == ["seed1", "seed2"] and table["not_finished"] == {}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], seed_study).stdout)
    runs = {run.seed: run for run in runs_from_show(shown, "reports/evaluate.json")[0]}
    rows = {(row["figure"], row["variant"]): row for row in table["rows"]}
    # Every representation evaluate scores is a variant: raw pixels have a linear probe.
    assert set(rows) == {
        (key, variant) for key in STUDY_FIGURES for variant in ("invp", "instance_discrimination")
    } | {("linear/top1", "pixels")}
    # Pixels train nothing, and data.seed fixes their splits: equal under every seed.
    assert rows["linear/top1", "pixels"]["std"] == 0
    for key in STUDY_FIGURES:
        invp = [runs[s].metrics[f"invp/{key}"] for s in STUDY_SEEDS]
        base = [runs[s].metrics[f"instance_discrimination/{key}"] for s in STUDY_SEEDS]
        row = rows[key, "invp"]
        assert row["seeds"] == list(STUDY_SEEDS)
        assert row["mean"] == pytest.approx(sum(invp) / 2)
        diff = [a - b for a, b in zip(invp, base, strict=True)]
        assert row["difference"]["mean"] == pytest.approx(sum(diff) / 2)
        if diff[0] != diff[1]:  # else the interval has no width and scipy gives nan
            interval = stats.ttest_rel(invp, base).confidence_interval(0.95)
            got = (row["difference"]["low"], row["difference"]["high"])
            assert got == pytest.approx((interval.low, interval.high))
        assert rows[key, "instance_discrimination"]["is_baseline"]
    # `seed` trained another network; data.seed kept the prepared data (and so its splits).
    assert runs[1].params["data.seed"] == runs[2].params["data.seed"]
    data = [exp["revs"][0]["data"] for commit in shown for exp in commit.get("experiments") or []]
    prepared, model = "data/prepared/synthetic", "models/pretrain"
    assert data[0]["deps"][prepared]["hash"] == data[1]["deps"][prepared]["hash"]
    assert data[0]["outs"][model]["hash"] != data[1]["outs"][model]["hash"]


@pytest.fixture(scope="module")
def handed_over(dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the DVC workspace after `snakemake --touch --forceall`: Snakemake records
    its provenance (params, code, inputs) for the outputs DVC made."""
    workspace = copy_workspace(dvc_run.workspace, tmp_path_factory, "handover")
    touch = ["snakemake", "--touch", "--forceall", "--cores", "1"]
    run([*touch, "--workflow-profile", "profiles/local"], workspace)
    return workspace


def test_files_other_tools_write_do_not_change_dvc_status(
    handed_over: Path, stages: dict[str, DvcStage], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Snakemake stamps every directory output (.snakemake_timestamp) and Python writes
    __pycache__/ into code folders that stages list as deps; DVC must ignore both."""
    workspace = copy_workspace(handed_over, tmp_path_factory, "stamps")
    assert list(workspace.glob("artifacts/**/.snakemake_timestamp"))
    for stage in stages.values():
        for dep in stage.deps:
            if (workspace / dep).is_dir() and within(dep, "invprop"):
                cache = workspace / dep / "__pycache__"
                cache.mkdir(exist_ok=True)
                (cache / "module.cpython-311.pyc").write_bytes(b"\0")
    status = run(["dvc", "status", "--json"], workspace)
    assert json.loads(status.stdout) == {}


def test_after_touch_snakemake_reruns_only_what_a_param_change_needs(
    handed_over: Path,
) -> None:
    set_param(handed_over, "graph.k", 5)
    dry = run(["snakemake", "-n", "--workflow-profile", "profiles/local"], handed_over)
    planned = planned_rules(dry.stdout)
    assert {"graph", "propagate"} <= planned, dry.stdout[-3000:]
    assert not planned & {"prepare", "prepare_target", "pretrain", "embed", "evaluate"}


# ---------------------------------------------------------------------------------------
# Concurrency: a second run in a workspace while one runs


@dataclass
class HeldRun:
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def held_run(args: list[str], workspace: Path, stage: str, scratch: Path) -> Iterator[HeldRun]:
    """Start `args` in `workspace` and yield while its `stage` job is held, so the run
    surely holds its lock; on leaving, release the job and wait for the run to end.

    A `python` first on PATH (in `scratch`) holds the job until a release file exists:
    no sleeps decide the order, so the test cannot race."""
    held, release, log = scratch / "held", scratch / "release", scratch / "first.log"
    shim = scratch / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "stages/{stage}.py" ]; then\n'
        f'    touch "{held}"\n'
        f'    while [ ! -e "{release}" ]; do sleep 0.05; done\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    with open(log, "w") as handle:
        process = subprocess.Popen(
            args,
            cwd=workspace,
            env=command_env(workspace, first_on_path=scratch),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
    first = HeldRun(process, log)
    try:
        deadline = time.monotonic() + 600  # a hung run fails the test instead of hanging it
        while not held.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`{' '.join(args)}` never reached {stage}:\n{first.output()[-6000:]}")
            time.sleep(0.05)
        yield first
    finally:
        release.touch()
        process.wait(timeout=600)


def assert_outputs_equal(workspace: Path, reference: Path, outs: list[str]) -> None:
    for out in outs:
        files = artifact_files(workspace, out)
        expected = artifact_files(reference, out)
        assert sorted(files) == sorted(expected), out
        for rel, path in expected.items():
            assert comparable_file(files[rel]) == comparable_file(path), rel


def test_second_snakemake_is_refused_while_one_runs_and_the_first_finishes(
    pipeline_copy: Path, dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "snakemake_lock")
    data_name = yaml.safe_load((workspace / "params.yaml").read_text())["data"]["name"]
    outs = [f"data/prepared/{data_name}", f"reports/prepare_{data_name}.json"]
    target = ["snakemake", "--cores", "1", "--workflow-profile", "profiles/local", outs[1]]
    with held_run(target, workspace, "prepare", tmp_path_factory.mktemp("shim")) as first:
        second = run(target, workspace, check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout, second.stdout[-3000:]
    assert first.process.returncode == 0, first.output()[-6000:]
    assert_outputs_equal(workspace, dvc_run.workspace, outs)


def test_second_dvc_repro_is_refused_while_one_runs_and_the_first_finishes(
    dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = copy_workspace(dvc_run.workspace, tmp_path_factory, "dvc_lock")
    forced = ["dvc", "repro", "-f", "prepare"]
    with held_run(forced, workspace, "prepare", tmp_path_factory.mktemp("shim")) as first:
        second = run(["dvc", "repro"], workspace, check=False)
    # DVC releases its repository lock while a stage's command runs and keeps read/write
    # locks on the stage's files: the second run stops at the first stage it would touch.
    assert second.returncode != 0
    assert "is being blocked by" in second.stdout, second.stdout[-3000:]
    assert "dvc repro -f prepare" in second.stdout
    assert first.process.returncode == 0, first.output()[-6000:]
    assert "Running stage 'prepare'" in first.output()
    data_name = yaml.safe_load((workspace / "params.yaml").read_text())["data"]["name"]
    outs = [f"data/prepared/{data_name}", f"reports/prepare_{data_name}.json"]
    assert_outputs_equal(workspace, dvc_run.workspace, outs)


def test_slurm_profile_builds_the_dag_and_sends_gpu_rules_to_the_gpu_partition(
    pipeline_copy: Path,
) -> None:
    profile = yaml.safe_load((pipeline_copy / "profiles/slurm/config.yaml").read_text())
    assert "executor" not in profile, "the executor is chosen on the command line"
    dry = run(
        ["snakemake", "--dry-run", "--forceall", "--workflow-profile", "profiles/slurm"],
        pipeline_copy,
    )
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", dry.stdout)
    jobs = 0
    for block in blocks:
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        rule = head.group(1)
        line = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        assert line, block
        resources = dict(item.split("=", 1) for item in line.group(1).split(", "))
        for key in ("slurm_partition", "runtime", "mem_mb"):
            assert key in resources, f"{rule}: no {key}"
        if "gpu" in resources:
            wanted = profile["set-resources"].get(rule, {}).get("slurm_partition")
            assert wanted, f"GPU rule {rule} has no slurm_partition in profiles/slurm"
            assert resources["slurm_partition"] == wanted
            assert wanted != profile["default-resources"]["slurm_partition"]
        jobs += 1
    assert jobs > 0
    for rule, resources in profile.get("set-resources", {}).items():
        # The plugin refuses --gres/--gpus in slurm_extra: GPUs come from `gpu` (or `gres`).
        assert not re.search(r"--(gres|gpus)\b", str(resources.get("slurm_extra", ""))), rule
