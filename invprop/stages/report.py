"""The report stage: `reports/report.md` and `reports/figures/*.png` from every stage's outputs.

Reads (all paths relative to the repository root; the stage checks every required input
before drawing anything and names the stage to run when one is missing):

    reports/evaluate.json                   required (evaluate): the results table
    reports/transfer.json                   optional (transfer): semi-supervised / transfer rows
    reports/{prepare_<data.name>,pretrain,embed_final,graph_final,propagate_final}.json
                                            optional: stage times, graph purity
    dvclive/pretrain/plots/metrics/*.tsv    required (pretrain): loss, loss_instance,
                                            loss_invariance, lr; knn_bank_top1 optional
    artifacts/embeddings/final/             required (embed): test embeddings for the map
    artifacts/graph/final/                  required (graph): neighbours for the grids
    artifacts/propagation/final/stats.json  required (propagate): purity per hop and epoch
    data/prepared/<data.name>/              required (prepare): images and class names

Writes, atomically, `reports/figures/` (one folder, replaced whole) and then
`reports/report.md`, which links every figure with a one-line caption. Optional inputs that
are absent (no transfer.json, no snapshots, a baseline switched off, the kNN monitor off)
appear as "not run", never as made-up numbers.

Deterministic: the markdown holds no timestamps and PNGs are saved without the matplotlib
version tag, the anchors of the neighbour grids and the points of the maps are chosen with
`cfg.seed`, and t-SNE runs on one thread (also the faster choice on a shared CPU), so the same
inputs give byte-identical files.

The tables are plain data (`Table`): `results_tables(reports_dir)` serves the markdown here
and can serve `invprop metrics` too.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from invprop.config import Config
from invprop.errors import InvpropError
from invprop.io import atomic_dir, atomic_file, read_json
from invprop.neighbourhood import draw_grid, inspect_anchor
from invprop.workspace import (
    EMBEDDINGS_FILE,
    FIGURES_DIR,
    GRAPH_FILE,
    META_FILE,
    PRETRAIN,
    REPORT_MD,
    REPORTS_DIR,
    STATS_FILE,
    embeddings_dir,
    graph_dir,
    load_checked_graph,
    load_embeddings,
    load_propagation_stats,
    prepared_dataset,
    prepared_dir,
    prepared_if_present,
    propagation_dir,
    stage_report,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Table",
    "build_report",
    "choose_anchors",
    "percent",
    "read_curves",
    "results_table",
    "results_tables",
    "run",
    "stage_times_table",
    "transfer_table",
]

TAG = "final"
DASH = "–"
# (row name, key prefix in evaluate.json)
METHODS = (
    ("InvP", "invp"),
    ("Instance discrimination", "instance_discrimination"),
    ("Random init", "random_init"),
    ("Raw pixels", "pixels"),
)
# Stage reports whose `seconds` the stage-times table shows, in pipeline order.
STAGE_REPORTS = ("pretrain", "embed_final", "graph_final", "propagate_final")
LOSSES = ("loss", "loss_instance", "loss_invariance")
DPI = 110
# No "Software" tag (it names the matplotlib version): PNG bytes depend on pixels only.
PNG_METADATA: dict[str, Any] = {"Software": None}
GRID_SHOW = 8


def log(message: str) -> None:
    print(f"[report] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Tables


def percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal ("81.2"); a dash when absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return DASH
    return f"{100 * value:.1f}"


@dataclass(frozen=True)
class Table:
    """A titled table of display-ready strings (the markdown here; a rich table in the CLI)."""

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


def _read_optional(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_json(path, "report")
    if not isinstance(data, dict):
        raise InvpropError(f"{path} must hold a JSON object; rerun the stage that writes it")
    return data


def _require_evaluate(reports_dir: Path) -> dict[str, Any]:
    path = stage_report("evaluate", reports_dir)
    data = _read_optional(path)
    if data is None:
        raise InvpropError(
            f"{path} not found; run the evaluate stage first (dvc repro evaluate, "
            "or invprop stage evaluate)"
        )
    return data


def _knn_k(metrics: dict[str, Any]) -> int | None:
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


def results_table(reports_dir: str | Path = REPORTS_DIR, k: int | None = None) -> Table:
    """InvP against its baselines from evaluate.json: test top-1 (%) of weighted kNN on the
    clean train set (head embeddings and backbone features), kNN on the memory bank and the
    linear probe. A baseline that did not run shows its status ("not run (...)")."""
    metrics = _require_evaluate(Path(reports_dir))
    k = k or _knn_k(metrics)
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
    notes = ["Test top-1 accuracy in percent; weighted kNN on L2-normalised vectors."]
    if "invp/epoch" in metrics:
        notes.append(f"InvP is the checkpoint of epoch {metrics['invp/epoch']}.")
    if "evaluate/test_images" in metrics:
        notes.append(
            f"{metrics['evaluate/train_images']} train / {metrics['evaluate/test_images']} test "
            f"images, {metrics.get('evaluate/num_classes', '?')} classes."
        )
    notes.append("Raw pixels: kNN on centred pixels (features column), L-BFGS probe on pixels.")
    return Table("Representation quality (test top-1, %)", columns, rows, notes)


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


def transfer_table(reports_dir: str | Path = REPORTS_DIR) -> Table:
    """Semi-supervised and transfer top-1 (%) from transfer.json (keys like
    `semi/1pct/finetune/top1`, `transfer/digits/linear/top1`, and the same under
    `random_init/` for the baseline): one row per setting, one column per protocol and
    network; a single "not run" row when the file is absent."""
    path = stage_report("transfer", reports_dir)
    data = _read_optional(path)
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


def stage_times_table(reports_dir: str | Path = REPORTS_DIR, dataset: str | None = None) -> Table:
    """Wall time and peak memory of each stage that leads to the final results, from the
    footprint each stage run records in its reports/*.json. `dataset`: the prepared dataset
    whose report to show (None: every prepare_*.json)."""
    reports_dir = Path(reports_dir)
    if dataset is None:
        names = sorted(p.stem for p in reports_dir.glob("prepare_*.json"))
    else:
        names = [f"prepare_{dataset}"]
    names += [*STAGE_REPORTS, "evaluate", "transfer"]
    rows = []
    for name in names:
        stage = name.split("_")[0]
        data = _read_optional(stage_report(name, reports_dir))
        if data is None:
            rows.append([stage, f"{name}.json", "not run", DASH, DASH])
            continue
        measured = data.get("footprint", {})
        device = data.get("device", data.get(f"{stage}/device"))
        rows.append(
            [
                stage,
                f"{name}.json",
                _number(measured.get("wall_seconds"), "{:.1f}"),
                _number(measured.get("peak_rss_mb"), "{:,.0f}"),
                DASH if device is None else str(device),
            ]
        )
    return Table("Stage times", ["stage", "report", "seconds", "peak memory (MB)", "device"], rows)


def _number(value: Any, style: str) -> str:
    return style.format(value) if isinstance(value, int | float) else DASH


def results_tables(
    reports_dir: str | Path = REPORTS_DIR, dataset: str | None = None
) -> list[Table]:
    """Every table of the report: results, semi-supervised / transfer, stage times."""
    return [
        results_table(reports_dir),
        transfer_table(reports_dir),
        stage_times_table(reports_dir, dataset),
    ]


# ---------------------------------------------------------------------------------------
# Inputs


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise InvpropError(
            f"{path} not found; run the {stage} stage first (dvc repro {stage}, "
            f"or invprop stage {stage.split('@')[0]})"
        )
    return path


def read_curves(folder: str | Path = PRETRAIN.metrics) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """dvclive's per-epoch TSVs as {metric: (epochs, values)}.

    Pretrain logs epoch e at dvclive step e - 1 (one `next_step` per epoch, replayed on
    resume), so epoch = step + 1; a repeated step keeps its last value.
    """
    curves = {}
    for path in sorted(Path(folder).glob("*.tsv")):
        name = path.stem
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or "step" not in rows[0] or name not in rows[0]:
            raise InvpropError(
                f"{path} is not a dvclive curve (needs columns step and {name}); "
                "rerun the pretrain stage"
            )
        try:
            by_step = {int(row["step"]): float(row[name]) for row in rows}
        except (TypeError, ValueError) as exc:
            raise InvpropError(f"{path}: unreadable row ({exc}); rerun the pretrain stage") from exc
        steps = sorted(by_step)
        curves[name] = (np.array(steps) + 1, np.array([by_step[s] for s in steps]))
    return curves


def choose_anchors(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """`count` train indices for the neighbour grids, seeded and class-balanced: classes
    evenly spaced over the labelled ones (cycling when count > classes), one random image of
    each; seeded random images when nothing is labelled."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    count = min(count, labels.size)
    present = np.unique(labels[labels >= 0])
    if present.size == 0:
        return sorted(int(i) for i in rng.choice(labels.size, count, replace=False))
    chosen: list[int] = []
    for i in range(count):
        cls = (
            present[(i * present.size) // count]
            if count <= present.size
            else present[i % present.size]
        )
        pool = np.setdiff1d(np.flatnonzero(labels == cls), chosen)
        if pool.size == 0:
            pool = np.setdiff1d(np.arange(labels.size), chosen)
        chosen.append(int(rng.choice(pool)))
    return chosen


# ---------------------------------------------------------------------------------------
# Figures


def _pyplot() -> Any:
    # pyplot loads here, after the file-only Agg backend is chosen, not at import time
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3}
    )
    return plt


def _save(fig: Figure, path: Path) -> None:
    plt = _pyplot()

    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)


def _figure_line(name: str, alt: str, caption: str) -> list[str]:
    return [f"![{alt}](figures/{name})", "", f"*{caption}*", ""]


def _marker(n: int) -> str | None:
    return "o" if n <= 30 else None


def _integer_x(*axes: Any) -> None:
    """Whole-number ticks on the x axis (epochs, hops)."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_training_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    """Losses (total, instance, invariance) and the learning rate against epoch."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name in LOSSES:
        if name in curves:
            x, y = curves[name]
            label = "loss (total)" if name == "loss" else name
            left.plot(x, y, marker=_marker(len(x)), label=label)
    left.set(title="Training losses", xlabel="epoch", ylabel="mean loss per batch")
    left.legend()
    x, y = curves["lr"]
    right.plot(x, y, marker=_marker(len(x)), color="tab:purple", label="lr (last step of epoch)")
    right.set(title="Learning rate", xlabel="epoch", ylabel="learning rate")
    right.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    right.legend()
    _integer_x(left, right)
    _save(fig, out)


def plot_knn_monitor(
    curve: tuple[np.ndarray, np.ndarray], final: float | None, final_label: str, out: Path
) -> None:
    """The pretrain loop's kNN monitor (on the memory bank) against epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    x, y = curve
    ax.plot(x, 100 * y, marker=_marker(len(x)), label="kNN monitor on the bank (pretrain)")
    if final is not None:
        ax.axhline(100 * final, color="tab:gray", linestyle="--", label=final_label)
    ax.set(title="kNN accuracy during pretraining", xlabel="epoch", ylabel="test top-1 (%)")
    ax.legend(loc="lower right")
    _integer_x(ax)
    _save(fig, out)


# colour and marker per positive kind (hard and easy often coincide at early hops)
_KIND_STYLE = {"all": ("tab:blue", "o"), "hard": ("tab:red", "v"), "easy": ("tab:green", "^")}


def plot_purity_hop(stats: dict[str, Any], out: Path) -> None:
    """Positive label purity and mean set size against hop (cumulative all / hard / easy,
    and the nodes new at each hop)."""
    plt = _pyplot()
    per_hop = stats["per_hop"]
    hops = [row["hop"] for row in per_hop]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    new_style = {
        "marker": "s",
        "fillstyle": "none",
        "markersize": 9,
        "linestyle": "--",
        "color": "tab:orange",
        "label": "new at hop (all)",
        "zorder": 1,
    }
    left.plot(hops, _pct(row["new"]["purity"] for row in per_hop), **new_style)
    right.plot(hops, [row["new"]["size"] for row in per_hop], **new_style)
    for kind, (color, marker) in _KIND_STYLE.items():
        key = "purity" if kind == "all" else f"{kind}_purity"
        values = [row["cumulative"][key] for row in per_hop]
        left.plot(hops, _pct(values), marker=marker, color=color, label=f"{kind}, within hop")
        key = "size" if kind == "all" else f"{kind}_size"
        sizes = [row["cumulative"][key] for row in per_hop]
        right.plot(hops, sizes, marker=marker, color=color, label=f"{kind}, within hop")
    if stats.get("chance_purity") is not None:
        left.axhline(100 * stats["chance_purity"], color="tab:gray", linestyle=":", label="chance")
    title = f"k={stats['k']}, P={stats['n_pos']}"
    left.set(
        title=f"Positive purity against hop ({title})",
        xlabel="hop",
        ylabel="same label as anchor (%)",
        xticks=hops,
    )
    left.legend(fontsize=9)
    right.set(title="Mean positive-set size", xlabel="hop", ylabel="images per anchor", xticks=hops)
    if max((row["cumulative"]["size"] for row in per_hop), default=0) > 50:
        right.set_yscale("log")
    right.legend(fontsize=9)
    _save(fig, out)


def _pct(values: Iterable[float | None]) -> list[float]:
    return [np.nan if v is None else 100 * v for v in values]


def plot_purity_epoch(epochs: list[dict[str, Any]], hops: int, out: Path) -> None:
    """Last-hop purity of all / hard / easy positives of each snapshot's bank, and how much
    of the bank's neighbour table was filled, against epoch."""
    plt = _pyplot()
    x = [row["epoch"] for row in epochs]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for kind, (color, marker) in _KIND_STYLE.items():
        values = _pct(row["purity"][kind] for row in epochs)
        ax.plot(x, values, marker=marker, color=color, label=f"{kind} positives")
    ax.plot(
        x,
        _pct(row["coverage"] for row in epochs),
        marker="^",
        linestyle=":",
        color="tab:gray",
        label="table coverage",
    )
    ax.set(
        title=f"Positive purity within {hops} hops, per checkpoint",
        xlabel="epoch",
        ylabel="purity, coverage (%)",
        ylim=(0, 102),
    )
    ax.legend(loc="lower right", fontsize=9)
    _integer_x(ax)
    _save(fig, out)


def plot_map(
    points: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, out: Path
) -> None:
    """A 2-D scatter of `points` coloured by class, with a legend of class names."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 6.5), constrained_layout=True)
    present = [int(c) for c in np.unique(labels)]
    named = [c for c in present if c >= 0]
    cmap = plt.get_cmap("tab10" if len(named) <= 10 else "tab20" if len(named) <= 20 else "turbo")
    size = 6 if len(points) > 3000 else 12
    for i, cls in enumerate(present):
        at = labels == cls
        if cls < 0:
            color, name = "lightgray", "unlabelled"
        else:
            color = cmap(named.index(cls) / max(1, len(named) - 1)) if len(named) > 20 else cmap(i)
            name = classes[cls] if cls < len(classes) else str(cls)
        ax.scatter(points[at, 0], points[at, 1], s=size, color=color, alpha=0.75, label=name)
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    if len(present) <= 20:
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            markerscale=2,
            frameon=False,
            title="class",
        )
    _save(fig, out)


def _embedding_maps(
    vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], cfg: Config, folder: Path
) -> list[str]:
    """PCA and t-SNE maps of the same seeded subset of test embeddings; markdown lines."""
    n = vectors.shape[0]
    m = min(cfg.report.map_points, n)
    rng = np.random.default_rng(cfg.seed)
    subset = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
    x = vectors.astype(np.float64)
    lines = []
    # One thread: the BLAS and OpenMP sums then run in a fixed order (identical PNGs), and on
    # a shared CPU t-SNE runs faster on one thread than on two (8.6 s vs 36 s, 2,000 points).
    with threadpool_limits(1):
        pca = PCA(n_components=2, svd_solver="full").fit(x)
        flat = pca.transform(x[subset])
        var = 100 * pca.explained_variance_ratio_
        plot_map(
            flat,
            labels[subset],
            classes,
            f"PCA of {m} test embeddings (fitted on all {n}; "
            f"PC1 {var[0]:.1f}%, PC2 {var[1]:.1f}% of variance)",
            folder / "map_pca.png",
        )
        lines += _figure_line(
            "map_pca.png",
            "PCA map of the test embeddings",
            "PCA map: the linear view; classes that separate here are linearly separable "
            "in two directions, overlapping classes are the ones the linear probe confuses.",
        )
        if m >= 5:
            perplexity = float(min(30.0, (m - 1) / 3))
            tsne = TSNE(
                n_components=2,
                perplexity=perplexity,
                init="pca",
                learning_rate="auto",
                random_state=cfg.seed,
            )
            plot_map(
                tsne.fit_transform(x[subset].astype(np.float32)),
                labels[subset],
                classes,
                f"t-SNE of {m} test embeddings (perplexity {perplexity:g}, seed {cfg.seed})",
                folder / "map_tsne.png",
            )
            lines += _figure_line(
                "map_tsne.png",
                "t-SNE map of the test embeddings",
                "t-SNE map: local neighbourhoods; look for one compact island per class and "
                "which classes share islands (distances between islands mean little).",
            )
        else:
            lines += ["t-SNE map: not run (fewer than 5 test points).", ""]
    return lines


def _neighbour_grids(cfg: Config, labels: np.ndarray, folder: Path) -> list[str]:
    """One grid per anchor, drawn by `invprop graph neighbours`' own code; markdown lines."""
    graph, _, emb = load_checked_graph(TAG)
    prepared = prepared_if_present(emb.dataset)
    anchors = choose_anchors(labels, cfg.report.anchors, cfg.seed)
    lines = [
        f"Anchors: {', '.join(f'#{a}' for a in anchors)} (train images of evenly spaced "
        f"classes, chosen with seed {cfg.seed}). Rows: nearest neighbours in the final graph, the "
        f"positives new at each hop (spread over similarity), and the P = "
        f"{cfg.propagate.n_pos} hard positives; each image is titled with its class and "
        "similarity, framed green when its class is the anchor's and red when it is not.",
        "",
    ]
    for anchor in anchors:
        result = inspect_anchor(
            TAG, graph, emb, prepared, anchor, None, cfg.propagate, neighbours=True
        )
        name = f"neighbours_{anchor}.png"
        draw_grid(result, prepared, folder / name, GRID_SHOW, metadata=PNG_METADATA)
        lines += _figure_line(
            name,
            f"neighbours and positives of train image {anchor}",
            f"Image #{anchor}, class {result['class']}: red frames are other classes; look for "
            "how many creep in from hop to hop and among the hard positives.",
        )
    return lines


# ---------------------------------------------------------------------------------------
# The report


def _propagation_tables(stats: dict[str, Any], graph: dict[str, Any] | None) -> list[str]:
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
    notes = [
        f"Exact BFS over the final graph's first k = {stats['k']} neighbours; hard / easy: the "
        f"P = {stats['n_pos']} least / most similar positives within the hop.",
        f"Chance purity (two random train images share a class): "
        f"{percent(stats.get('chance_purity'))}%.",
    ]
    if graph is not None:
        notes.append(
            f"Graph neighbour purity: {percent(graph.get('purity_at_1'))}% at k = 1, "
            f"{percent(graph.get('purity_at_k'))}% at k = {graph.get('k')}."
        )
    table = Table(
        "Propagated positives of the final embeddings",
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
    return [table.markdown(), ""]


def _check_inputs(cfg: Config) -> dict[str, Path]:
    """Every required input, checked before any drawing starts."""
    paths = {
        "evaluate": _require(stage_report("evaluate"), "evaluate"),
        "curves": _require(PRETRAIN.metrics, "pretrain"),
        "embeddings": _require(embeddings_dir(TAG) / EMBEDDINGS_FILE, f"embed@{TAG}"),
        "graph": _require(graph_dir(TAG) / GRAPH_FILE, f"graph@{TAG}"),
        "propagation": _require(propagation_dir(TAG) / STATS_FILE, f"propagate@{TAG}"),
        "prepared": _require(prepared_dir(cfg.data.name) / META_FILE, "prepare"),
    }
    for name in ("loss", "lr"):
        _require(PRETRAIN.metrics / f"{name}.tsv", "pretrain")
    return paths


def build_report(cfg: Config, folder: Path) -> str:
    """Draw every figure into `folder` and return the markdown that links them."""
    paths = _check_inputs(cfg)
    evaluate = read_json(paths["evaluate"], "evaluate report")
    tables = results_tables(REPORTS_DIR, cfg.data.name)
    curves = read_curves(PRETRAIN.metrics)
    embeddings = load_embeddings(embeddings_dir(TAG))
    stats = load_propagation_stats(TAG)
    prepared = prepared_dataset(cfg.data.name)
    classes = prepared.classes
    graph_report = _read_optional(stage_report(f"graph_{TAG}"))
    pretrain = _read_optional(stage_report("pretrain")) or {}

    md = [f"# InvP report: {cfg.data.name}", ""]
    epochs = pretrain.get("epochs", evaluate.get("invp/epoch"))
    md += [
        f"Invariance Propagation pretrained on {cfg.data.name} "
        f"({len(classes)} classes) for {epochs if epochs is not None else '?'} epochs. "
        "Every number comes from the files under `reports/` and `artifacts/`; a part whose "
        'input is absent says "not run".',
        "",
        "## Results",
        "",
    ]
    for table in tables:
        md += [table.markdown(), ""]

    log("training curves")
    md += ["## Training", ""]
    plot_training_curves(curves, folder / "training_curves.png")
    md += _figure_line(
        "training_curves.png",
        "training losses and learning rate",
        "Losses and learning rate per epoch: the instance loss should fall steadily; the "
        "invariance loss joins at pretrain.ramp_epoch and should fall after it.",
    )
    if "knn_bank_top1" in curves:
        k = _knn_k(evaluate)
        final = evaluate.get(f"invp/knn_bank/k{k}/top1")
        plot_knn_monitor(
            curves["knn_bank_top1"],
            final,
            f"evaluate: kNN K={k} on the final bank",
            folder / "knn_monitor.png",
        )
        md += _figure_line(
            "knn_monitor.png",
            "kNN monitor against epoch",
            "kNN accuracy on the memory bank per epoch: it should rise and level off; a drop "
            "once the invariance loss is on points at impure positives.",
        )
    else:
        md += [
            f"kNN monitor against epoch: not run ({PRETRAIN.metrics}/knn_bank_top1.tsv not found; "
            "pretrain.monitor_knn is off).",
            "",
        ]

    log("propagation purity")
    md += ["## Propagated positives", ""]
    md += _propagation_tables(stats, graph_report)
    plot_purity_hop(stats, folder / "purity_hop.png")
    md += _figure_line(
        "purity_hop.png",
        "positive purity and set size against hop",
        "Purity falls with each hop as sets grow; hard positives (least similar) are less "
        "pure than easy ones: the gap is the price of harder positives.",
    )
    snapshots = [row for row in stats.get("epochs") or [] if row.get("tag") != TAG]
    if snapshots:
        rows = sorted(stats["epochs"], key=lambda row: row["epoch"])
        plot_purity_epoch(rows, stats["hops"], folder / "purity_epoch.png")
        md += _figure_line(
            "purity_epoch.png",
            "positive purity against epoch",
            "Purity of each checkpoint's bank positives: it should rise as training "
            "proceeds; coverage shows when the bank's neighbour table was filled.",
        )
    else:
        md += [
            "Positive purity against epoch: not run (no pretrain snapshots in "
            f"{paths['propagation']}; set pretrain.snapshot_epochs and rerun pretrain and "
            "propagate).",
            "",
        ]

    log(f"{cfg.report.anchors} neighbour grids")
    md += ["## Neighbours and positives of a few images", ""]
    md += _neighbour_grids(cfg, embeddings["train_labels"], folder)

    log(f"embedding maps of {min(cfg.report.map_points, len(embeddings['test_labels']))} points")
    md += ["## Map of the test embeddings", ""]
    md += _embedding_maps(
        embeddings["test_embeddings"], embeddings["test_labels"], classes, cfg, folder
    )
    return "\n".join(md).rstrip() + "\n"


def run(cfg: Config) -> None:
    """The report stage: write reports/figures/ and then reports/report.md (both atomic)."""
    _check_inputs(cfg)  # before anything is created
    with atomic_dir(FIGURES_DIR) as tmp:
        markdown = build_report(cfg, tmp)
        figures = sorted(p.name for p in tmp.glob("*.png"))
    with atomic_file(REPORT_MD) as tmp_md:
        tmp_md.write_text(markdown)
    log(f"{REPORT_MD} with {len(figures)} figures in {FIGURES_DIR}/")
