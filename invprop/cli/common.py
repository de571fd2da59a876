"""Helpers every CLI command shares: one-line user errors, `--json` or rich output, and the
types of arguments with fixed choices (completed in the shell, refused with the list)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer

# Typer vendors click and re-exports only BadParameter of its exceptions.
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from invprop.errors import InvpropError

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
# Arguments with fixed choices: Typer makes a Literal a click.Choice (shell completion,
# and a bad value refused with the list).
Split = Literal["train", "test"]
Device = Literal["auto", "cpu", "cuda"]


class OneLineErrors(TyperGroup):
    """The root command: usage errors (a bad choice, a missing argument) print as one
    `error: ...` line with status 2, like InvpropError, instead of a usage panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            # pydantic's wording for a bad choice; the rest of the message says it all
            message = exc.format_message().replace("Value error, ", "")
            typer.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


class Tags:
    """Artifact tags (final, epoch_NNNN) present under `folder` (relative to the working
    directory, as every artifact path): completed in the shell, anything else refused
    with the list (before any artifact exists, a tag of the wrong form). Pass
    `parser=Tags(folder)` and `autocompletion=Tags(folder).complete`."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def present(self) -> list[str]:
        from invprop.graph import TAG_PATTERN

        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if TAG_PATTERN.match(p.name))

    def __call__(self, value: str) -> str:
        from invprop.graph import TAG_PATTERN

        present = self.present()
        if present and value not in present:
            raise typer.BadParameter(
                f"{value!r} is not a tag of {self.folder}: {', '.join(present)}"
            )
        if not TAG_PATTERN.match(value):  # no artifacts yet: the form, at least
            raise typer.BadParameter(f"{value!r} is not 'final' or 'epoch_NNNN'")
        return value

    def complete(self, incomplete: str) -> list[str]:
        return [tag for tag in self.present() if tag.startswith(incomplete)]


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` on `app`, printing InvpropError as one line and exiting with status 2."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except InvpropError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None

        app.command(name, **kwargs)(wrapped)
        return fn

    return register


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table for people; numbers are formatted compactly."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)
