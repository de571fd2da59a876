"""The result tables: built once, shown by the report's markdown and by the `invprop` CLI.

A `Table` is plain data: a title, column names, rows of display-ready strings and notes.
`Table.markdown()` is what reports/report.md holds; `Table.renderable(width)` is what the
CLI prints, fitted to the terminal without splitting a word: each column is at least as
wide as its longest word, cells wrap at spaces and after the "/" and "." inside keys and
paths (never inside a word), and a table whose words cannot stand side by side in `width`
prints each row as a block of "column  value" lines instead.

The builders read the stage reports of a workspace (`StageReports`: reports/<name>.json,
parsed on first use), so `invprop metrics --table` shows exactly the report's tables.
Figures are rounded for reading here (`percent`, `readable`); the JSON files and every
`--json` output keep the full values.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invprop import names
from invprop.errors import InvpropError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from invprop.config import Config

__all__ = [
    "DASH",
    "THIS_RUN",
    "StageReports",
    "Table",
    "fit_widths",
    "headline_k",
    "percent",
    "pipeline_runs",
    "propagation_table",
    "purity_epoch_table",
    "readable",
    "results_table",
    "results_tables",
    "stage_times_table",
    "transfer_table",
    "wrap",
]

DASH = "–"
# (row name, key prefix in evaluate.json)
METHODS = (
    ("InvP", "invp"),
    *((label, name) for name, label in names.TRAINING_BASELINES.items()),
    ("Random init", "random_init"),
    ("Raw pixels", "pixels"),
)


# ---------------------------------------------------------------------------------------
# Numbers for reading


def percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal ("81.2"); a dash when absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return DASH
    return f"{100 * value:.1f}"


def readable(value: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits (whole numbers from
    1,000 up, with thousands separators), None as a dash, lists and mappings item by item."""
    if value is None:
        return DASH
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(readable(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {readable(v)}" for k, v in value.items()) + "}"
    return str(value)


def _number(value: Any, style: str) -> str:
    return style.format(value) if isinstance(value, int | float) else DASH


# ---------------------------------------------------------------------------------------
# The table, as markdown and for a terminal

# Where a word may break across lines: after a "/" (keys, paths) or after a "." that
# joins two names (evaluate.baselines.random_init), never inside a number or a name.
_BREAK = re.compile(r"(?<=/)(?=.)|(?<=[A-Za-z_]\.)(?=[A-Za-z_])")
_INDENT = 2


def _cell_len(text: str) -> int:
    from rich.cells import cell_len  # terminal cells: a wide character takes two

    return cell_len(text)


def _pieces(text: str) -> list[str]:
    return [piece for word in text.split() for piece in _BREAK.split(word)]


def wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` terminal cells, broken at spaces and after the
    "/" and "." inside keys; a piece wider than `width` keeps a line of its own."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            for i, piece in enumerate(_BREAK.split(word)):
                glue = " " if i == 0 and line else ""
                if line and _cell_len(line + glue + piece) > width:
                    lines.append(line)
                    line = piece
                else:
                    line += glue + piece
        lines.append(line)
    return lines


def fit_widths(
    columns: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> list[int] | None:
    """Column widths (in terminal cells) that fit a boxed table into `width` with every
    word whole, or None when even the longest words cannot stand side by side.

    Each column starts as wide as its longest word; the rest of the width goes, step by
    step, where it shortens the table most for the width it costs (then where it unwraps
    the most lines), so a column of long keys widens before one long note does.
    """
    cells = [[columns[i], *(row[i] for row in rows)] for i in range(len(columns))]
    natural = [max(_cell_len(line) for c in col for line in c.split("\n")) for col in cells]
    shortest = [max((_cell_len(p) for c in col for p in _pieces(c)), default=0) for col in cells]
    room = width - (3 * len(columns) + 1)  # a border and one space of padding each side
    if sum(natural) <= room:
        return natural
    if sum(shortest) > room:
        return None

    @functools.cache
    def lines(column: int, w: int) -> tuple[int, ...]:
        return tuple(len(wrap(cell, w)) for cell in cells[column])

    def cost(ws: Sequence[int]) -> tuple[int, int]:
        per_column = [lines(i, w) for i, w in enumerate(ws)]
        return sum(map(max, zip(*per_column, strict=True))), sum(map(sum, per_column))

    widths = list(shortest)
    while (spare := room - sum(widths)) > 0:
        height, total = cost(widths)
        best: tuple[float, int, int] | None = None  # (gain per cell of width, column, cells)
        for i in range(len(widths)):
            for extra in range(1, min(spare, natural[i] - widths[i]) + 1):
                trial = [*widths[:i], widths[i] + extra, *widths[i + 1 :]]
                new_height, new_total = cost(trial)
                gain = ((height - new_height) * 1000 + total - new_total) / extra
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, i, extra)
        if best is None:
            break
        widths[best[1]] += best[2]
    return widths


@dataclass(frozen=True)
class Table:
    """A titled table of display-ready strings (markdown in the report, rich in the CLI)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

        out = [f"**{self.title}**", "", line(self.columns), line(["---"] * len(self.columns))]
        out += [line(row) for row in self.rows]
        if self.notes:
            out += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
        }

    def renderable(self, width: int) -> RenderableType:
        """The table for a terminal `width` cells wide: title, box of rows (or one block per
        row when the words cannot stand side by side), notes; no word split."""
        from rich import box
        from rich.console import Group
        from rich.table import Table as RichTable
        from rich.text import Text

        parts: list[RenderableType] = [
            Text("\n".join(wrap(self.title, width)), style="table.title")
        ]
        widths = fit_widths(self.columns, self.rows, width)
        if widths is None:
            parts.append(Text("\n".join(self._blocks(width))))
        else:
            # Text, not str: a cell such as "[final, epoch_0001]" is not rich markup.
            grid = RichTable(box=box.HEAVY_HEAD)
            for name, w in zip(self.columns, widths, strict=True):
                grid.add_column(Text("\n".join(wrap(name, w))), width=w, no_wrap=True)
            for row in self.rows:
                cells = zip(row, widths, strict=True)
                grid.add_row(*(Text("\n".join(wrap(cell, w))) for cell, w in cells))
            parts.append(grid)
        for note in self.notes:
            parts.append(
                Text("\n".join(" " * _INDENT + line for line in wrap(note, width - _INDENT)))
            )
        return Group(*parts)

    def _blocks(self, width: int) -> list[str]:
        """Each row as lines of "column  value", rows apart by a blank line."""
        label = min(max(_cell_len(c) for c in self.columns), width // 3)
        lines: list[str] = []
        for row in self.rows:
            if lines:
                lines.append("")
            for name, value in zip(self.columns, row, strict=True):
                names = wrap(name, label)
                values = wrap(value, width - 2 * _INDENT - label)
                for i in range(max(len(names), len(values))):
                    left = names[i] if i < len(names) else ""
                    right = values[i] if i < len(values) else ""
                    pad = " " * (label - _cell_len(left))
                    lines.append(f"{' ' * _INDENT}{left}{pad}{' ' * _INDENT}{right}".rstrip())
        return lines


# ---------------------------------------------------------------------------------------
# Stage reports


class StageReports:
    """The stage reports of a workspace, reports/<name>.json (evaluate, embed_final, ...),
    each parsed on first use. `folder` is the reports folder (invprop.workspace.REPORTS_DIR)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._read: dict[str, dict[str, Any] | None] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        """The report `name`, or None when the file does not exist."""
        if name not in self._read:
            path = self.path(name)
            data = None
            if path.is_file():
                from invprop.io import read_json  # numpy: not for a table's import

                data = read_json(path, "stage report")
                if not isinstance(data, dict):
                    raise InvpropError(
                        f"{path} must hold a JSON object; rerun the stage that writes it"
                    )
            self._read[name] = data
        return self._read[name]

    def require(self, name: str) -> dict[str, Any]:
        """The report of stage `name`, or a one-line error naming the stage to run."""
        data = self.get(name)
        if data is None:
            raise InvpropError(
                f"{self.path(name)} not found; run the {name} stage first (dvc repro {name}, "
                f"or invprop stage {name})"
            )
        return data


def pipeline_runs(cfg: Config) -> list[tuple[str, str]]:
    """(stage run as dvc.yaml names it, the name of its report) of every stage run of the
    pipeline `cfg` describes, in pipeline order, e.g. ("embed@final", "embed_final")."""
    runs = [("prepare", f"prepare_{cfg.data.name}")]
    runs += [(f"prepare_target@{target}", f"prepare_{target}") for target in cfg.transfer.targets]
    runs += [("pretrain", "pretrain"), *((name, name) for name in names.TRAINING_BASELINES)]
    for stage in ("embed", "graph", "propagate"):
        runs += [(f"{stage}@{tag}", f"{stage}_{tag}") for tag in cfg.embed.tags]
    return runs + [(name, name) for name in ("evaluate", "transfer", "report")]


# ---------------------------------------------------------------------------------------
# The report's tables


def headline_k(metrics: dict[str, Any]) -> int | None:
    """K of the headline kNN: 200 (the paper's) when evaluated, else the largest K present."""
    found = {
        int(m.group(1))
        for key in metrics
        if (m := re.fullmatch(r"[^/]+/knn_(?:clean/[^/]+|bank)/k(\d+)/top1", key))
    }
    found |= {
        int(m.group(1)) for key in metrics if (m := re.fullmatch(r"pixels/knn/k(\d+)/top1", key))
    }
    if not found:
        return None
    return 200 if 200 in found else max(found)


def results_table(reports: StageReports, k: int | None = None, split: str = "test") -> Table:
    """InvP against its baselines from evaluate.json: test top-1 (%) of weighted kNN on the
    clean train set (head embeddings and backbone features), kNN on the memory bank and the
    linear probe. A baseline that did not run shows its status ("not run (...)").
    `split` "val": the same figures on the held-out validation part of train."""
    metrics = reports.require("evaluate")
    if split == "val":
        metrics = _validation_view(metrics)
    k = k or headline_k(metrics)
    kk = "K" if k is None else f"K={k}"
    columns = [
        "method",
        f"kNN {kk} embeddings",
        f"kNN {kk} features",
        f"kNN {kk} bank",
        "linear probe",
    ]
    rows = []
    for name, prefix in METHODS:
        status = metrics.get(f"{prefix}/status")
        keys = [
            f"{prefix}/knn_clean/embeddings/k{k}/top1",
            f"{prefix}/knn_clean/features/k{k}/top1",
            f"{prefix}/knn_bank/k{k}/top1",
            f"{prefix}/linear/top1",
        ]
        if prefix == "pixels":  # the pixel vector is the representation: one kNN
            keys[1] = f"pixels/knn/k{k}/top1"
        values = [metrics.get(key) for key in keys]
        if status is not None:
            rows.append([name, str(status), DASH, DASH, DASH])
        elif all(v is None for v in values):
            rows.append(
                [name, f"not run (no {prefix}/ figures in evaluate.json)", DASH, DASH, DASH]
            )
        else:
            rows.append([name, *(percent(v) for v in values)])
    what = "Test" if split == "test" else "Validation"
    notes = [f"{what} top-1 accuracy in percent; weighted kNN on L2-normalised vectors."]
    if "invp/epoch" in metrics:
        notes.append(f"InvP is the checkpoint of epoch {metrics['invp/epoch']}.")
    if split == "val":
        notes.append(
            "Validation: a class-stratified evaluate.val_fraction of the labelled train images "
            "(drawn with data.seed), scored against the rest of train; choices look here."
        )
    elif "evaluate/test_images" in metrics:
        notes.append(
            f"{metrics['evaluate/train_images']} train / {metrics['evaluate/test_images']} test "
            f"images, {metrics.get('evaluate/num_classes', '?')} classes."
        )
    notes.append("Raw pixels: kNN on centred pixels (features column), L-BFGS probe on pixels.")
    title = "test" if split == "test" else "validation part of train"
    return Table(f"Representation quality ({title}, top-1, %)", columns, rows, notes)


def _validation_view(metrics: dict[str, Any]) -> dict[str, Any]:
    """evaluate.json with each representation's validation figures ({prefix}/val/...) under
    the keys of its test figures; statuses and the other keys kept as they are."""
    prefixes = {prefix for _, prefix in METHODS}
    view: dict[str, Any] = {}
    for key, value in metrics.items():
        prefix, _, rest = key.partition("/")
        if rest.startswith("val/"):
            view[f"{prefix}/{rest[4:]}"] = value
        elif prefix not in prefixes or rest in ("status", "epoch"):
            view[key] = value
    return view


_TRANSFER_KEY = re.compile(r"(random_init/)?(semi|transfer)/([^/]+)/([^/]+)/(top1|status)")
_PROTOCOL_ORDER = ("linear", "finetune", "scratch")


def _setting_label(kind: str, name: str) -> str:
    if kind == "semi":
        match = re.fullmatch(r"(\d+(?:\.\d+)?)pct", name)
        return f"semi-supervised, {match.group(1)}% labels" if match else f"semi-supervised, {name}"
    return f"transfer to {name}"


def _setting_order(kind: str, name: str) -> tuple[int, float, str]:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)pct", name)
    return (0 if kind == "semi" else 1, float(match.group(1)) if match else 0.0, name)


def transfer_table(reports: StageReports) -> Table:
    """Semi-supervised and transfer top-1 (%) from transfer.json (keys like
    `semi/1pct/finetune/top1`, `transfer/digits/linear/top1`, and the same under
    `random_init/` for the baseline): one row per setting, one column per protocol and
    network; a single "not run" row when the file is absent."""
    data = reports.get("transfer")
    path = reports.path("transfer")
    title = "Semi-supervised fine-tuning and transfer (test top-1, %)"
    if data is None:
        return Table(title, ["setting", "result"], [["all", f"not run ({path} not found)"]])
    cells: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    columns: set[tuple[str, str]] = set()
    for key, value in data.items():
        match = _TRANSFER_KEY.fullmatch(key)
        if not match:
            continue
        baseline, kind, name, protocol, what = match.groups()
        column = (protocol, "random init" if baseline else "InvP")
        row = cells.setdefault((kind, name), {})
        if what == "status" and column in row:
            continue  # a figure beats a status
        row[column] = percent(value) if what == "top1" else str(value)
        columns.add(column)
    if not cells:
        return Table(
            title,
            ["setting", "result"],
            [["all", f"not run (no semi/... or transfer/... top-1 figures in {path})"]],
        )
    order = sorted(
        columns,
        key=lambda c: (
            _PROTOCOL_ORDER.index(c[0]) if c[0] in _PROTOCOL_ORDER else 99,
            c[0],
            c[1] != "InvP",
        ),
    )
    rows = [
        [_setting_label(*setting), *(cells[setting].get(c, DASH) for c in order)]
        for setting in sorted(cells, key=lambda s: _setting_order(*s))
    ]
    notes = []
    if "random_init/status" in data:
        notes.append(f"Random init baseline: {data['random_init/status']}.")
    return Table(title, ["setting", *(f"{p} ({net})" for p, net in order)], rows, notes)


THIS_RUN = "this run"


def stage_times_table(
    reports: StageReports, runs: Iterable[tuple[str, str]], running: str | None = None
) -> Table:
    """Wall time, peak memory and device of every stage run in `runs` ((stage, report name),
    see `pipeline_runs`), from the footprint each run records in its report; "not run" when
    the report is absent. `running`: the stage drawing this table, which has no footprint
    yet ("this run")."""
    rows = []
    for stage, name in runs:
        if stage == running:
            rows.append([stage, THIS_RUN, DASH, DASH])
            continue
        data = reports.get(name)
        if data is None:
            rows.append([stage, "not run", DASH, DASH])
            continue
        measured = data.get("footprint", {})
        device = data.get("device", data.get(f"{stage.split('@')[0]}/device"))
        rows.append(
            [
                stage,
                _number(measured.get("wall_seconds"), "{:.1f}"),
                _number(measured.get("peak_rss_mb"), "{:,.0f}"),
                DASH if device is None else str(device),
            ]
        )
    notes = [
        "Stages as dvc.yaml names them; wall time and peak memory of each run, from the "
        f"footprint its report in {reports.folder}/ records."
    ]
    return Table("Stage times", ["stage", "seconds", "peak memory (MB)", "device"], rows, notes)


def results_tables(reports: StageReports, cfg: Config, running: str | None = None) -> list[Table]:
    """Every table of the report: results on test (and on the validation part of train,
    when evaluate scored it), semi-supervised / transfer, stage times of `cfg`'s pipeline."""
    results = [results_table(reports)]
    if any("/val/" in key for key in reports.require("evaluate")):
        results.append(results_table(reports, split="val"))
    times = stage_times_table(reports, pipeline_runs(cfg), running)
    return [*results, transfer_table(reports), times]


# ---------------------------------------------------------------------------------------
# Propagation


def propagation_table(stats: dict[str, Any], graph: dict[str, Any] | None = None) -> Table:
    """Mean size and label purity (%) of the propagated positives per hop, from the
    propagate stage's stats.json (and the graph stage's report for neighbour purity)."""
    rows = []
    for row in stats["per_hop"]:
        c, new = row["cumulative"], row["new"]
        rows.append(
            [
                str(row["hop"]),
                f"{c['size']:.1f}",
                percent(c["purity"]),
                percent(c["hard_purity"]),
                percent(c["easy_purity"]),
                f"{new['size']:.1f}",
                percent(new["purity"]),
            ]
        )
    tag = stats.get("tag", "final")
    notes = [
        f"Exact BFS over the {tag} graph's first k = {stats['k']} neighbours; hard / easy: the "
        f"P = {stats['n_pos']} least / most similar positives within the hop.",
        f"Chance purity (two random train images share a class): "
        f"{percent(stats.get('chance_purity'))}%.",
    ]
    if graph is not None:
        notes.append(
            f"Graph neighbour purity: {percent(graph.get('purity_at_1'))}% at k = 1, "
            f"{percent(graph.get('purity_at_k'))}% at k = {graph.get('k')}."
        )
    return Table(
        f"Propagated positives of the {tag} embeddings",
        [
            "hop",
            "mean size",
            "purity (%)",
            "hard purity (%)",
            "easy purity (%)",
            "new size",
            "new purity (%)",
        ],
        rows,
        notes,
    )


def purity_epoch_table(stats: dict[str, Any]) -> Table:
    """Purity (%) of each checkpoint's bank positives within propagate.hops hops, and how
    much of its neighbour table was filled, by epoch."""
    rows = [
        [
            str(row["tag"]),
            str(row["epoch"]),
            str(row["k"]),
            percent(row["coverage"]),
            percent(row["purity"]["all"]),
            percent(row["purity"]["hard"]),
            percent(row["purity"]["easy"]),
        ]
        for row in sorted(stats.get("epochs") or [], key=lambda row: row["epoch"])
    ]
    return Table(
        f"Positive purity within {stats['hops']} hops of each checkpoint's bank table",
        [
            "checkpoint",
            "epoch",
            "k",
            "table coverage (%)",
            "purity (%)",
            "hard purity (%)",
            "easy purity (%)",
        ],
        rows,
    )
