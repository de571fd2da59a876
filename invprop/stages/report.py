"""The report stage: `reports/report.md` and `reports/figures/*.png` from every stage's outputs.

Reads (all paths relative to the repository root; the stage checks every required input
before drawing anything and names the stage to run when one is missing):

    reports/evaluate.json                   required (evaluate): the results table
    reports/transfer.json                   optional (transfer): semi-supervised / transfer rows
    reports/<stage run>.json                optional: stage times (invprop.tables.pipeline_runs),
                                            graph purity
    dvclive/pretrain/plots/metrics/*.tsv    required (pretrain): loss, loss_instance,
                                            loss_invariance, lr; knn_bank_top1 optional
    artifacts/embeddings/final/             required (embed): test embeddings for the map
    artifacts/graph/final/                  required (graph): neighbours for the grids
    artifacts/{embeddings,graph}/<tag>/     required (embed, graph): the explorer page
    artifacts/propagation/final/stats.json  required (propagate): purity per hop and epoch
    data/prepared/<data.name>/              required (prepare): images and class names

Writes, atomically, `reports/figures/` (one folder, replaced whole), `reports/plots/` (the
purity charts as data for `dvc plots`), `reports/explorer/` and then `reports/report.md`,
which links every figure with a one-line caption. Optional inputs that are absent (no
transfer.json, no snapshots, a baseline switched off, the kNN monitor off) appear as
"not run", never as made-up numbers. The tables come from invprop.tables (which
`invprop metrics --table` prints too) and the figures from invprop.figures; the markdown
holds no timestamps, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from invprop.config import Config
from invprop.errors import InvpropError
from invprop.explorer import write_explorer
from invprop.figures import (
    choose_anchors,
    draw_embedding_maps,
    draw_grid,
    plot_data,
    plot_knn_monitor,
    plot_purity_epoch,
    plot_purity_hop,
    plot_training_curves,
)
from invprop.io import atomic_dir, atomic_file
from invprop.logs import get_logger
from invprop.neighbourhood import inspect_anchor
from invprop.tables import StageReports, headline_k, propagation_table, results_tables
from invprop.workspace import (
    EMBEDDINGS_FILE,
    EXPLORER_DIR,
    FIGURES_DIR,
    GRAPH_FILE,
    META_FILE,
    PLOTS_DIR,
    PRETRAIN,
    REPORT_MD,
    REPORTS_DIR,
    STATS_FILE,
    EmbeddingSet,
    embeddings_dir,
    graph_dir,
    load_checked_graph,
    load_embeddings,
    load_propagation_stats,
    prepared_dataset,
    prepared_dir,
    prepared_if_present,
    propagation_dir,
)

LOG = get_logger("report")
__all__ = ["build_report", "read_curves", "run"]

TAG = "final"
GRID_SHOW = 8


# ---------------------------------------------------------------------------------------
# Inputs


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise InvpropError(
            f"{path} not found; run the {stage} stage first (dvc repro {stage}, "
            f"or invprop stage {stage.split('@')[0]})"
        )
    return path


def _check_inputs(cfg: Config) -> None:
    """Every required input, checked before any drawing starts."""
    StageReports(REPORTS_DIR).require("evaluate")
    _require(PRETRAIN.metrics, "pretrain")
    _require(embeddings_dir(TAG) / EMBEDDINGS_FILE, f"embed@{TAG}")
    _require(graph_dir(TAG) / GRAPH_FILE, f"graph@{TAG}")
    _require(propagation_dir(TAG) / STATS_FILE, f"propagate@{TAG}")
    _require(prepared_dir(cfg.data.name) / META_FILE, "prepare")
    for name in ("loss", "lr"):
        _require(PRETRAIN.metrics / f"{name}.tsv", "pretrain")
    for tag in cfg.embed.tags:  # the explorer page shows every tag
        _require(embeddings_dir(tag) / EMBEDDINGS_FILE, f"embed@{tag}")
        _require(graph_dir(tag) / GRAPH_FILE, f"graph@{tag}")


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


# ---------------------------------------------------------------------------------------
# The markdown


def _figure(name: str, alt: str, caption: str) -> list[str]:
    return [f"![{alt}](figures/{name})", "", f"*{caption}*", ""]


def _training(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], reports: StageReports, folder: Path
) -> list[str]:
    plot_training_curves(curves, folder / "training_curves.png")
    md = _figure(
        "training_curves.png",
        "training losses and learning rate",
        "Losses and learning rate per epoch: the instance loss should fall steadily; the "
        "invariance loss joins at pretrain.ramp_epoch and should fall after it.",
    )
    if "knn_bank_top1" not in curves:
        return [
            *md,
            f"kNN monitor against epoch: not run ({PRETRAIN.metrics}/knn_bank_top1.tsv not found; "
            "pretrain.monitor_knn is off).",
            "",
        ]
    evaluate = reports.require("evaluate")
    k = headline_k(evaluate)
    plot_knn_monitor(
        curves["knn_bank_top1"],
        evaluate.get(f"invp/knn_bank/k{k}/top1"),
        f"evaluate: kNN K={k} on the final bank",
        folder / "knn_monitor.png",
    )
    return md + _figure(
        "knn_monitor.png",
        "kNN monitor against epoch",
        "kNN accuracy on the memory bank per epoch: it should rise and level off; a drop "
        "once the invariance loss is on points at impure positives.",
    )


def _propagation(reports: StageReports, folder: Path) -> list[str]:
    stats = load_propagation_stats(TAG)
    md = [propagation_table(stats, reports.get(f"graph_{TAG}")).markdown(), ""]
    plot_purity_hop(stats, folder / "purity_hop.png")
    md += _figure(
        "purity_hop.png",
        "positive purity and set size against hop",
        "Purity falls with each hop as sets grow; hard positives (least similar) are less "
        "pure than easy ones: the gap is the price of harder positives.",
    )
    if not [row for row in stats.get("epochs") or [] if row.get("tag") != TAG]:
        return [
            *md,
            "Positive purity against epoch: not run (no pretrain snapshots in "
            f"{propagation_dir(TAG) / STATS_FILE}; set pretrain.snapshot_epochs and rerun "
            "pretrain and propagate).",
            "",
        ]
    plot_purity_epoch(
        sorted(stats["epochs"], key=lambda row: row["epoch"]),
        stats["hops"],
        folder / "purity_epoch.png",
    )
    return md + _figure(
        "purity_epoch.png",
        "positive purity against epoch",
        "Purity of each checkpoint's bank positives: it should rise as training "
        "proceeds; coverage shows when the bank's neighbour table was filled.",
    )


def _neighbour_grids(cfg: Config, labels: np.ndarray, folder: Path) -> list[str]:
    """One grid per anchor, drawn by `invprop graph neighbours`' own code."""
    graph, _, emb = load_checked_graph(TAG)
    prepared = prepared_if_present(emb.dataset)
    anchors = choose_anchors(labels, cfg.report.anchors, cfg.seed)
    md = [
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
        draw_grid(result, prepared, folder / name, GRID_SHOW)
        md += _figure(
            name,
            f"neighbours and positives of train image {anchor}",
            f"Image #{anchor}, class {result['class']}: red frames are other classes; look for "
            "how many creep in from hop to hop and among the hard positives.",
        )
    return md


def _maps(cfg: Config, embeddings: EmbeddingSet, classes: list[str], folder: Path) -> list[str]:
    written = draw_embedding_maps(
        embeddings["test_embeddings"],
        embeddings["test_labels"],
        classes,
        cfg.report.map_points,
        cfg.seed,
        "test embeddings",
        folder,
    )
    md = _figure(
        "map_pca.png",
        "PCA map of the test embeddings",
        "PCA map: the linear view; classes that separate here are linearly separable "
        "in two directions, overlapping classes are the ones the linear probe confuses.",
    )
    if "map_tsne.png" not in written:
        return [*md, "t-SNE map: not run (fewer than 5 test points).", ""]
    return md + _figure(
        "map_tsne.png",
        "t-SNE map of the test embeddings",
        "t-SNE map: local neighbourhoods; look for one compact island per class and "
        "which classes share islands (distances between islands mean little).",
    )


def build_report(cfg: Config, folder: Path) -> str:
    """Draw every figure into `folder` and return the markdown that links them."""
    _check_inputs(cfg)
    reports = StageReports(REPORTS_DIR)
    embeddings = load_embeddings(embeddings_dir(TAG))
    classes = prepared_dataset(cfg.data.name).classes
    pretrain = reports.get("pretrain") or {}
    epochs = pretrain.get("epochs", reports.require("evaluate").get("invp/epoch"))

    md = [
        f"# InvP report: {cfg.data.name}",
        "",
        f"Invariance Propagation pretrained on {cfg.data.name} "
        f"({len(classes)} classes) for {epochs if epochs is not None else '?'} epochs. "
        "Every number comes from the files under `reports/` and `artifacts/`; a part whose "
        'input is absent says "not run".',
        "",
        "## Results",
        "",
    ]
    for table in results_tables(reports, cfg, running="report"):
        md += [table.markdown(), ""]
    LOG.info("training curves")
    md += ["## Training", "", *_training(read_curves(), reports, folder)]
    LOG.info("propagation purity")
    md += ["## Propagated positives", "", *_propagation(reports, folder)]
    LOG.info(f"{cfg.report.anchors} neighbour grids")
    md += ["## Neighbours and positives of a few images", ""]
    md += _neighbour_grids(cfg, embeddings["train_labels"], folder)
    LOG.info(
        f"embedding maps of {min(cfg.report.map_points, len(embeddings['test_labels']))} points"
    )
    md += ["## Map of the test embeddings", "", *_maps(cfg, embeddings, classes, folder)]
    return "\n".join(md).rstrip() + "\n"


def run(cfg: Config) -> None:
    """The report stage: write reports/figures/ and then reports/report.md (both atomic)."""
    _check_inputs(cfg)  # before anything is created
    with atomic_dir(FIGURES_DIR) as tmp:
        markdown = build_report(cfg, tmp)
        figures = sorted(p.name for p in tmp.glob("*.png"))
    with atomic_dir(PLOTS_DIR) as tmp:
        for name, text in plot_data(load_propagation_stats(TAG)).items():
            (tmp / name).write_text(text)
    graphs = {}
    for tag in sorted(cfg.embed.tags, key=lambda tag: (tag != "final", tag)):
        graph, _, emb = load_checked_graph(tag)
        graphs[tag] = (graph, emb)
    with atomic_dir(EXPLORER_DIR) as tmp:
        write_explorer(cfg, tmp, prepared_dataset(cfg.data.name), graphs)
    with atomic_file(REPORT_MD) as tmp_md:
        tmp_md.write_text(markdown)
    LOG.info(
        f"{REPORT_MD} with {len(figures)} figures in {FIGURES_DIR}/, {EXPLORER_DIR}/index.html"
    )
