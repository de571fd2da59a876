"""Every figure invprop draws: the report's PNGs and the CLI's `--out` grids.

matplotlib is set up here only (`pyplot`: the file-only Agg backend, chosen before pyplot
first loads, and loaded on first use so that importing this module stays light), and
every PNG is written by `save`: atomically, and without the "Software" tag that names the
matplotlib version, so a PNG's bytes depend on its pixels only. The report's charts
(curves, purity, maps) draw in one style (`CHART_STYLE`, applied per chart, so the image
grids keep matplotlib's defaults); the same inputs give byte-identical files, with the
points of the maps and the anchors of the neighbour grids chosen with a seed and t-SNE on
one thread.

    report stage                        CLI
    plot_training_curves, plot_knn_monitor, plot_purity_hop, plot_purity_epoch,
    draw_embedding_maps, draw_grid      draw_grid (graph neighbours, propagate show --out)
                                        draw_class_grid (data grid --out)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from invprop.errors import InvpropError
from invprop.io import atomic_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from invprop.data import PreparedDataset
    from invprop.data.prepared import Split

__all__ = [
    "CHART_STYLE",
    "choose_anchors",
    "draw_class_grid",
    "draw_embedding_maps",
    "draw_grid",
    "plot_data",
    "plot_knn_monitor",
    "plot_map",
    "plot_purity_epoch",
    "plot_purity_hop",
    "plot_training_curves",
    "pyplot",
    "save",
]

DPI = 110  # the report's charts
GRID_DPI = 120  # neighbour grids
CHART_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3}
LOSSES = ("loss", "loss_instance", "loss_invariance")
# colour and marker per positive kind (hard and easy often coincide at early hops)
_KIND_STYLE = {"all": ("tab:blue", "o"), "hard": ("tab:red", "v"), "easy": ("tab:green", "^")}

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------------------
# Set-up


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot loads: no window, no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, out: Path, dpi: int = DPI) -> None:
    """Write `fig` to `out` as a PNG (atomically, no version tag) and close it."""
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)


def _chart(draw: F) -> F:
    """Draw (and save) in the charts' style; matplotlib's settings are restored after."""

    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Any:
        with pyplot().rc_context(CHART_STYLE):
            return draw(*args, **kwargs)

    return styled  # type: ignore[return-value]


def _marker(n: int) -> str | None:
    return "o" if n <= 30 else None


def _integer_x(*axes: Any) -> None:
    """Whole-number ticks on the x axis (epochs, hops)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _pct(values: Iterable[float | None]) -> list[float]:
    return [np.nan if v is None else 100 * v for v in values]


# ---------------------------------------------------------------------------------------
# Charts of the report


@_chart
def plot_training_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    """Losses (total, instance, invariance) and the learning rate against epoch."""
    plt = pyplot()
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
    save(fig, out)


@_chart
def plot_knn_monitor(
    curve: tuple[np.ndarray, np.ndarray], final: float | None, final_label: str, out: Path
) -> None:
    """The pretrain loop's kNN monitor (on the memory bank) against epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    x, y = curve
    ax.plot(x, 100 * y, marker=_marker(len(x)), label="kNN monitor on the bank (pretrain)")
    if final is not None:
        ax.axhline(100 * final, color="tab:gray", linestyle="--", label=final_label)
    ax.set(title="kNN accuracy during pretraining", xlabel="epoch", ylabel="test top-1 (%)")
    ax.legend(loc="lower right")
    _integer_x(ax)
    save(fig, out)


@_chart
def plot_purity_hop(stats: dict[str, Any], out: Path) -> None:
    """Positive label purity and mean set size against hop (cumulative all / hard / easy,
    and the nodes new at each hop)."""
    plt = pyplot()
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
    save(fig, out)


@_chart
def plot_purity_epoch(epochs: list[dict[str, Any]], hops: int, out: Path) -> None:
    """Last-hop purity of all / hard / easy positives of each snapshot's bank, and how much
    of the bank's neighbour table was filled, against epoch."""
    plt = pyplot()
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
    save(fig, out)


@_chart
def plot_map(
    points: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, out: Path
) -> None:
    """A 2-D scatter of `points` coloured by class, with a legend of class names."""
    plt = pyplot()
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
    save(fig, out)


def draw_embedding_maps(
    vectors: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    points: int,
    seed: int,
    what: str,
    folder: Path,
) -> list[str]:
    """PCA and t-SNE maps of one seeded subset of `points` rows of `vectors` (`what` they
    are, for the titles): folder/map_pca.png (PCA fitted on every row) and, from 5 points
    on, folder/map_tsne.png. Returns the names of the files written."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = vectors.shape[0]
    m = min(points, n)
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
    x = vectors.astype(np.float64)
    written = ["map_pca.png"]
    # One thread: the BLAS and OpenMP sums then run in a fixed order (identical PNGs), and on
    # a shared CPU t-SNE runs faster on one thread than on two (8.6 s vs 36 s, 2,000 points).
    with threadpool_limits(1):
        pca = PCA(n_components=2, svd_solver="full").fit(x)
        var = 100 * pca.explained_variance_ratio_
        plot_map(
            pca.transform(x[subset]),
            labels[subset],
            classes,
            f"PCA of {m} {what} (fitted on all {n}; "
            f"PC1 {var[0]:.1f}%, PC2 {var[1]:.1f}% of variance)",
            folder / "map_pca.png",
        )
        if m >= 5:
            perplexity = float(min(30.0, (m - 1) / 3))
            tsne = TSNE(
                n_components=2,
                perplexity=perplexity,
                init="pca",
                learning_rate="auto",
                random_state=seed,
            )
            plot_map(
                tsne.fit_transform(x[subset].astype(np.float32)),
                labels[subset],
                classes,
                f"t-SNE of {m} {what} (perplexity {perplexity:g}, seed {seed})",
                folder / "map_tsne.png",
            )
            written.append("map_tsne.png")
    return written


def _tsv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = ["\t".join(header), *("\t".join(cell(v) for v in row) for row in rows)]
    return "\n".join(lines) + "\n"


def plot_data(stats: dict[str, Any]) -> dict[str, str]:
    """The purity charts as TSV files for `dvc plots` (dvc.yaml's top-level plots):
    purity_hop.tsv (per hop, cumulative all / hard / easy and new; sizes) and
    purity_epoch.tsv (last-hop purity and table coverage per checkpoint). Empty cells:
    no labelled anchor had a positive."""
    per_hop = [
        (
            row["hop"],
            row["cumulative"]["purity"],
            row["cumulative"]["hard_purity"],
            row["cumulative"]["easy_purity"],
            row["new"]["purity"],
            row["cumulative"]["size"],
            row["new"]["size"],
        )
        for row in stats["per_hop"]
    ]
    files = {
        "purity_hop.tsv": _tsv(["hop", "all", "hard", "easy", "new", "size", "new_size"], per_hop)
    }
    epochs = sorted(stats.get("epochs") or [], key=lambda row: row["epoch"])
    files["purity_epoch.tsv"] = _tsv(
        ["epoch", "all", "hard", "easy", "coverage"],
        (
            (row["epoch"], *(row["purity"][kind] for kind in _KIND_STYLE), row["coverage"])
            for row in epochs
        ),
    )
    return files


# ---------------------------------------------------------------------------------------
# Image grids


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


def _image(prepared: PreparedDataset, index: int) -> np.ndarray:
    array = np.asarray(prepared.train.images[index])  # uint8 (C, H, W)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _spread(entries: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` entries evenly spaced through a similarity-sorted list (ends kept)."""
    if len(entries) <= count:
        return entries
    picks = sorted({round(i * (len(entries) - 1) / (count - 1)) for i in range(count)})
    return [entries[i] for i in picks]


def draw_grid(
    result: dict[str, Any], prepared: PreparedDataset | None, out: Path, show: int
) -> None:
    """One image's neighbourhood (`invprop.neighbourhood.inspect_anchor`'s result) as a PNG:
    one row each for the neighbours, the positives of each hop and the hard ones; every
    image titled with its class and similarity, framed green (same label) or red."""
    if prepared is None:
        raise InvpropError(
            "the PNG needs the prepared images (data/prepared/<dataset>), which are missing; "
            "run the prepare stage or drop --out"
        )
    plt = pyplot()
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    if "neighbours" in result:
        rows.append(("nearest", result["neighbours"][:show]))
    for hop in result["positives_by_hop"]:
        rows.append((f"hop {hop['hop']}\n({hop['size']})", _spread(hop["members"], show)))
    rows.append((f"hard\n({len(result['hard'])})", result["hard"][:show]))
    cols = show + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.35 * cols, 1.6 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, (name, entries) in enumerate(rows):
        head = axes[r, 0]
        if r == 0:
            image = _image(prepared, result["index"])
            head.imshow(image, cmap="gray" if image.ndim == 2 else None)
            head.set_title(f"#{result['index']}\n{result['class']}", fontsize=7, fontweight="bold")
        head.set_ylabel(name, fontsize=8)
        for c, entry in enumerate(entries, start=1):
            ax = axes[r, c]
            image = _image(prepared, entry["id"])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{entry['class']}\n{entry['sim']:.3f}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("tab:green" if entry["same_label"] else "tab:red")
                spine.set_linewidth(2)
    fig.suptitle(
        f"{result['tag']}: image {result['index']} ({result['class']}), k={result['k']}, "
        f"hops={result['hops']}, P={result['n_pos']}; green = same label",
        fontsize=8,
    )
    fig.tight_layout()
    save(fig, out, GRID_DPI)


def _mosaic(
    split: Split, rows: list[tuple[str, np.ndarray]], per_class: int, pad: int
) -> np.ndarray:
    """A white-padded RGB uint8 canvas: one row per (name, indices) entry."""
    _, height, width = np.asarray(split.images[int(rows[0][1][0])]).shape
    canvas = np.full(
        (pad + len(rows) * (height + pad), pad + per_class * (width + pad), 3), 255, np.uint8
    )
    for r, (_, picks) in enumerate(rows):
        for c, index in enumerate(picks):
            image = np.asarray(split.images[int(index)]).transpose(1, 2, 0)
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = image  # 1 channel broadcasts
    return canvas


def draw_class_grid(
    split: Split, rows: list[tuple[str, np.ndarray]], per_class: int, title: str, out: Path
) -> None:
    """A PNG of images of `split`, one row per (class name, indices) entry, each row
    labelled with its class; small images drawn at 64 pixels or more."""
    plt = pyplot()
    pad = 2
    canvas = _mosaic(split, rows, per_class, pad)
    _, height, width = np.asarray(split.images[int(rows[0][1][0])]).shape
    scale = max(1, 64 // max(height, width))
    dpi = 100
    figsize = (canvas.shape[1] * scale / dpi + 1.8, canvas.shape[0] * scale / dpi + 0.6)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([pad + r * (height + pad) + height / 2 for r in range(len(rows))])
    ax.set_yticklabels([name for name, _ in rows])
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)
    fig.tight_layout()
    save(fig, out, dpi)
