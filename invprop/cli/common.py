"""Helpers the CLI commands share: one-line user errors, `--json` or rich output, the
types of arguments with fixed choices (completed in the shell, refused with the list), and
the view of one image's neighbourhood that `graph neighbours` and `propagate show` print."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import typer

# Typer vendors click and re-exports only BadParameter of its exceptions.
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from invprop.config import Config, load_config
from invprop.errors import InvpropError

if TYPE_CHECKING:
    from invprop.tables import Table

F = TypeVar("F", bound=Callable[..., Any])

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
FORCE_OPTION = typer.Option(False, "--force", help="Overwrite --out if it exists.")
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
    `parser=Tags(name)` and `autocompletion=Tags(name).complete`."""

    def __init__(self, folder: str) -> None:
        self.folder_name = folder  # an invprop.workspace constant, looked up when needed

    @property
    def folder(self) -> Path:
        from invprop import workspace  # numpy and friends load only when a tag is read

        return getattr(workspace, self.folder_name)

    def present(self) -> list[str]:
        from invprop.workspace import TAG_PATTERN

        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if TAG_PATTERN.match(p.name))

    def __call__(self, value: str) -> str:
        from invprop.workspace import TAG_PATTERN

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


def tag_option(folder: str, what: str) -> Any:
    """A --tag option (default final) checked and completed against workspace.<folder>."""
    tags = Tags(folder)
    return typer.Option(
        "final",
        "--tag",
        parser=tags,
        autocompletion=tags.complete,
        help=f"{what} tag: final or epoch_NNNN.",
    )


TAG_OPTION = tag_option("GRAPH_DIR", "Graph")
PROPAGATION_TAG_OPTION = tag_option("PROPAGATION_DIR", "Propagation")
PARAMS_OPTION = typer.Option(
    Path("params.yaml"), "--params", help="Params file (propagate.k, hops, n_pos)."
)
SHOW_OPTION = typer.Option(8, "--show", min=1, max=32, help="Images per row of the PNG grid.")


def fail(exc: InvpropError) -> NoReturn:
    """Print a user mistake as one `error: ...` line and exit with status 2."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from None


def command(app: typer.Typer, name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register `fn` on `app`, printing InvpropError as one line and exiting with status 2."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except InvpropError as exc:
                fail(exc)

        app.command(name, **kwargs)(wrapped)
        return fn

    return register


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: Sequence[str] = (),
) -> None:
    """A table for people, fitted to the terminal's width without splitting a word
    (invprop.tables.Table.renderable); numbers are rounded for reading."""
    from invprop.tables import Table, readable

    cells = [[readable(value) for value in row] for row in rows]
    print_tables([Table(title, list(columns), cells, list(notes))])


def print_tables(tables: Sequence[Table]) -> None:
    """invprop.tables.Table objects, one after the other, at the terminal's width."""
    from rich.console import Console

    console = Console()
    for table in tables:
        console.print(table.renderable(console.width))


def propagate_params(params: Path) -> Any:
    return load_config(params).propagate if params.exists() else Config().propagate


def show_anchor(
    tag: str,
    index: int,
    hops: int | None,
    params: Path,
    out: Path | None,
    show: int,
    as_json: bool,
    neighbours: bool,
) -> None:
    """What `graph neighbours` and `propagate show` print (and draw, with --out)."""
    from invprop.figures import draw_grid
    from invprop.neighbourhood import inspect_anchor
    from invprop.workspace import load_checked_graph, prepared_if_present

    graph, _, emb = load_checked_graph(tag)
    prepared = prepared_if_present(emb.dataset)
    result = inspect_anchor(
        tag, graph, emb, prepared, index, hops, propagate_params(params), neighbours
    )
    if out is not None:
        draw_grid(result, prepared, out, show)
        result["png"] = str(out)
    if as_json:
        print_json(result)
        return
    title = (
        f"image {index} ({result['class']}), graph {tag}"
        if neighbours
        else (f"positives of image {index} ({result['class']}), {tag}")
    )
    print_anchor(result, title)
    if out is not None:
        typer.echo(f"wrote {out}")


def print_anchor(result: dict[str, Any], title: str) -> None:
    from invprop.tables import percent

    rows = []
    if "neighbours" in result:
        rows += [
            (
                f"neighbour {e['rank']}",
                e["id"],
                e["class"],
                e["sim"],
                "yes" if e["same_label"] else "no",
            )
            for e in result["neighbours"]
        ]
    for hop in result["positives_by_hop"]:
        purity = "n/a" if hop["purity"] is None else f"purity {percent(hop['purity'])}%"
        rows.append((f"hop {hop['hop']}", f"{hop['size']} new", "", "", purity))
    for kind in ("hard", "easy"):
        rows += [
            (f"{kind} {r + 1}", e["id"], e["class"], e["sim"], "yes" if e["same_label"] else "no")
            for r, e in enumerate(result[kind])
        ]
    print_table(title, ["kind", "id", "class", "sim", "same label"], rows)
