"""How a training stage takes part in a multi-node launch, from SLURM's environment
(invprop.slurm, invprop.distributed.relaunched), without a cluster; tests/test_slurm.py
runs it on a real one."""

from __future__ import annotations

import pytest

from invprop import slurm
from invprop.config import config_from_dict
from invprop.distributed import relaunched
from invprop.errors import InvpropError

TWO_NODE_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_NODEID": "1",
}


@pytest.fixture(autouse=True)
def _expanded_hostlists(monkeypatch: pytest.MonkeyPatch) -> None:
    """scontrol expands host lists on a real cluster; here, the two lists the tests use."""
    known = {"gpu[07-08]": ["gpu07", "gpu08"], "node[1-2]": ["node1", "node2"]}
    monkeypatch.setattr(slurm, "hostnames", lambda nodelist: known[nodelist])


def test_the_rendezvous_port_is_a_function_of_the_job() -> None:
    ports = [slurm.rendezvous_port(job) for job in (0, 1, 4242, 19999, 20000, 10**9)]
    assert ports == [29500, 29501, 33742, 49499, 29500, 29500]


def test_a_task_of_a_one_task_per_node_step_knows_its_node_and_the_rendezvous() -> None:
    task = slurm.NodeTask.from_env(TWO_NODE_STEP)
    assert task == slurm.NodeTask(node_rank=1, nodes=2, master_addr="gpu07", master_port=33742)
    assert task.torchrun_options(4) == [
        "--nnodes=2",
        "--node_rank=1",
        "--nproc_per_node=4",
        "--master_addr=gpu07",
        "--master_port=33742",
    ]


@pytest.mark.parametrize(
    "changed",
    [
        {"SLURM_STEP_NUM_NODES": None},  # not in a step (an sbatch script, a login node)
        {"SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1"},  # Snakemake's srun -n1
        {"SLURM_STEP_NUM_TASKS": "8"},  # several tasks a node: not one launcher per node
    ],
)
def test_other_steps_are_not_node_tasks(changed: dict[str, str | None]) -> None:
    environ = {k: v for k, v in (TWO_NODE_STEP | changed).items() if v is not None}
    assert slurm.NodeTask.from_env(environ) is None


def test_the_launch_step_drops_the_step_this_process_runs_in() -> None:
    environ = {
        **TWO_NODE_STEP,
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_NNODES": "1",
        "SLURM_CPUS_PER_TASK": "8",
        "SRUN_CPUS_PER_TASK": "8",
        "SBATCH_PARTITION": "gpu",
        "PATH": "/usr/bin",
    }
    assert slurm.Allocation.srun_env(environ) == {
        "SLURM_JOB_ID": "4242",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "PATH": "/usr/bin",
    }


def test_srun_starts_one_task_a_node_with_the_jobs_cpus_and_gpus() -> None:
    allocation = slurm.Allocation(
        job_id=7, hosts=["node1", "node2"], cpus_per_task=8, gpus_per_node=4
    )
    assert allocation.srun_each_node(["python", "-m", "x"]) == [
        "srun",
        "--jobid=7",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--overlap",
        "--kill-on-bad-exit=1",
        "--gres=gpu:4",
        "python",
        "-m",
        "x",
    ]
    no_gpus = slurm.Allocation(job_id=7, hosts=["node1", "node2"], cpus_per_task=1, gpus_per_node=0)
    assert not any(arg.startswith("--gres") for arg in no_gpus.srun_each_node(["x"]))


def test_several_nodes_outside_slurm_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NUM_NODES", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = config_from_dict({"pretrain": {"nodes": 2}})
    with pytest.raises(InvpropError, match=r"no SLURM_JOB_ID\): submit it with .*--nodes=N"):
        relaunched("pretrain", cfg)


def test_a_node_task_with_other_params_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TWO_NODE_STEP.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InvpropError, match=r"one of 2 tasks, one per node .* pretrain.nodes is 1"):
        relaunched("pretrain", config_from_dict({}))


@pytest.mark.parametrize(
    ("requested", "min_job_age", "sacct", "polled"),
    [
        ("squeue", 300, True, "squeue"),
        ("squeue", 20, True, "sacct"),  # MinJobAge < 3 x 10 s: the plugin switches
        ("squeue", None, True, "sacct"),
        ("squeue", 20, False, "squeue"),
        ("sacct", 300, True, "sacct"),
        ("sacct", 300, False, "squeue"),
    ],
)
def test_the_status_command_the_plugin_will_poll(
    monkeypatch: pytest.MonkeyPatch,
    requested: str,
    min_job_age: int | None,
    sacct: bool,
    polled: str,
) -> None:
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: f"/usr/bin/{tool}" if sacct else None)
    assert slurm._polled_command(requested, min_job_age, 10) == polled
