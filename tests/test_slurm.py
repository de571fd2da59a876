"""profiles/slurm on a real SLURM (profiles/slurm/local_slurm.py): the tiny pipeline through
Snakemake's SLURM executor, a cancelled and a timed-out training job resuming on retry,
requests no node can satisfy, sacct on a cluster without accounting, and one training
spanning two nodes.

Two local clusters, each in network namespaces of its own: A has one node and no accounting
(job states from squeue, as the profile asks), B has two nodes and slurmdbd + MariaDB (sacct
works). Each is started once for the module and stopped by PID at its end. Needs root (the
daemons, the namespaces) and Debian's packages, which `make test` installs where apt is
usable; skipped elsewhere, saying why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from dvc_pipeline import dvc_stages
from pipeline_runs import (
    ROOT,
    DvcRun,
    artifact_files,
    assert_same_artifacts,
    command_env,
    comparable_file,
    copy_workspace,
)
from test_distributed import PARAMS as DDP_PARAMS
from test_distributed import WEIGHTS_BOUND, relative_error, weights

from invprop.checkpoint import load_checkpoint
from invprop.config import deep_merge

pytestmark = pytest.mark.slow

NEEDED = ("slurmctld", "slurmd", "munged", "slurmdbd", "mariadbd", "sbatch", "ip", "nsenter")
# The profile as a user runs it, but for the first status check: 2 s after a submission
# instead of its 10, since the jobs here take seconds (a latency knob, not a behaviour).
SNAKEMAKE = [
    "snakemake",
    "--executor",
    "slurm",
    "--workflow-profile",
    "profiles/slurm",
    "--slurm-init-seconds-before-status-checks",
    "2",
]


def _load_local_slurm() -> ModuleType:
    path = ROOT / "profiles/slurm/local_slurm.py"
    spec = importlib.util.spec_from_file_location("local_slurm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_slurm"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


local_slurm = _load_local_slurm()


def _require_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM needs root: its daemons run in network namespaces")
    missing = [tool for tool in NEEDED if shutil.which(tool, path=local_slurm.SEARCH_PATH) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: `make test` installs Debian's SLURM packages "
            "where apt is usable as root (python3 profiles/slurm/local_slurm.py install "
            "--accounting)"
        )
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")


def _cluster(name: str, subnet: str, nodes: int, accounting: bool) -> Iterator[Any]:
    _require_slurm()
    folder = Path(tempfile.mkdtemp(prefix=f"invprop-slurm-{name}-", dir="/tmp"))
    cluster = local_slurm.start(
        folder, nodes, accounting, cpus=16, memory_mb=64000, gpus=1, subnet=subnet,
        prefix=f"invprop-test-{name}-",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        local_slurm.stop(folder)
    assert not folder.exists()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in namespaces for ns in cluster.namespaces), namespaces
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(folder) not in left, "a daemon of the local SLURM outlived stop"


@pytest.fixture(scope="module")
def cluster_a() -> Iterator[Any]:
    """One node, no accounting: sacct cannot answer."""
    yield from _cluster("a", "10.77.1.0/24", nodes=1, accounting=False)


@pytest.fixture(scope="module")
def cluster_b() -> Iterator[Any]:
    """Two nodes, with slurmdbd and MariaDB: sacct answers."""
    yield from _cluster("b", "10.77.2.0/24", nodes=2, accounting=True)


# ---------------------------------------------------------------------------------------
# Helpers


def holding_python(scratch: Path, marker: Path) -> Path:
    """A folder whose `python` holds the pretrain stage once last.pt of epoch 1 is written
    (tests/pretrain_killed_at.py hold), until something kills it; once `marker` exists (the
    retry) it runs the stage as usual. SLURM jobs inherit PATH (sbatch --export=ALL)."""
    scratch.mkdir(parents=True, exist_ok=True)
    shim = scratch / "python"
    shim.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "stages/pretrain.py" ]; then\n'
        "    shift\n"
        f'    exec "{sys.executable}" "{ROOT}/tests/pretrain_killed_at.py" hold 1 "{marker}" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    return scratch


def on_cluster(
    cluster: Any, args: list[str], workspace: Path, first_on_path: Path | None = None
) -> subprocess.Popen[str]:
    """Start `args` on the cluster's first node in `workspace`, output in run.out."""
    log = open(workspace / "run.out", "w")  # noqa: SIM115 - closed by finish()
    return subprocess.Popen(
        cluster.on_node(0, args),
        cwd=workspace,
        env=command_env(workspace, first_on_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], workspace: Path, timeout: float = 600) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return (workspace / "run.out").read_text()


def wait_for(path: Path, process: subprocess.Popen[str], workspace: Path, what: str) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never reached {what}:\n{(workspace / 'run.out').read_text()[-6000:]}")
        time.sleep(0.2)


def on_node(cluster: Any, args: list[str]) -> str:
    result = subprocess.run(cluster.on_node(0, args), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class PlannedJob:
    rule: str
    threads: int
    resources: dict[str, str]
    log: str


def planned_jobs(workspace: Path, *args: str) -> list[PlannedJob]:
    """The jobs of a dry run of the SLURM profile, as Snakemake prints them."""
    dry = subprocess.run(
        ["snakemake", "--dry-run", "--forceall", "--workflow-profile", "profiles/slurm", *args],
        cwd=workspace,
        env=command_env(workspace),
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        log = re.search(r"^\s+log: (\S+)$", block, re.MULTILINE)
        assert resources and log, block
        jobs.append(
            PlannedJob(
                rule=head.group(1),
                threads=int(threads.group(1)) if threads else 1,
                resources=dict(item.split("=", 1) for item in resources.group(1).split(", ")),
                log=log.group(1),
            )
        )
    return jobs


def local_rules(workspace: Path) -> set[str]:
    """The rules the Snakefile's `localrules:` keeps on the submitting machine."""
    match = re.search(
        r"^localrules:\n((?:\s+\w+,?\n)+)", (workspace / "Snakefile").read_text(), re.M
    )
    assert match, "the Snakefile has no localrules"
    return set(re.findall(r"\w+", match.group(1)))


def time_limit(minutes: str) -> str:
    """A limit of `minutes` as scontrol prints it (under a day): 01:00:00, 12:00:00."""
    hours, rest = divmod(int(minutes), 60)
    return f"{hours:02d}:{rest:02d}:00"


# ---------------------------------------------------------------------------------------
# The time limit: started first, so its minute of waiting overlaps the other tests


@dataclass
class TimedOutRun:
    process: subprocess.Popen[str]
    workspace: Path
    started: float


@pytest.fixture(scope="module")
def timed_out_run(
    cluster_b: Any, dvc_run: DvcRun, pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> TimedOutRun:
    """Pretrain on cluster B with a time limit of one minute, held after epoch 1 so the
    limit strikes; job states from sacct (B has accounting)."""
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "slurm_timeout")
    shim = holding_python(tmp_path_factory.mktemp("shim_timeout"), workspace / "held")
    resources = ["pretrain:runtime=1", "pretrain:slurm_partition=gpu", "pretrain:mem_mb=4000"]
    args = [
        "snakemake",
        "reports/pretrain.json",
        *SNAKEMAKE[1:],
        "--slurm-status-command",
        "sacct",
        "--set-resources",
        *resources,
    ]
    return TimedOutRun(on_cluster(cluster_b, args, workspace, shim), workspace, time.monotonic())


# ---------------------------------------------------------------------------------------
# The pipeline


def test_pipeline_runs_on_slurm_and_a_cancelled_training_resumes(
    timed_out_run: TimedOutRun,
    cluster_a: Any,
    dvc_run: DvcRun,
    pipeline_copy: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The whole tiny pipeline through profiles/slurm on cluster A (no accounting). The
    pretrain job is cancelled after its first epoch; the profile's retry resumes it. Every
    artifact equals the local `dvc repro`'s, and SLURM's own records show each job with
    what the profile asks for. (`timed_out_run` is only started here, first, so that its
    wait for the time limit overlaps this run.)"""
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "slurm_pipeline")
    planned = planned_jobs(workspace)
    held = workspace / "held"
    shim = holding_python(tmp_path_factory.mktemp("shim_cancel"), held)
    process = on_cluster(cluster_a, SNAKEMAKE, workspace, shim)
    wait_for(held, process, workspace, "the end of pretrain's first epoch")
    running = on_node(cluster_a, ["squeue", "-h", "-o", "%i %k"]).split("\n")
    pretrain_jobs = [line.split()[0] for line in running if line.endswith("rule_pretrain")]
    assert len(pretrain_jobs) == 1, running
    on_node(cluster_a, ["scancel", pretrain_jobs[0]])
    output = finish(process, workspace)
    assert process.returncode == 0, output[-6000:]

    assert f"SLURM-job '{pretrain_jobs[0]}' failed, SLURM status is: 'CANCELLED'" in output
    assert "resuming from epoch 1 of 2" in (workspace / "logs/pretrain.log").read_text()
    assert assert_same_artifacts(workspace, dvc_run.workspace, dvc_stages(dvc_run.workspace))

    jobs = local_slurm.jobs(cluster_a)
    print(local_slurm.format_jobs(jobs))  # the job table of docs/results.md (pytest -s)
    remote = [job for job in planned if job.rule not in local_rules(workspace)]
    assert sorted({row["rule"] for row in jobs}) == sorted({job.rule for job in remote})
    assert len(jobs) == len(remote) + 1  # pretrain twice
    for row in jobs:
        job = next(job for job in remote if job.rule == row["rule"])
        expected_state = "CANCELLED" if row["job"] == pretrain_jobs[0] else "COMPLETED"
        assert row == {
            "job": row["job"],
            "rule": job.rule,
            "wildcards": row["wildcards"],
            "partition": job.resources["slurm_partition"],
            "gpus": job.resources.get("gpu", "0"),
            "cpus": str(job.threads),
            "memory": f"{job.resources['mem_mb']}M",
            "time limit": time_limit(job.resources["runtime"]),
            "nodes": "1",
            "state": expected_state,
        }
    gpu_rules = {job.rule for job in remote if "gpu" in job.resources}
    assert {"pretrain", "instance_discrimination", "embed", "evaluate", "transfer"} <= gpu_rules
    assert all(row["partition"] == "gpu" for row in jobs if row["rule"] in gpu_rules)
    for job in planned:
        assert (workspace / job.log).is_file(), f"no {job.log}"


def test_a_training_job_past_its_time_limit_says_so_and_resumes(
    timed_out_run: TimedOutRun, cluster_b: Any, dvc_run: DvcRun
) -> None:
    output = finish(timed_out_run.process, timed_out_run.workspace)
    assert timed_out_run.process.returncode == 0, output[-6000:]
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'TIMEOUT'", output), output
    # The failed job's log, shown by the profile: the stage said what stopped it.
    assert "invprop pretrain: stopped by SIGTERM after" in output
    log = (timed_out_run.workspace / "logs/pretrain.log").read_text()
    assert "resuming from epoch 1 of 2" in log
    for out in ("models/pretrain", "reports/pretrain.json"):
        expected = artifact_files(dvc_run.workspace, out)
        files = artifact_files(timed_out_run.workspace, out)
        assert sorted(files) == sorted(expected), out
        for rel, path in expected.items():
            assert comparable_file(files[rel]) == comparable_file(path), rel
    # SLURM's accounting saw both attempts.
    records = on_node(cluster_b, ["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,State,Timelimit"])
    states = [line.split("|")[1:] for line in records.splitlines()]
    assert ["TIMEOUT", "00:01:00"] in states and ["COMPLETED", "00:01:00"] in states, records


# ---------------------------------------------------------------------------------------
# What must fail fast


def test_sacct_without_accounting_stops_at_once_with_one_line(
    cluster_a: Any, pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = copy_workspace(pipeline_copy, tmp_path_factory, "slurm_sacct")
    before = local_slurm.jobs(cluster_a)
    start = time.monotonic()
    process = on_cluster(cluster_a, [*SNAKEMAKE, "--slurm-status-command", "sacct"], workspace)
    output = finish(process, workspace, timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - start < 60
    line = next(line for line in output.splitlines() if "would poll `sacct`" in line)
    assert "Slurm accounting storage is disabled" in line
    assert "--slurm-status-command squeue" in line
    assert local_slurm.jobs(cluster_a) == before  # nothing submitted


@pytest.mark.parametrize(
    ("resources", "said"),
    [
        (["pretrain:slurm_partition=nosuch"], "invalid partition specified"),
        (
            ["pretrain:slurm_partition=gpu", "pretrain:gpu=2"],
            "Requested node configuration is not available",
        ),
    ],
    ids=["unknown partition", "more GPUs than a node has"],
)
def test_a_request_no_node_can_satisfy_fails_at_once_with_sbatchs_line(
    cluster_a: Any,
    dvc_run: DvcRun,
    tmp_path_factory: pytest.TempPathFactory,
    resources: list[str],
    said: str,
) -> None:
    workspace = copy_workspace(dvc_run.workspace, tmp_path_factory, "slurm_refused")
    args = ["snakemake", "reports/pretrain.json", *SNAKEMAKE[1:], "--forcerun", "pretrain"]
    start = time.monotonic()
    process = on_cluster(cluster_a, [*args, "--set-resources", *resources], workspace)
    output = finish(process, workspace, timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - start < 60
    assert said in output, output[-3000:]


# ---------------------------------------------------------------------------------------
# Two nodes


def test_training_spans_two_nodes_like_one_process(
    cluster_b: Any, pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """pretrain.nodes: 2 through the profile on cluster B: one job over both nodes (each in
    its own namespace, joined by a private link), one rank on each, rendezvous from SLURM's
    environment; both ranks end with the same bank, and the run equals one process."""
    params = deep_merge(
        yaml.safe_load((pipeline_copy / "params.yaml").read_text()),
        deep_merge(DDP_PARAMS, {"transfer": {"targets": []}}),
    )
    checkpoints = {}
    for nodes in (1, 2):
        workspace = copy_workspace(pipeline_copy, tmp_path_factory, f"slurm_nodes{nodes}")
        params["pretrain"]["nodes"] = nodes
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if nodes == 1:  # the reference: one process, here
            command = ["snakemake", "--cores", "1", "reports/pretrain.json"]
            done = subprocess.run(
                command, cwd=workspace, env=command_env(workspace), capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        else:
            args = ["snakemake", "reports/pretrain.json", *SNAKEMAKE[1:]]
            process = on_cluster(cluster_b, args, workspace)
            output = finish(process, workspace)
            assert process.returncode == 0, output[-6000:]
            report = json.loads((workspace / "reports/pretrain.json").read_text())
            assert report["ranks"] == 2  # the stage compared both ranks' banks: equal
            pretrain = [row for row in local_slurm.jobs(cluster_b) if row["rule"] == "pretrain"]
            job = pretrain[-1]  # the latest: cluster B ran the time-limit test's jobs too
            assert job["nodes"] == "2" and job["gpus"] == "2" and job["state"] == "COMPLETED"
        checkpoints[nodes] = load_checkpoint(workspace / "models/pretrain/final.pt")
    one, two = checkpoints[1], checkpoints[2]
    assert one["params_hash"] == two["params_hash"]  # the node count is bookkeeping
    assert relative_error(weights(two), weights(one)) <= WEIGHTS_BOUND
    assert relative_error(two["bank"]["vectors"], one["bank"]["vectors"]) <= WEIGHTS_BOUND
    for x, y in zip(one["history"], two["history"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
