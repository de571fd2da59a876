"""SLURM, as multi-node training and the Snakefile need it (no torch here).

Training across nodes (`pretrain.nodes` > 1) takes two launches inside one allocation:
1. the stage, started once (by Snakemake's job step, an sbatch script or by hand), finds
   its allocation (`Allocation.of_this_job`) and starts itself again on every node, one
   task per node (`Allocation.srun_each_node`);
2. each of those tasks (`NodeTask.from_env`) starts torchrun for its node, with the
   rendezvous from SLURM's environment: the first host of the step's node list, a port
   derived from the job id, and the node's SLURM_NODEID as its rank.

`status_problem` says, before Snakemake's SLURM executor starts polling, when the
command it will poll cannot answer: the executor would otherwise wait forever.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from invprop.errors import InvpropError

__all__ = ["Allocation", "NodeTask", "rendezvous_port", "status_problem"]

# torchrun's own default is 29500; a job's port is in [29500, 49500).
PORT_BASE = 29500
PORT_SPAN = 20000


def rendezvous_port(job_id: int) -> int:
    """The rendezvous port of a job: a function of its id, so every node agrees on it
    without talking, and two jobs sharing a first node rarely collide."""
    return PORT_BASE + job_id % PORT_SPAN


def _scontrol(*args: str) -> str:
    if shutil.which("scontrol") is None:
        raise InvpropError("scontrol is not on PATH; multi-node training needs SLURM's commands")
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise InvpropError(f"scontrol {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def hostnames(nodelist: str) -> list[str]:
    """The hosts of a SLURM node list (node[01-03],gpu7), in order, as scontrol expands it."""
    return _scontrol("show", "hostnames", nodelist).split()


@dataclass(frozen=True)
class Allocation:
    """The SLURM job this process runs in, as `scontrol show job` reports it."""

    job_id: int
    hosts: list[str]
    cpus_per_task: int
    gpus_per_node: int

    @classmethod
    def of_this_job(cls, environ: Mapping[str, str] = os.environ) -> Allocation:
        job_id = environ.get("SLURM_JOB_ID", "")
        if not job_id.isdigit():
            raise InvpropError(
                "pretrain.nodes > 1 trains across the nodes of a SLURM allocation, and this "
                "process runs in none (no SLURM_JOB_ID): submit it with Snakemake's SLURM "
                "executor or sbatch --nodes=N, or set pretrain.nodes: 1"
            )
        shown = _scontrol("show", "job", "-o", job_id).split()
        fields = dict(item.split("=", 1) for item in shown if "=" in item)
        # TRES lists the job's totals, e.g. cpu=16,mem=64G,node=2,gres/gpu=2.
        tres = dict(item.split("=", 1) for item in fields.get("TRES", "").split(",") if "=" in item)
        hosts = hostnames(fields["NodeList"])
        return cls(
            job_id=int(job_id),
            hosts=hosts,
            cpus_per_task=int(fields.get("CPUs/Task", "1")),
            gpus_per_node=int(tres.get("gres/gpu", "0")) // len(hosts),
        )

    def srun_each_node(self, command: Sequence[str]) -> list[str]:
        """`command` as one task on every node of the allocation, each with the job's CPUs
        per task and GPUs per node. --overlap: the step that runs this process (Snakemake's
        job step) holds CPUs of the first node, which the new step shares."""
        n = len(self.hosts)
        srun = [
            "srun",
            f"--jobid={self.job_id}",
            f"--nodes={n}",
            f"--ntasks={n}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={self.cpus_per_task}",
            "--overlap",
            "--kill-on-bad-exit=1",
        ]
        if self.gpus_per_node:
            srun.append(f"--gres=gpu:{self.gpus_per_node}")
        return [*srun, *command]

    @staticmethod
    def srun_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """The environment for that srun: without the SLURM_* values of the step this
        process runs in (one task on one node, which srun would take for the allocation's
        shape), the job and the configuration kept."""
        kept = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME"}
        return {
            name: value
            for name, value in environ.items()
            if name in kept or not name.startswith(("SLURM_", "SRUN_", "SBATCH_"))
        }


@dataclass(frozen=True)
class NodeTask:
    """This process is the task of one node in a step with one task on each node."""

    node_rank: int
    nodes: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NodeTask | None:
        nodes, tasks = environ.get("SLURM_STEP_NUM_NODES"), environ.get("SLURM_STEP_NUM_TASKS")
        if nodes is None or tasks != nodes or int(nodes) < 2:
            return None
        return cls(
            node_rank=int(environ["SLURM_NODEID"]),
            nodes=int(nodes),
            master_addr=hostnames(environ["SLURM_STEP_NODELIST"])[0],
            master_port=rendezvous_port(int(environ["SLURM_JOB_ID"])),
        )

    def torchrun_options(self, processes: int) -> list[str]:
        return [
            f"--nnodes={self.nodes}",
            f"--node_rank={self.node_rank}",
            f"--nproc_per_node={processes}",
            f"--master_addr={self.master_addr}",
            f"--master_port={self.master_port}",
        ]


# The rule of snakemake-executor-plugin-slurm 2.8 (`check_active_jobs`): squeue is used as
# asked unless MinJobAge is under 3 x the first check's delay and sacct exists, which it
# then uses instead; sacct as asked unless it does not exist.
def _polled_command(requested: str, min_job_age: int | None, first_check_seconds: int) -> str:
    sacct_exists = shutil.which("sacct") is not None
    too_young = min_job_age is None or min_job_age < 3 * first_check_seconds
    if requested == "squeue" and sacct_exists and too_young:
        return "sacct"
    if requested == "sacct" and not sacct_exists:
        return "squeue"
    return requested


def _min_job_age() -> int | None:
    try:
        config = _scontrol("show", "config")
    except InvpropError:
        return None
    match = re.search(r"^MinJobAge\s*=\s*(\d+)", config, re.MULTILINE)
    return int(match.group(1)) if match else None


def status_problem(requested: str, first_check_seconds: int) -> str | None:
    """Why the job-status command the SLURM executor will poll cannot answer (one line
    naming the fix), or None when it answers."""
    command = _polled_command(requested, _min_job_age(), first_check_seconds)
    probe = (
        ["sacct", "-X", "-n", "-o", "JobIdRaw", "--starttime", "now"]
        if command == "sacct"
        else ["squeue", "-h", "-o", "%i"]
    )
    if shutil.which(probe[0]) is None:
        return f"{probe[0]} is not on PATH: Snakemake's SLURM executor cannot read job states"
    result = subprocess.run(probe, capture_output=True, text=True)
    if result.returncode == 0:
        return None
    said = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
    fix = (
        "this cluster has no job accounting (slurmdbd): pass --slurm-status-command squeue "
        "(profiles/slurm sets it), with MinJobAge >= "
        f"{3 * first_check_seconds} s in slurm.conf"
        if command == "sacct"
        else "check that SLURM's controller answers (squeue)"
    )
    return (
        f"Snakemake's SLURM executor would poll `{command}` for job states and wait forever: "
        f"`{' '.join(probe)}` says: {said}; {fix}"
    )
