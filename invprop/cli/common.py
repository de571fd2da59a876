"""Helpers every CLI command shares: one-line user errors and `--json` or rich output."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from invprop.errors import InvpropError

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


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
