#!/usr/bin/env python3
"""A real SLURM on this machine, to try profiles/slurm before the cluster.

    sudo python3 profiles/slurm/local_slurm.py install [--accounting]   # Debian packages
    sudo python3 profiles/slurm/local_slurm.py start [--nodes 2] [--accounting]
    sudo python3 profiles/slurm/local_slurm.py run -- snakemake --executor slurm \\
        --workflow-profile profiles/slurm
    sudo python3 profiles/slurm/local_slurm.py jobs      # each job's resources and state
    sudo python3 profiles/slurm/local_slurm.py stop

Debian's slurmctld, slurmd and munge (22.05), plus slurmdbd and MariaDB with --accounting,
so that `sacct` answers as on most clusters. Every daemon runs inside private network
namespaces that `start` creates, one per node, joined by a bridge in the first node's
namespace (10.77.0.0/24 by default): nothing listens on this machine's own interfaces and a
SLURM already installed here is not touched; nothing is written outside that folder but the
namespaces themselves. Configuration, keys, spool, logs and PID files
live under one folder (--dir, default /tmp/invprop-slurm). Each node declares one fake GPU
(`gres gpu`, File=/dev/null), so the GPU partition and `--gpus=1` are real requests, and more
CPUs and memory than the machine has (SlurmdParameters=config_overrides), so the profile's
requests are accepted; a job still runs on the machine's real cores.

`run` executes a command on the first node (its namespace, host name, /etc/hosts, and this
cluster's configuration as /etc/slurm), which is where sbatch, squeue, sacct and Snakemake's
SLURM executor must run. `stop`
cancels the jobs, stops every daemon by the PID it recorded, then any process left in the
namespaces, and removes the namespaces and the folder.

Needs root, iproute2's `ip` and util-linux's `nsenter` and `unshare`; only the standard
library.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
ACCOUNTING_PACKAGES = ["slurmdbd", "mariadb-server"]
DEFAULT_DIR = Path("/tmp/invprop-slurm")
STATE_FILE = "cluster.json"
# The daemons, `ip` and `runuser` live in sbin, which a user's PATH (or `env -i`) may lack.
SEARCH_PATH = os.pathsep.join(filter(None, [os.environ.get("PATH"), "/usr/sbin", "/sbin"]))
CLUSTER_NAME = "invprop"
DAEMON_TIMEOUT = 30.0


@dataclass
class Cluster:
    """Where a started cluster lives: enough for `run` and `stop` to find everything."""

    dir: str
    nodes: list[str]
    namespaces: list[str]
    addresses: list[str]
    cpus: int
    memory_mb: int
    gpus: int
    accounting: bool

    @property
    def conf(self) -> Path:
        return Path(self.dir) / "etc" / "slurm.conf"

    @property
    def pid_files(self) -> list[Path]:
        """In the order of starting; `stop` goes backwards."""
        d = Path(self.dir)
        files = [d / "munge" / "munged.pid"]
        if self.accounting:
            files += [d / "mysql" / "mariadb.pid", d / "run" / "slurmdbd.pid"]
        files.append(d / "run" / "slurmctld.pid")
        return files + [d / "run" / f"slurmd-{node}.pid" for node in self.nodes]

    def on_node(self, index: int, command: list[str]) -> list[str]:
        """`command` inside node `index`'s namespace, with that node's host name."""
        # nsenter joins the network namespace only: `ip netns exec` would also remount /sys,
        # hiding the cgroup hierarchy slurmd needs. Private UTS and mount namespaces give
        # the node its host name, its /etc/hosts and our configuration as /etc/slurm, where
        # every SLURM command looks (Snakemake's job step drops SLURM_CONF from the
        # environment of the job's own srun).
        etc = Path(self.dir) / "etc"
        return [
            "nsenter",
            f"--net=/run/netns/{self.namespaces[index]}",
            "unshare",
            "--uts",
            "--mount",
            "sh",
            "-c",
            # The caller's PATH, with sbin (the daemons) after it.
            'export PATH="$PATH:/usr/sbin:/sbin" && hostname "$0"'
            ' && mount --bind "$1/hosts" /etc/hosts && mount --bind "$1" /etc/slurm'
            ' && shift && exec "$@"',
            self.nodes[index],
            str(etc),
            *command,
        ]

    def save(self) -> None:
        (Path(self.dir) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> Cluster:
        state = folder / STATE_FILE
        if not state.is_file():
            raise SystemExit(f"error: no local SLURM in {folder} ({state} is missing); start one")
        return cls(**json.loads(state.read_text()))


def sh(command: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    env = {**(env or os.environ), "PATH": SEARCH_PATH}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise SystemExit(
            f"error: `{' '.join(command)}` exited with {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def install(accounting: bool) -> None:
    """The Debian packages, without starting Debian's own services (no systemd here, and
    policy-rc.d keeps apt from starting them where there is)."""
    packages = PACKAGES + (ACCOUNTING_PACKAGES if accounting else [])
    missing = [
        p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode
    ]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-qq"], env)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env)


def _slurm_conf(cluster: Cluster) -> str:
    d = Path(cluster.dir)
    head = cluster.nodes[0]
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={head}({cluster.addresses[0]})",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={d / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={d / 'state'}",
        f"SlurmdSpoolDir={d / 'spool' / '%n'}",
        f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={d / 'run' / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        # No cgroups here: processes are tracked by parentage, tasks are not bound.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "GresTypes=gpu",
        # A node may declare more CPUs and memory than the machine has.
        "SlurmdParameters=config_overrides",
        "MailProg=/bin/true",  # otherwise slurmctld refuses to start: MailProg is invalid
        "DefMemPerCPU=500",  # otherwise a job without --mem takes the whole node
        "ReturnToService=2",
        # Ended jobs stay visible to squeue --states=all for 5 minutes (Snakemake's SLURM
        # executor reads their final state there when sacct is not used).
        "MinJobAge=300",
        "KillWait=5",
        "InactiveLimit=0",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={d / 'log' / 'jobcomp.txt'}",
    ]
    if cluster.accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={head}",
            # For slurmdbd, this "password" names the munge socket its connections use.
            f"AccountingStoragePass={d / 'munge' / 'munge.socket'}",
            "JobAcctGatherType=jobacct_gather/linux",
            "AccountingStorageTRES=gres/gpu",  # so sacct shows the GPUs a job got
        ]
    else:
        lines.append("AccountingStorageType=accounting_storage/none")
    for node, address in zip(cluster.nodes, cluster.addresses, strict=True):
        lines.append(
            f"NodeName={node} NodeAddr={address} CPUs={cluster.cpus} "
            f"RealMemory={cluster.memory_mb} Gres=gpu:{cluster.gpus} State=UNKNOWN"
        )
    every = ",".join(cluster.nodes)
    lines += [
        f"PartitionName=cpu Nodes={every} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName=gpu Nodes={every} MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _gres_conf(cluster: Cluster) -> str:
    # File=/dev/null: a device slurmd can open; with Count=1 instead the node goes INVAL.
    return "".join(f"NodeName={node} Name=gpu File=/dev/null\n" for node in cluster.nodes)


def _write_config(cluster: Cluster) -> None:
    d = Path(cluster.dir)
    for sub in ("etc", "state", "run", "log", "munge", *(f"spool/{n}" for n in cluster.nodes)):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cluster.conf.write_text(_slurm_conf(cluster))
    (Path(cluster.dir) / "etc" / "hosts").write_text(
        "127.0.0.1 localhost\n"
        + "".join(f"{a} {n}\n" for n, a in zip(cluster.nodes, cluster.addresses, strict=True))
    )
    (d / "etc" / "gres.conf").write_text(_gres_conf(cluster))


def _network(cluster: Cluster) -> None:
    """One namespace per node; the first holds a bridge, the others join it by a veth pair."""
    prefix = ipaddress.ip_network(f"{cluster.addresses[0]}/24", strict=False).prefixlen
    for namespace in cluster.namespaces:
        sh(["ip", "netns", "add", namespace])
        sh(["ip", "-n", namespace, "link", "set", "lo", "up"])
    head = cluster.namespaces[0]
    sh(["ip", "-n", head, "link", "add", "br0", "type", "bridge"])
    sh(["ip", "-n", head, "addr", "add", f"{cluster.addresses[0]}/{prefix}", "dev", "br0"])
    sh(["ip", "-n", head, "link", "set", "br0", "up"])
    for i in range(1, len(cluster.nodes)):
        ours, theirs = f"node{i}", "eth0"
        namespace = cluster.namespaces[i]
        sh(
            [
                "ip",
                "link",
                "add",
                ours,
                "netns",
                head,
                "type",
                "veth",
                "peer",
                "name",
                theirs,
                "netns",
                namespace,
            ]
        )
        sh(["ip", "-n", head, "link", "set", ours, "master", "br0", "up"])
        sh(
            [
                "ip",
                "-n",
                namespace,
                "addr",
                "add",
                f"{cluster.addresses[i]}/{prefix}",
                "dev",
                theirs,
            ]
        )
        sh(["ip", "-n", namespace, "link", "set", theirs, "up"])


def _munge(cluster: Cluster) -> None:
    """munged as the munge user (it refuses root), on a socket in our folder."""
    d = Path(cluster.dir) / "munge"
    user = pwd.getpwnam("munge")
    key = d / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    for path in (d, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    d.chmod(0o755)  # clients reach the socket; munged wants no group or other write
    key.chmod(0o400)
    pid = d / "munged.pid"
    sh(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "munged",
            f"--socket={d / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={pid}",
            f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ]
    )


def _mariadb(cluster: Cluster) -> str:
    """MariaDB on the head node's loopback, for slurmdbd; returns the password it set. Its
    files, PID file and log included, are in a folder the mysql user owns."""
    d = Path(cluster.dir) / "mysql"
    data = d / "data"
    data.mkdir(parents=True, exist_ok=True)
    mysql = pwd.getpwnam("mysql")
    shutil.chown(d, mysql.pw_uid, mysql.pw_gid)
    shutil.chown(data, mysql.pw_uid, mysql.pw_gid)
    sh(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--user=mysql",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ]
    )
    socket = d / "mysqld.sock"
    subprocess.Popen(
        cluster.on_node(
            0,
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                "--user=mysql",
                f"--socket={socket}",
                "--bind-address=127.0.0.1",
                "--port=3306",
                f"--pid-file={d / 'mariadb.pid'}",
                f"--log-error={d / 'mariadb.log'}",
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait(lambda: socket.exists(), "MariaDB to open its socket", cluster)
    password = secrets.token_hex(16)
    sql = (
        f"CREATE OR REPLACE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    )
    _retry(["mariadb", "--no-defaults", f"--socket={socket}", "-e", sql], "MariaDB", cluster)
    return password


def _slurmdbd(cluster: Cluster, password: str) -> None:
    d = Path(cluster.dir)
    conf = d / "etc" / "slurmdbd.conf"
    conf.write_text(
        "\n".join(
            [
                "AuthType=auth/munge",
                f"AuthInfo=socket={d / 'munge' / 'munge.socket'}",
                f"DbdHost={cluster.nodes[0]}",
                f"DbdAddr={cluster.addresses[0]}",
                "SlurmUser=root",
                f"PidFile={d / 'run' / 'slurmdbd.pid'}",
                f"LogFile={d / 'log' / 'slurmdbd.log'}",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                "StoragePort=3306",
                "StorageUser=slurm",
                f"StoragePass={password}",
                "StorageLoc=slurm_acct_db",
            ]
        )
        + "\n"
    )
    conf.chmod(0o600)  # slurmdbd refuses a config others can read: it holds the password
    sh(cluster.on_node(0, ["slurmdbd"]))  # reads /etc/slurm/slurmdbd.conf: ours, on the node
    _retry(cluster.on_node(0, ["sacctmgr", "-n", "list", "cluster"]), "slurmdbd", cluster)
    sh(cluster.on_node(0, ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME]))


def _retry(command: list[str], what: str, cluster: Cluster) -> None:
    """Run `command` until it succeeds (a daemon coming up); on timeout, say what it said."""
    said = ""

    def succeeded() -> bool:
        nonlocal said
        result = subprocess.run(command, capture_output=True, text=True)
        said = (result.stderr or result.stdout).strip()
        return result.returncode == 0

    _wait(succeeded, lambda: f"{what} to answer (it said: {said or 'nothing'})", cluster)


def _wait(
    ready: Callable[[], bool],
    what: str | Callable[[], str],
    cluster: Cluster,
    timeout: float = DAEMON_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    waited_for = what() if callable(what) else what
    raise SystemExit(
        f"error: timed out after {timeout:.0f} s waiting for {waited_for}; "
        f"logs in {cluster.dir}/log, {cluster.dir}/munge and {cluster.dir}/mysql"
    )


def node_states(cluster: Cluster) -> dict[str, str]:
    out = subprocess.run(
        cluster.on_node(0, ["sinfo", "-h", "-N", "-o", "%N %T"]),
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


JOB_COLUMNS = (
    "job",
    "rule",
    "wildcards",
    "partition",
    "gpus",
    "cpus",
    "memory",
    "time limit",
    "nodes",
    "state",
)


def jobs(cluster: Cluster) -> list[dict[str, str]]:
    """The cluster's jobs as `scontrol show job` reports them (ended ones for MinJobAge):
    id, the Snakemake rule and wildcards (its job comment), partition, GPUs, CPUs, memory
    per node, time limit, nodes and state."""
    out = sh(cluster.on_node(0, ["scontrol", "show", "job", "-o"]))
    table = []
    for line in out.splitlines():
        if not line.startswith("JobId="):
            continue
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        tres = dict(item.split("=", 1) for item in fields["TRES"].split(",") if "=" in item)
        # Snakemake's job comment: rule_<name>[_wildcards_<values>]
        rule, _, wildcards = (
            fields.get("Comment", "").removeprefix("rule_").partition("_wildcards_")
        )
        table.append(
            {
                "job": fields["JobId"],
                "rule": rule or "-",
                "wildcards": wildcards or "-",
                "partition": fields["Partition"],
                "gpus": str(_gpus(fields, tres)),
                "cpus": fields["NumCPUs"],
                "memory": fields["MinMemoryNode"],
                "time limit": fields["TimeLimit"],
                "nodes": fields["NumNodes"],
                "state": fields["JobState"],
            }
        )
    return sorted(table, key=lambda row: int(row["job"]))


def _gpus(fields: dict[str, str], tres: dict[str, str]) -> int:
    """A job's GPUs: its TRES count (with accounting), else its request, per job (--gpus)
    or per node (--gres), as TresPerJob=gres:gpu:1 or TresPerNode=gres:gpu:1."""
    if "gres/gpu" in tres:
        return int(tres["gres/gpu"])
    for field, factor in (("TresPerJob", 1), ("TresPerNode", int(fields["NumNodes"]))):
        match = re.search(r"gres[:/]gpu(?::\w+)*:(\d+)", fields.get(field, ""))
        if match:
            return int(match.group(1)) * factor
    return 0


def format_jobs(rows: list[dict[str, str]]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in JOB_COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in JOB_COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in JOB_COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def start(
    folder: Path,
    nodes: int,
    accounting: bool,
    cpus: int,
    memory_mb: int,
    gpus: int,
    subnet: str,
    prefix: str,
) -> Cluster:
    if os.geteuid() != 0:
        raise SystemExit("error: the local SLURM needs root (sudo): it creates namespaces")
    if (folder / STATE_FILE).exists():
        raise SystemExit(f"error: a local SLURM already runs from {folder}; stop it first")
    for tool in ("slurmctld", "slurmd", "munged", "ip", "unshare", "sbatch"):
        if shutil.which(tool, path=SEARCH_PATH) is None:
            raise SystemExit(f"error: {tool} is not installed; run `{sys.argv[0]} install` first")
    if accounting and shutil.which("slurmdbd", path=SEARCH_PATH) is None:
        raise SystemExit(
            f"error: slurmdbd is not installed; run `{sys.argv[0]} install --accounting`"
        )
    network = ipaddress.ip_network(subnet)
    hosts = list(network.hosts())
    cluster = Cluster(
        dir=str(folder.resolve()),
        nodes=[f"node{i + 1}" for i in range(nodes)],
        namespaces=[f"{prefix}{i + 1}" for i in range(nodes)],
        addresses=[str(hosts[i]) for i in range(nodes)],
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        accounting=accounting,
    )
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # munged (not root) reaches its socket and key below it
    cluster.save()
    try:
        _write_config(cluster)
        _network(cluster)
        _munge(cluster)
        if accounting:
            _slurmdbd(cluster, _mariadb(cluster))
        sh(cluster.on_node(0, ["slurmctld"]))
        for i, node in enumerate(cluster.nodes):
            sh(cluster.on_node(i, ["slurmd", "-N", node]))
        _wait(
            lambda: sorted(node_states(cluster).values()) == ["idle"] * nodes,
            "every node to be idle",
            cluster,
        )
    except BaseException:
        stop(folder, keep=True)
        raise
    return cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _terminate(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def stop(folder: Path, keep: bool = False) -> None:
    """Stop everything `start` started in `folder`, by PID, and remove what it created."""
    cluster = Cluster.load(folder)
    if any(p.is_file() for p in cluster.pid_files[1:]):
        subprocess.run(
            cluster.on_node(0, ["scancel", "--full", "--quiet", "--user=root"]),
            capture_output=True,
        )
    for pid_file in reversed(cluster.pid_files):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        _terminate([pid])
        pid_file.unlink(missing_ok=True)
    existing = sh(["ip", "netns", "list"]).split()
    for namespace in cluster.namespaces:
        if namespace not in existing:
            continue
        # Jobs' processes left behind (slurmstepd and its tasks) live in the namespaces.
        left = [int(p) for p in sh(["ip", "netns", "pids", namespace], check=False).split()]
        _terminate(left)
        sh(["ip", "netns", "del", namespace], check=False)
    if keep:
        (folder / STATE_FILE).unlink(missing_ok=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state folder ({DEFAULT_DIR})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("install", help="install the Debian packages")
    p.add_argument("--accounting", action="store_true", help="also slurmdbd and MariaDB")
    p = commands.add_parser("start", help="start a cluster and wait until its nodes are idle")
    p.add_argument("--nodes", type=int, default=1, help="nodes, each in its namespace (1)")
    p.add_argument("--accounting", action="store_true", help="slurmdbd + MariaDB: sacct works")
    p.add_argument("--cpus", type=int, default=16, help="CPUs each node declares (16)")
    p.add_argument("--memory-mb", type=int, default=64000, help="memory each node declares")
    p.add_argument("--gpus", type=int, default=1, help="fake GPUs each node declares (1)")
    p.add_argument("--subnet", default="10.77.0.0/24", help="the nodes' private subnet")
    p.add_argument("--namespace-prefix", default="invprop-slurm-", help="namespace names")
    p = commands.add_parser("run", help="run a command on the first node")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- command ...")
    p = commands.add_parser("jobs", help="the jobs SLURM remembers: resources and state")
    p.add_argument("--json", action="store_true", help="as JSON")
    p = commands.add_parser("stop", help="stop everything and remove what start created")
    p.add_argument("--keep", action="store_true", help="keep the folder (logs, config)")
    options = parser.parse_args(argv)

    if options.command == "install":
        install(options.accounting)
    elif options.command == "start":
        cluster = start(
            options.dir,
            options.nodes,
            options.accounting,
            options.cpus,
            options.memory_mb,
            options.gpus,
            options.subnet,
            options.namespace_prefix,
        )
        print(
            f"local SLURM up: nodes {', '.join(cluster.nodes)} idle; "
            f"{'sacct works' if cluster.accounting else 'no accounting: sacct does not work'}"
        )
        print(f"run commands on {cluster.nodes[0]}: {sys.argv[0]} run -- sinfo")
    elif options.command == "run":
        command = options.argv[1:] if options.argv[:1] == ["--"] else options.argv
        if not command:
            parser.error("run needs a command after --")
        cluster = Cluster.load(options.dir)
        return subprocess.run(cluster.on_node(0, command)).returncode
    elif options.command == "jobs":
        rows = jobs(Cluster.load(options.dir))
        print(json.dumps(rows, indent=2) if options.json else format_jobs(rows))
    elif options.command == "stop":
        stop(options.dir, options.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
