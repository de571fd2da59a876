"""Shared fixtures. Data: writers of tiny datasets in the official on-disk formats.

The writers follow each format's specification independently of `invprop.data`, so the
readers are tested against files laid out as the real downloads are.
"""

from __future__ import annotations

import gzip
import pickle
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from invprop.config import Config, config_from_dict


@dataclass
class Written:
    """What a writer put on disk: the root to point data.root at and the expected splits."""

    root: Path
    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def _images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    labels = np.arange(n) % k  # every class present
    rng.shuffle(labels)
    return labels.astype(np.int64)


class RawWriters:
    @staticmethod
    def idx_file(path: Path, array: np.ndarray, gz: bool = True) -> None:
        """The idx format: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
        codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
        code = codes[array.dtype.kind + str(array.dtype.itemsize)]
        header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if gz else data)

    @staticmethod
    def fashion_mnist(
        root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, sub: str = ""
    ) -> Written:
        rng = np.random.default_rng(1)
        out = Written(
            root,
            _images(rng, n_train, 1, 28, 28),
            _labels(rng, n_train, 10),
            _images(rng, n_test, 1, 28, 28),
            _labels(rng, n_test, 10),
            [],
        )
        folder = root / sub if sub else root
        ext = ".gz" if gz else ""
        for prefix, images, labels in (
            ("train", out.train_images, out.train_labels),
            ("t10k", out.test_images, out.test_labels),
        ):
            RawWriters.idx_file(folder / f"{prefix}-images-idx3-ubyte{ext}", images[:, 0], gz)
            RawWriters.idx_file(
                folder / f"{prefix}-labels-idx1-ubyte{ext}", labels.astype(np.uint8), gz
            )
        return out

    @staticmethod
    def pickle_file(path: Path, obj: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(obj, protocol=2))

    @staticmethod
    def cifar10(root: Path, per_batch: int = 6, n_test: int = 10) -> Written:
        """cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta (dict pickles;
        'data' rows are 1024 red, 1024 green, 1024 blue values, each plane row-major)."""
        rng = np.random.default_rng(2)
        folder = root / "cifar-10-batches-py"
        names = [f"class{k}" for k in range(10)]
        train_x, train_y = [], []
        for i in range(1, 6):
            x, y = _images(rng, per_batch, 3, 32, 32), _labels(rng, per_batch, 10)
            batch = {
                "batch_label": f"training batch {i} of 5",
                "labels": y.tolist(),
                "data": x.reshape(per_batch, 3072),
                "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
            }
            RawWriters.pickle_file(folder / f"data_batch_{i}", batch)
            train_x.append(x)
            train_y.append(y)
        test_x, test_y = _images(rng, n_test, 3, 32, 32), _labels(rng, n_test, 10)
        RawWriters.pickle_file(
            folder / "test_batch", {"labels": test_y.tolist(), "data": test_x.reshape(n_test, -1)}
        )
        # bytes keys and names, as pickle.load(..., encoding="bytes") users see them
        RawWriters.pickle_file(
            folder / "batches.meta",
            {b"label_names": [n.encode() for n in names], b"num_vis": 3072},
        )
        return Written(
            root, np.concatenate(train_x), np.concatenate(train_y), test_x, test_y, names
        )

    @staticmethod
    def cifar100(root: Path, n_train: int = 120, n_test: int = 100) -> Written:
        rng = np.random.default_rng(3)
        folder = root / "cifar-100-python"
        names = [f"fine{k:02d}" for k in range(100)]
        out = Written(
            root,
            _images(rng, n_train, 3, 32, 32),
            _labels(rng, n_train, 100),
            _images(rng, n_test, 3, 32, 32),
            _labels(rng, n_test, 100),
            names,
        )
        for split, x, y in (
            ("train", out.train_images, out.train_labels),
            ("test", out.test_images, out.test_labels),
        ):
            batch = {
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": x.reshape(len(x), -1),
            }
            RawWriters.pickle_file(folder / split, batch)
        meta = {"fine_label_names": names, "coarse_label_names": [f"c{k}" for k in range(20)]}
        RawWriters.pickle_file(folder / "meta", meta)
        return out

    @staticmethod
    def svhn(root: Path, n_train: int = 30, n_test: int = 20) -> Written:
        """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
        from scipy.io import savemat

        rng = np.random.default_rng(4)
        out = Written(
            root,
            _images(rng, n_train, 3, 32, 32),
            _labels(rng, n_train, 10),
            _images(rng, n_test, 3, 32, 32),
            _labels(rng, n_test, 10),
            [str(d) for d in range(10)],
        )
        root.mkdir(parents=True, exist_ok=True)
        for split, x, y in (
            ("train", out.train_images, out.train_labels),
            ("test", out.test_images, out.test_labels),
        ):
            mat_y = np.where(y == 0, 10, y).astype(np.uint8)[:, None]  # digit 0 is stored as 10
            savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": mat_y})
        return out

    @staticmethod
    def stl10(root: Path, n_train: int = 12, n_test: int = 10) -> Written:
        """stl10_binary/: *_X.bin uint8 images, each channel column-major; *_y.bin 1..10."""
        rng = np.random.default_rng(5)
        names = [
            "airplane",
            "bird",
            "car",
            "cat",
            "deer",
            "dog",
            "horse",
            "monkey",
            "ship",
            "truck",
        ]
        out = Written(
            root,
            _images(rng, n_train, 3, 96, 96),
            _labels(rng, n_train, 10),
            _images(rng, n_test, 3, 96, 96),
            _labels(rng, n_test, 10),
            names,
        )
        folder = root / "stl10_binary"
        folder.mkdir(parents=True, exist_ok=True)
        for split, x, y in (
            ("train", out.train_images, out.train_labels),
            ("test", out.test_images, out.test_labels),
        ):
            # column-major per channel: write each (H, W) plane transposed, i.e. as (W, H)
            (folder / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
            (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        (folder / "class_names.txt").write_text("\n".join(names) + "\n")
        return out

    @staticmethod
    def image_folder(
        root: Path,
        counts: dict[str | None, int],
        fmt: str = "png",
        size: int = 32,
        mode: str = "RGB",
        seed: int = 6,
    ) -> dict[str, np.ndarray]:
        """Write `counts[class]` images per class folder (None: loose in root).

        Returns {relative path: pixels as (C, H, W) uint8}.
        """
        from PIL import Image

        rng = np.random.default_rng(seed)
        written = {}
        for name, n in counts.items():
            folder = root / name if name else root
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                channels = 1 if mode == "L" else 3
                # smooth images, so JPEG round trips stay close
                base = rng.integers(0, 256, (channels, 4, 4), dtype=np.uint8)
                pixels = np.kron(base, np.ones((1, size // 4, size // 4), np.uint8))
                image = Image.fromarray(pixels[0] if mode == "L" else pixels.transpose(1, 2, 0))
                path = folder / f"img_{i:03d}.{fmt}"
                image.save(path)
                written[path.relative_to(root).as_posix()] = pixels
        return written


# What the shell that runs pytest could set to change what the CLI and the logs print:
# Rich reads the first six, invprop the last two. The suite runs without them, on an
# ordinary terminal type, so its outcome does not depend on the shell (tests/test_terminals.py
# runs the logging and CLI tests under TERM=dumb, NO_COLOR and COLUMNS=40 to check it);
# tests about one of them set it themselves.
TERMINAL_VARIABLES = (
    "NO_COLOR",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "COLUMNS",
    "LINES",
    "CLICOLOR_FORCE",
    "INVPROP_PROGRESS",
    "INVPROP_PROGRESS_SECONDS",
)


@pytest.fixture(autouse=True, scope="session")
def _neutral_terminal_and_stage_logging() -> Iterator[None]:
    """A terminal-neutral environment; library messages reach stderr as in a stage run,
    where tests read them (capsys)."""
    from invprop.logs import setup_logging

    with pytest.MonkeyPatch.context() as patch:
        for name in TERMINAL_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv("TERM", "xterm-256color")
        setup_logging()
        yield


@pytest.fixture(scope="session")
def writers() -> type[RawWriters]:
    return RawWriters


def make_config(name: str = "synthetic", **data: object) -> Config:
    """A validated config for dataset `name` with `data` keys set and no transfer targets."""
    return config_from_dict({"data": {"name": name, **data}, "transfer": {"targets": []}})


@pytest.fixture(scope="session")
def data_config() -> Callable[..., Config]:
    """`data_config(name, **data)` builds a Config (see make_config)."""
    return make_config


# ---------------------------------------------------------------------------------------
# Plain references for the neighbour table and propagation


def bfs_reference(table: Sequence[Sequence[int]], anchor: int, hops: int) -> dict[int, int]:
    """Queue BFS over the table's rows (-1 = unknown, skipped): {node: hops from anchor}
    for every node within 1..hops steps, the anchor excluded."""
    dist = {anchor: 0}
    queue = deque([anchor])
    while queue:
        u = queue.popleft()
        if dist[u] == hops:
            continue
        for v in table[u]:
            v = int(v)
            if v >= 0 and v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    del dist[anchor]
    return dist


def exact_table(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's k most similar other rows (dot product), most similar first."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------------------
# Checkpoints: compared, and written directly (no training) in the layout of invprop.checkpoint


def states_equal(a: dict, b: dict) -> bool:
    """Two checkpoints' model weights and bank (vectors and neighbour table) equal, bit
    for bit."""
    import torch

    return all(
        torch.equal(a[key][name], b[key][name]) for key in ("model", "bank") for name in a[key]
    )


def same_training_state(a: dict, b: dict) -> bool:
    """Model, bank (vectors and neighbour table), optimizer buffers, epoch and the losses
    of every epoch equal, bit for bit; epoch timings left out."""
    import torch

    momenta = [
        torch.equal(a["optimizer"]["state"][i][key], b["optimizer"]["state"][i][key])
        for i in a["optimizer"]["state"]
        for key in a["optimizer"]["state"][i]
    ]

    def untimed(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if "second" not in k} for row in history]

    return (
        states_equal(a, b)
        and bool(momenta)
        and all(momenta)
        and a["epoch"] == b["epoch"]
        and untimed(a["history"]) == untimed(b["history"])
    )


def write_bank_checkpoint(
    path: Path, epoch: int, vectors: np.ndarray, table: np.ndarray, cfg: Config
) -> None:
    """A checkpoint holding only what the propagate stage and bank stats read."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "version": 1,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "bank": {"vectors": torch.tensor(vectors), "neighbours": torch.tensor(table)},
    }
    torch.save(state, path)


def write_model_checkpoint(cfg: Config, path: Path, epoch: int, bank_init: str) -> None:
    """A full checkpoint: the initial network perturbed with a fixed seed (so it differs
    from the random-init baseline) and a bank filled by a forward pass or at random."""
    import torch

    from invprop.checkpoint import CHECKPOINT_VERSION, build_encoder, save_checkpoint, training_hash
    from invprop.data import load_prepared
    from invprop.inference import extract
    from invprop.method import MemoryBank

    encoder = build_encoder(cfg)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    prepared = load_prepared(Path("data/prepared") / cfg.data.name)
    bank = MemoryBank(len(prepared.train), cfg.model.dim, cfg.pretrain.k)
    if bank_init == "forward":
        bank.init_from(extract(encoder, prepared.train, prepared.meta, cfg, "cpu")[1])
    else:
        bank.init_random(torch.Generator().manual_seed(0))
    save_checkpoint(
        path,
        {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "params_hash": training_hash(cfg),
            "config": cfg.to_dict(),
            "model": encoder.state_dict(),
            "bank": bank.state_dict(),
            "optimizer": torch.optim.SGD(encoder.parameters(), lr=0.1).state_dict(),
            "history": [],
        },
    )


def write_untrained_checkpoint(
    cfg: Config, path: Path, mean: list[float], std: list[float], bank_size: int = 64
) -> None:
    """A complete checkpoint (model, bank, optimizer, history, preprocessing for images
    stored at data.image_size) of the initial network with every float tensor perturbed by
    a fixed seed, BatchNorm running statistics included, so that weights and buffers all
    differ from a freshly built encoder. No data and no training needed."""
    import torch

    from invprop.checkpoint import (
        CHECKPOINT_VERSION,
        build_encoder,
        image_preprocessing,
        save_checkpoint,
        training_hash,
        training_params,
    )
    from invprop.method import MemoryBank

    encoder = build_encoder(cfg)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            if tensor.is_floating_point():
                noise = 0.01 * torch.randn(tensor.shape, generator=generator)
                tensor.add_(noise.abs() if name.endswith("running_var") else noise)
    size = cfg.data.image_size
    save_checkpoint(
        path,
        {
            "version": CHECKPOINT_VERSION,
            "epoch": 3,
            "params_hash": training_hash(cfg),
            "config": training_params(cfg),
            "model": encoder.state_dict(),
            "bank": MemoryBank(bank_size, cfg.model.dim, cfg.pretrain.k).state_dict(),
            "optimizer": torch.optim.SGD(encoder.parameters(), lr=0.1).state_dict(),
            "history": [{"epoch": 3, "loss": 1.0}],
            "preprocessing": image_preprocessing(cfg, (cfg.data.channels, size, size), mean, std),
        },
    )


def pil_images(images: np.ndarray) -> list:
    """uint8 [N, C, H, W] arrays (C 1 or 3) as PIL images ("L" or "RGB"), as a user's
    photos reach torchvision's transforms."""
    from PIL import Image

    if images.shape[1] == 1:
        return [Image.fromarray(image[0]) for image in images]
    return [Image.fromarray(image.transpose(1, 2, 0)) for image in images]


# ---------------------------------------------------------------------------------------
# The tiny pipeline, copied and run by DVC once per session (tests/pipeline_runs.py): the
# orchestrator tests and the SLURM tests compare their runs against the same one.


@pytest.fixture(scope="session")
def pipeline_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline_runs import make_pipeline_copy

    return make_pipeline_copy(tmp_path_factory)


@pytest.fixture(scope="session")
def dvc_run(pipeline_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """pipeline_runs.DvcRun: the pipeline after one `dvc repro`, committed. Tests that
    change it work on a copy (pipeline_runs.copy_workspace)."""
    from pipeline_runs import make_dvc_run

    return make_dvc_run(pipeline_copy, tmp_path_factory)


@pytest.fixture(scope="session")
def seed_study(dvc_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the DVC run with one experiment per seed of pipeline_runs.STUDY_SEEDS,
    queued (up to evaluate, baseline on) and run by DVC's queue worker."""
    from pipeline_runs import make_seed_study

    return make_seed_study(dvc_run, tmp_path_factory)
