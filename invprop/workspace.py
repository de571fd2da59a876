"""The layout of a workspace: where every artifact lives, and its one reader and writer.

Stages, the CLI and the report reach artifacts only through this module, so each path is
spelled once in Python (dvc.yaml and the Snakefile spell them again for the orchestrators).
Paths are relative to the workspace root, the folder holding dvc.yaml; functions taking
`root` read a workspace elsewhere.

    artifact                             written by        reached through
    data/prepared/<dataset>/             prepare           prepared_dir, prepared_dataset
    models/<run>/last.pt, final.pt,      pretrain, each    TrainingRun (PRETRAIN,
      snapshots/epoch_NNNN.pt            training baseline baseline_run(name))
    models/in_progress/<run>/            (the same)        TrainingRun.training()
    dvclive/<run>/plots/metrics/*.tsv    the same          TrainingRun.metrics
    artifacts/embeddings/<tag>/          embed             load_embeddings, save_embeddings
    artifacts/embeddings/<baseline>/     its stage         baseline_embeddings(name)
    artifacts/graph/<tag>/               graph             load_graph, save_graph
    artifacts/propagation/<tag>/         propagate         load_positives, save_propagation
    artifacts/transfer/subsets/          transfer          save_transfer_subsets
    reports/<stage>.json                 every stage       stage_report, write_stage_report
    reports/report.md, reports/figures/  report            REPORT_MD, FIGURES_DIR

`<tag>` is `final` (final.pt) or `epoch_NNNN` (the snapshot of that epoch).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# meta.json: the prepared data's (invprop.data.prepared reads it), the embeddings' and the
# transfer subsets'
from invprop.data.prepared import META_FILE, PreparedDataset, load_prepared
from invprop.errors import InvpropError
from invprop.io import (
    atomic_dir,
    ensure_free_space,
    file_sha256,
    load_npz,
    read_json,
    replace_dir,
    save_npz,
    write_json,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "EMBEDDINGS_DIR",
    "EMBEDDINGS_FILE",
    "EXPLORER_DIR",
    "FIGURES_DIR",
    "GRAPH_DIR",
    "GRAPH_FILE",
    "INSTANCE_DISCRIMINATION",
    "INSTANCE_DISCRIMINATION_EMBEDDINGS",
    "INSTANCE_DISCRIMINATION_OFF",
    "META_FILE",
    "PLOTS_DIR",
    "POSITIVES_FILE",
    "PREPARED_DIR",
    "PRETRAIN",
    "PROPAGATION_DIR",
    "REPORTS_DIR",
    "REPORT_MD",
    "STATS_FILE",
    "STATUS_FILE",
    "TAG_PATTERN",
    "TRANSFER_DIR",
    "EmbeddingSet",
    "TrainingRun",
    "baseline_embeddings",
    "baseline_off",
    "baseline_run",
    "check_tag",
    "checkpoint_for_tag",
    "embeddings_dir",
    "graph_dir",
    "has_embeddings",
    "load_checked_graph",
    "load_embeddings",
    "load_graph",
    "load_positives",
    "load_propagation_stats",
    "prepared_dataset",
    "prepared_dir",
    "prepared_if_present",
    "prepared_train_labels",
    "propagation_dir",
    "save_embeddings",
    "save_graph",
    "save_propagation",
    "save_status",
    "save_transfer_subsets",
    "stage_report",
    "write_stage_report",
]

PREPARED_DIR = Path("data/prepared")
EMBEDDINGS_DIR = Path("artifacts/embeddings")
GRAPH_DIR = Path("artifacts/graph")
PROPAGATION_DIR = Path("artifacts/propagation")
TRANSFER_DIR = Path("artifacts/transfer")
REPORTS_DIR = Path("reports")
REPORT_MD = REPORTS_DIR / "report.md"
FIGURES_DIR = REPORTS_DIR / "figures"
EXPLORER_DIR = REPORTS_DIR / "explorer"  # the report stage's explorer page
PLOTS_DIR = REPORTS_DIR / "plots"  # data files of dvc.yaml's top-level plots
TAG_PATTERN = re.compile(r"^(final|epoch_\d{4})$")
EMBEDDINGS_FILE = "embeddings.npz"
GRAPH_FILE = "graph.npz"
POSITIVES_FILE = "positives.npz"
STATS_FILE = "stats.json"  # graph and propagation statistics
STATUS_FILE = "status.json"  # why an artifact holds nothing else
EMBEDDING_ARRAYS = (
    "train_features",
    "train_embeddings",
    "train_labels",
    "test_features",
    "test_embeddings",
    "test_labels",
)
POSITIVES_ARRAYS = ("indptr", "ids", "hop", "hard_indptr", "hard_ids", "easy_indptr", "easy_ids")


def check_tag(tag: str) -> str:
    """`tag` when it names embeddings (final or epoch_NNNN), else a one-line error."""
    if not TAG_PATTERN.match(tag):
        raise InvpropError(
            f"tag {tag!r} is not 'final' or 'epoch_NNNN' (four digits, e.g. epoch_0010); "
            "pass one of embed.tags"
        )
    return tag


def _save_folder(
    folder: Path,
    arrays_file: str,
    arrays: dict[str, np.ndarray],
    json_file: str,
    data: dict[str, Any],
    what: str,
) -> None:
    """Write an artifact folder of one .npz and one JSON file atomically, as one folder,
    after checking the disk has room for the arrays."""
    ensure_free_space(folder.parent, sum(a.nbytes for a in arrays.values()), what)
    with atomic_dir(folder) as tmp:
        save_npz(tmp / arrays_file, arrays)
        write_json(tmp / json_file, data)


# ---------------------------------------------------------------------------------------
# Reports: reports/<stage>.json


def stage_report(name: str, reports_dir: str | Path = REPORTS_DIR) -> Path:
    """reports/<name>.json, e.g. name "graph_final" or "prepare_digits"."""
    return Path(reports_dir) / f"{name}.json"


def write_stage_report(name: str, data: dict[str, Any]) -> Path:
    """Write reports/<name>.json atomically; return its path."""
    path = stage_report(name)
    write_json(path, data)
    return path


# ---------------------------------------------------------------------------------------
# Prepared data


def prepared_dir(dataset: str, root: str | Path = ".") -> Path:
    return Path(root) / PREPARED_DIR / dataset


def prepared_dataset(dataset: str, root: str | Path = ".") -> PreparedDataset:
    """data/prepared/<dataset>, loaded and checked (invprop.data.prepared)."""
    return load_prepared(prepared_dir(dataset, root))


def prepared_if_present(dataset: str | None) -> PreparedDataset | None:
    """data/prepared/<dataset> when it is there and whole, else None (for views that can
    do without it, e.g. class numbers instead of names)."""
    if not dataset:
        return None
    if not prepared_dir(dataset).is_dir():
        return None
    try:
        return prepared_dataset(dataset)
    except InvpropError:
        return None  # class names fall back to numbers; the PNG says what is missing


def prepared_train_labels(dataset: str, root: str | Path = ".") -> np.ndarray:
    return np.asarray(prepared_dataset(dataset, root).train.labels)


# ---------------------------------------------------------------------------------------
# Training runs: checkpoints and curves


@dataclass(frozen=True)
class TrainingRun:
    """Where one pretraining run keeps its checkpoints and its dvclive curves.

    `checkpoints` holds a finished run only. While it trains, its checkpoints go to
    `in_progress` (models/in_progress/<run>/), a folder no orchestrator clears: both clear
    a stage's outputs before running it and Snakemake deletes a failed job's outputs, so a
    resume point inside the output would go with the job that wrote it. `publish` moves
    the finished run into place.
    """

    checkpoints: Path  # last.pt, final.pt, snapshots/epoch_NNNN.pt
    curves: Path  # the dvclive folder

    @property
    def in_progress(self) -> Path:
        return self.checkpoints.parent / "in_progress" / self.checkpoints.name

    def training(self) -> TrainingRun:
        """The same run with its checkpoints in the in-progress folder: where training
        writes last.pt, the snapshots and final.pt."""
        return TrainingRun(self.in_progress, self.curves)

    def continue_finished(self) -> None:
        """Make the in-progress folder a copy of the finished run, to continue from its
        last.pt. Hard links: a checkpoint write replaces a file, never changes it."""
        self.discard_in_progress()
        shutil.copytree(self.checkpoints, self.in_progress, copy_function=os.link)

    def discard_in_progress(self) -> None:
        shutil.rmtree(self.in_progress, ignore_errors=True)

    def publish(self) -> None:
        """Move the finished training (in_progress) to `checkpoints`, replacing the
        previous run there, which stays until then."""
        replace_dir(self.in_progress, self.checkpoints)
        with contextlib.suppress(OSError):  # models/in_progress/, once no run is in it
            self.in_progress.parent.rmdir()

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def final(self) -> Path:
        return self.checkpoints / "final.pt"

    def snapshot(self, epoch: int) -> Path:
        return self.checkpoints / "snapshots" / f"epoch_{epoch:04d}.pt"

    def snapshots(self) -> list[tuple[int, Path]]:
        """(epoch, path) of every snapshot, by epoch."""
        found = []
        for path in (self.checkpoints / "snapshots").glob("epoch_*.pt"):
            match = re.match(r"^epoch_(\d+)\.pt$", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def tagged_checkpoints(self) -> list[tuple[str, Path]]:
        """(tag, path) of every snapshot, by epoch, then final.pt when present."""
        out = [(f"epoch_{epoch:04d}", path) for epoch, path in self.snapshots()]
        if self.final.is_file():
            out.append(("final", self.final))
        return out

    @property
    def metrics(self) -> Path:
        """The folder of the per-metric .tsv curves dvclive writes."""
        return self.curves / "plots" / "metrics"

    def under(self, root: str | Path) -> TrainingRun:
        return TrainingRun(Path(root) / self.checkpoints, Path(root) / self.curves)


PRETRAIN = TrainingRun(Path("models/pretrain"), Path("dvclive/pretrain"))


def baseline_run(name: str) -> TrainingRun:
    """Where training baseline `name` (invprop.names.TRAINING_BASELINES) keeps its
    checkpoints and curves: models/<name>/ and dvclive/<name>/, beside pretrain's."""
    return TrainingRun(PRETRAIN.checkpoints.parent / name, PRETRAIN.curves.parent / name)


INSTANCE_DISCRIMINATION = baseline_run("instance_discrimination")


def checkpoint_for_tag(tag: str, run: TrainingRun = PRETRAIN) -> Path:
    """The checkpoint of a tag: final -> final.pt, epoch_NNNN -> snapshots/epoch_NNNN.pt."""
    check_tag(tag)
    return run.final if tag == "final" else run.snapshot(int(tag.removeprefix("epoch_")))


# ---------------------------------------------------------------------------------------
# Embeddings: artifacts/embeddings/<tag>/


def baseline_embeddings(name: str) -> Path:
    """The embeddings of training baseline `name`'s final checkpoint, beside the tags'."""
    return EMBEDDINGS_DIR / name


def baseline_off(name: str) -> str:
    """What evaluate reports, and the baseline's embeddings folder's status.json says, when
    training baseline `name` is off."""
    return f"not run (evaluate.baselines.{name} is off)"


INSTANCE_DISCRIMINATION_EMBEDDINGS = baseline_embeddings("instance_discrimination")
INSTANCE_DISCRIMINATION_OFF = baseline_off("instance_discrimination")


def embeddings_dir(tag: str, root: str | Path = ".") -> Path:
    return Path(root) / EMBEDDINGS_DIR / check_tag(tag)


def save_status(folder: Path, status: str) -> None:
    """Make `folder` hold only status.json, {"status": status}: an artifact that says why it
    is empty (a baseline that is off), so the orchestrators still see their output."""
    with atomic_dir(folder) as tmp:
        write_json(tmp / STATUS_FILE, {"status": status})


def has_embeddings(folder: Path) -> bool:
    """Whether `folder` holds embeddings (a baseline that did not run holds only status.json)."""
    return (folder / EMBEDDINGS_FILE).is_file()


class EmbeddingSet:
    """An embeddings folder, checked (row counts, dtypes, widths); rows follow the prepared
    split's order, which is also the memory bank's order.

        embeddings.npz   train_features [N, F] float32   train_embeddings [N, d] float32
                         train_labels [N] int64 (-1 = unlabeled)
                         test_features [M, F]  test_embeddings [M, d]  test_labels [M]
        meta.json        tag, checkpoint, checkpoint_sha256, epoch, dataset, training_hash,
                         num_classes, counts {train, test}, dims {features, embeddings}
    """

    def __init__(self, folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.folder = folder
        self.arrays = arrays
        self.meta = meta

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def tensor(self, key: str) -> Tensor:
        # torch only when asked: the CLI imports this module without it, for a fast --help
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.arrays[key]))

    @property
    def path(self) -> Path:
        return self.folder / EMBEDDINGS_FILE

    @property
    def n(self) -> int:
        """Rows of the train split."""
        return int(self.arrays["train_embeddings"].shape[0])

    @functools.cached_property
    def train_vectors(self) -> np.ndarray:
        """The train embeddings, float32 and C-contiguous (what the graph searches)."""
        return np.ascontiguousarray(self.arrays["train_embeddings"], dtype=np.float32)

    @property
    def train_labels(self) -> np.ndarray:
        return self.arrays["train_labels"].astype(np.int64, copy=False)

    @functools.cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)

    @property
    def dataset(self) -> str | None:
        return self.meta.get("dataset")

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.meta:
            return int(self.meta["num_classes"])
        labels = np.concatenate([self.arrays["train_labels"], self.arrays["test_labels"]])
        return int(labels.max()) + 1


def load_embeddings(folder: str | Path) -> EmbeddingSet:
    """Load and check an embeddings folder; errors name the file and the fix."""
    folder = Path(folder)
    path = folder / EMBEDDINGS_FILE
    fix = "rerun the embed stage (dvc repro embed)"
    if not folder.is_dir():
        raise InvpropError(f"embeddings folder {folder} not found; {fix}")
    arrays = load_npz(path, "embeddings")
    missing = [key for key in EMBEDDING_ARRAYS if key not in arrays]
    if missing:
        raise InvpropError(f"{path} lacks array {missing[0]!r}; {fix}")
    for split in ("train", "test"):
        features = arrays[f"{split}_features"]
        embeddings = arrays[f"{split}_embeddings"]
        labels = arrays[f"{split}_labels"]
        if features.ndim != 2 or embeddings.ndim != 2 or labels.ndim != 1:
            raise InvpropError(
                f"{path}: {split} arrays must be 2-D features/embeddings and 1-D labels, got "
                f"{features.shape}, {embeddings.shape}, {labels.shape}; {fix}"
            )
        if not (features.shape[0] == embeddings.shape[0] == labels.shape[0]):
            raise InvpropError(
                f"{path}: {split}_features has {features.shape[0]} rows, {split}_embeddings "
                f"{embeddings.shape[0]}, {split}_labels {labels.shape[0]}; they must match; {fix}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InvpropError(
                f"{path}: {split}_labels must be integers, got {labels.dtype}; {fix}"
            )
    for key in ("features", "embeddings"):
        if arrays[f"train_{key}"].shape[1] != arrays[f"test_{key}"].shape[1]:
            raise InvpropError(
                f"{path}: train_{key} and test_{key} differ in width "
                f"({arrays[f'train_{key}'].shape[1]} vs {arrays[f'test_{key}'].shape[1]}); {fix}"
            )
    meta_path = folder / META_FILE
    meta = read_json(meta_path, "embeddings meta") if meta_path.exists() else {}
    counts = meta.get("counts")
    expected = counts.get("train") if isinstance(counts, dict) else None
    rows = arrays["train_embeddings"].shape[0]
    if isinstance(expected, int) and expected != rows:
        raise InvpropError(
            f"{path} holds {rows} train embeddings but its meta.json says counts.train = "
            f"{expected}; the folder is mixed up: rerun the embed stage"
        )
    return EmbeddingSet(folder, arrays, meta)


def save_embeddings(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write an embeddings folder (embeddings.npz + meta.json) atomically, as one folder."""
    _save_folder(folder, EMBEDDINGS_FILE, arrays, META_FILE, meta, "embeddings")


# ---------------------------------------------------------------------------------------
# The k-NN graph: artifacts/graph/<tag>/


def graph_dir(tag: str, root: str | Path = ".") -> Path:
    return Path(root) / GRAPH_DIR / check_tag(tag)


def load_graph(tag: str, root: str | Path = ".") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """graph.npz arrays and stats.json of a tag, with their shapes checked."""
    folder = graph_dir(tag, root)
    arrays = load_npz(folder / GRAPH_FILE, "graph")
    missing = [key for key in ("ids", "sims", "labels") if key not in arrays]
    ids = arrays.get("ids")
    if missing or ids is None or ids.ndim != 2 or arrays["sims"].shape != ids.shape:
        raise InvpropError(
            f"{folder / GRAPH_FILE} is not a graph artifact (needs ids [N, k], sims [N, k], "
            "labels [N]); rerun the graph stage"
        )
    stats = read_json(folder / STATS_FILE, "graph stats.json")
    return arrays, stats


def save_graph(tag: str, arrays: dict[str, np.ndarray], stats: dict[str, Any]) -> Path:
    """Write graph.npz (ids, sims, labels) and stats.json of a tag atomically."""
    out = graph_dir(tag)
    _save_folder(out, GRAPH_FILE, arrays, STATS_FILE, stats, "the k-NN graph")
    return out


def load_checked_graph(
    tag: str, root: str | Path = "."
) -> tuple[dict[str, np.ndarray], dict[str, Any], EmbeddingSet]:
    """The graph of `tag` and the embeddings it was built from, checked to belong together."""
    graph, stats = load_graph(tag, root)
    emb = load_embeddings(embeddings_dir(tag, root))
    n = graph["ids"].shape[0]
    source = stats.get("embeddings", {}).get("sha256")
    if n != emb.n or source != emb.sha256:
        raise InvpropError(
            f"{GRAPH_DIR / tag} was not built from {emb.path} (graph: N={n}, source "
            f"sha256 {str(source)[:12]}; embeddings: N={emb.n}, sha256 {emb.sha256[:12]}); "
            f"rerun the graph stage for {tag}"
        )
    return graph, stats, emb


# ---------------------------------------------------------------------------------------
# Propagated positives: artifacts/propagation/<tag>/


def propagation_dir(tag: str, root: str | Path = ".") -> Path:
    return Path(root) / PROPAGATION_DIR / check_tag(tag)


def load_positives(tag: str, root: str | Path = ".") -> dict[str, np.ndarray]:
    """positives.npz of `tag` with its CSR layout checked."""
    path = propagation_dir(tag, root) / POSITIVES_FILE
    arrays = load_npz(path, "positive sets")
    if (
        any(key not in arrays for key in POSITIVES_ARRAYS)
        or arrays["indptr"][-1] != arrays["ids"].size
    ):
        raise InvpropError(f"{path} is not a positives artifact; rerun the propagate stage")
    return arrays


def load_propagation_stats(tag: str, root: str | Path = ".") -> dict[str, Any]:
    return read_json(propagation_dir(tag, root) / STATS_FILE, "propagation stats.json")


def save_propagation(tag: str, positives: dict[str, np.ndarray], stats: dict[str, Any]) -> Path:
    """Write positives.npz (CSR) and stats.json of a tag atomically."""
    out = propagation_dir(tag)
    _save_folder(out, POSITIVES_FILE, positives, STATS_FILE, stats, "positive sets")
    return out


# ---------------------------------------------------------------------------------------
# Transfer: artifacts/transfer/


def save_transfer_subsets(subsets: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write artifacts/transfer/subsets/<name>.npy (row indices) and meta.json atomically."""
    with atomic_dir(TRANSFER_DIR) as tmp:
        folder = tmp / "subsets"
        folder.mkdir()
        for name, indices in subsets.items():
            np.save(folder / f"{name}.npy", indices)
        write_json(tmp / META_FILE, meta)
    return TRANSFER_DIR
