"""`invprop share`: are this workspace's results ready to leave the machine?

    invprop share          # one line per step still to take, exit status 1; else "ready"
    invprop share --json

Results travel in two halves (README, "Sharing artifacts"): git carries the code, params,
`dvc.lock` and the small outputs DVC does not cache (reports/, dvclive/); the DVC remote
carries every cached artifact. A clone that gets both is up to date and reruns nothing; a
clone that misses either would retrain. Run it before `git push`, or let git run it:
    printf '#!/bin/sh\\nexec invprop share\\n' > .git/hooks/pre-push && chmod +x .git/hooks/pre-push
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from invprop.cli.common import JSON_OPTION, command, print_json
from invprop.errors import InvpropError


def git_paths() -> tuple[str, ...]:
    """What git carries of a run: the lock (which DVC hashes each stage's outputs had), the
    outputs that are `cache: false` (metrics, plots, the report, the training curves) and
    the remote's address."""
    from invprop.workspace import PRETRAIN, REPORTS_DIR  # numpy and friends: on use only

    return ("dvc.lock", str(REPORTS_DIR), str(PRETRAIN.curves.parent), ".dvc/config")


def _run(command: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=root, capture_output=True, text=True)


def _dvc(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "dvc", *args], root)


def _json_of(result: subprocess.CompletedProcess[str], what: str) -> object:
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        raise InvpropError(f"{what} failed: {said}")
    return json.loads(result.stdout or "{}")


def share_problems(root: str | Path = ".") -> list[str]:
    """One line per step still to take before the results of `root` can be shared: the
    pipeline up to date, git's half committed, DVC's half in the default remote."""
    root = Path(root)
    if _run(["git", "rev-parse", "--is-inside-work-tree"], root).returncode != 0:
        raise InvpropError(f"{root.resolve()} is not a git repository; results travel with git")
    problems = []
    changed = _json_of(_dvc(["status", "--json"], root), "dvc status")
    if changed:
        problems.append(
            f"the pipeline is not up to date ({', '.join(sorted(changed))}): run dvc repro"
        )
    carried = git_paths()
    dirty = _run(["git", "status", "--porcelain", "--", *carried], root).stdout.splitlines()
    if dirty:
        paths = ", ".join(line[3:] for line in dirty[:5]) + (", ..." if len(dirty) > 5 else "")
        problems.append(
            f"not committed to git: {paths}: git add {' '.join(carried[:3])} && git commit"
        )
    default = _dvc(["remote", "default"], root)  # exit 1, "No default remote set", if none
    remote = default.stdout.strip() if default.returncode == 0 else ""
    if not remote:
        problems.append(
            "no default DVC remote for the artifacts: dvc remote add -d NAME URL "
            "(README: Sharing artifacts)"
        )
        return problems
    cloud = _json_of(_dvc(["status", "--cloud", "--json"], root), f"dvc status --cloud ({remote})")
    missing = [path for path, state in dict(cloud).items() if state != "deleted"]
    if missing:
        problems.append(f"{len(missing)} artifact files are not in DVC remote '{remote}': dvc push")
    return problems


def share(as_json: bool = JSON_OPTION) -> None:
    """Check that the results can be shared: the pipeline up to date, dvc.lock and the
    reports committed to git, and every artifact in the default DVC remote."""
    problems = share_problems()
    if as_json:
        print_json({"ready": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            typer.echo(f"not ready: {problem}", err=True)
    else:
        typer.echo("ready to share: git push, and a clone's dvc pull gets every artifact")
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `share` to the `invprop` app."""
    command(app, "share")(share)
