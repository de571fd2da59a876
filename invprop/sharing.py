"""Whether a workspace's results are ready to leave this machine, and what is missing.

Results travel in two halves (README, "Sharing artifacts"): git carries the code, params,
`dvc.lock` and the small reports DVC does not cache (reports/, dvclive/); the DVC remote
carries every cached artifact. A clone that gets both is up to date and reruns nothing; a
clone that misses either would retrain. `share_problems` names each missing step, with
its fix, so that `invprop share` (or a git pre-push hook running it) can stop a push that
would leave a half.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from invprop.errors import InvpropError

__all__ = ["GIT_PATHS", "share_problems"]

# What git carries of a run: the lock (which DVC hashes each stage's outputs had) and the
# outputs that are `cache: false` (metrics, plots, the report, the explorer page).
GIT_PATHS = ("dvc.lock", "reports", "dvclive", ".dvc/config")


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
    dirty = _run(["git", "status", "--porcelain", "--", *GIT_PATHS], root).stdout.splitlines()
    if dirty:
        paths = ", ".join(line[3:] for line in dirty[:5]) + (", ..." if len(dirty) > 5 else "")
        problems.append(
            f"not committed to git: {paths}: git add {' '.join(GIT_PATHS[:3])} && git commit"
        )
    remote = _dvc(["remote", "default"], root).stdout.strip()
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
