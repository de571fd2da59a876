"""`invprop share`: are this workspace's results ready to leave the machine?

    invprop share          # one line per step still to take, exit status 1; else "ready"
    invprop share --json

Run it before `git push`, or let git run it (README, "Sharing artifacts"):
    printf '#!/bin/sh\\nexec invprop share\\n' > .git/hooks/pre-push && chmod +x .git/hooks/pre-push
"""

from __future__ import annotations

import typer

from invprop.cli.common import JSON_OPTION, command, print_json


def share(as_json: bool = JSON_OPTION) -> None:
    """Check that the results can be shared: the pipeline up to date, dvc.lock and the
    reports committed to git, and every artifact in the default DVC remote."""
    from invprop.sharing import share_problems

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
