"""The GPU presets rehearsed on the CPU: bf16 autocast, channels_last and torch.compile
through the real stages, so a bug in how invprop uses them shows up in CI, not on a GPU.

Each run copies params.yaml, applies a GPU preset, then one overlay: the GPU options
(`GPU_OPTIONS`, on the CPU) and what tiny data on two cores forces (`SCALED`, each value
commented). Everything else is the preset's own. The stages prepare -> pretrain -> embed ->
graph -> propagate -> evaluate run in a temporary project on data written in the official
formats (tests/conftest.py). Checked: finite losses with the propagation term on; the bank
(fp32) and the table (int64) never cast to bf16, nor the weights; channels_last weights;
the epoch-1 snapshot reloads and resumes to a final checkpoint bit-equal to the
uninterrupted run's; kNN and linear figures written; and, compiled, one compilation per
batch shape, not per step.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import RawWriters, same_training_state

from invprop.augment import BatchAugment
from invprop.checkpoint import build_encoder, load_checkpoint
from invprop.config import Config, apply_preset, config_from_dict, load_config, restore_types
from invprop.data import Split
from invprop.errors import InvpropError
from invprop.inference import extract
from invprop.method import MemoryBank
from invprop.pipeline import run_stage
from invprop.training import make_optimizer, train, training_step
from invprop.workspace import PRETRAIN, TrainingRun, load_embeddings

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "pretrain", "embed", "graph", "propagate", "evaluate")
# 8 train images a class, the fewest that leave the validation part (10%) and the L-BFGS
# probe's C-selection part (10% of the rest) an image of each of 10 classes.
N_TRAIN, N_TEST = 80, 20
BATCH = 24  # 80 images: batches of 27, 27 and 26 (invprop.batches.batch_sizes)

# What a GPU run turns on, here on the CPU.
GPU_OPTIONS = {"pretrain": {"device": "cpu", "precision": "bf16", "channels_last": True}}

# Scaled down for tiny data on two CPU cores, and nothing else.
SCALED: dict[str, Any] = {
    "pretrain": {
        # 2 epochs: the first without the propagation loss, the second with it.
        "epochs": 2,
        "ramp_epoch": 1,
        "snapshot_epochs": [1],  # the epoch-1 snapshot is what the resume starts from
        "lr_milestones": [],  # step schedules: every milestone is past epoch 2
        "batch_size": BATCH,
        "n_background": 64,  # M = 4096 cannot exceed the 80-image bank
    },
    "embed": {"tags": ["final", "epoch_0001"]},  # the presets' snapshot tags, scaled
    "evaluate": {
        "linear": {"epochs": 1, "milestones": []},  # the SGD probe: one epoch
        # The baseline trains the same loop again with InvP off: twice the time for
        # nothing new here (tests/test_imagenet_preset.py runs that stage).
        "baselines": {"instance_discrimination": False},
    },
    "transfer": {"targets": []},
}


def fashion_mnist(root: Path) -> dict[str, Any]:
    RawWriters.fashion_mnist(root, N_TRAIN, N_TEST)
    # fmnist-gpu warms up for 5 of its 200 epochs: 1 of 2 here
    return {"data": {"root": str(root)}, "pretrain": {"warmup_epochs": 1}}


def cifar10(root: Path) -> dict[str, Any]:
    RawWriters.cifar10(root, per_batch=N_TRAIN // 5, n_test=N_TEST)
    return {"data": {"root": str(root)}}


def cifar10_default_model(root: Path) -> dict[str, Any]:
    """CIFAR-10 for a preset that sets no data (linear-authors-cifar), on params.yaml's
    model: the small CNN, which keeps the compiled run's compilation short."""
    return {"data": {**cifar10(root)["data"], "name": "cifar10", "image_size": 32, "channels": 3}}


def image_folder(root: Path) -> dict[str, Any]:
    for split, per_class in (("train", N_TRAIN // 4), ("val", N_TEST // 4)):
        counts: dict[str | None, int] = {f"n0144{k}": per_class for k in range(4)}
        RawWriters.image_folder(root / split, counts, fmt="JPEG", size=48, seed=len(split))
    return {
        "data": {"root": str(root), "image_size": 32},  # 224 x 224 ResNet-50s: too slow here
        "pretrain": {"num_workers": 2},  # 12 workers on 2 cores would only contend
    }


# preset -> (writer of its tiny data + its own scaled keys, compiled?)
RUNS: dict[str, tuple[Callable[[Path], dict[str, Any]], bool]] = {
    "fmnist-gpu": (fashion_mnist, False),
    "cifar10-authors": (cifar10, False),
    "imagenet-authors": (image_folder, False),
    "linear-authors-cifar": (cifar10_default_model, True),
}


def merged(*overlays: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for overlay in overlays:
        for section, values in overlay.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def project_config(tmp_path: Path, preset: str) -> Config:
    """params.yaml + the preset + GPU_OPTIONS, SCALED and the data's keys, in tmp_path/project."""
    writer, compiled = RUNS[preset]
    overlay = merged(
        GPU_OPTIONS,
        SCALED,
        writer(tmp_path / "raw"),
        {"pretrain": {"compile": compiled}},
    )
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    apply_preset(project / "params.yaml", ROOT / "presets" / f"{preset}.yaml")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(overlay))
    apply_preset(project / "params.yaml", tmp_path / "tiny.yaml")
    return load_config(project / "params.yaml")


def compilations() -> dict[str, int]:
    """Graphs TorchDynamo has compiled, and graph breaks, since its last reset."""
    from torch._dynamo.utils import counters

    graph_breaks = sum(counters["graph_break"].values())
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": graph_breaks}


@pytest.fixture
def fresh_dynamo() -> Any:
    """TorchDynamo's caches and counters cleared before and after the test."""
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_channels_last_is_auto_true_or_false_also_as_snakemake_s_strings() -> None:
    for given, meant in [("auto", "auto"), (True, True), (False, False)]:
        assert config_from_dict({"pretrain": {"channels_last": given}}).pretrain.channels_last == (
            meant
        )
        # Snakemake's --config delivers nested values as strings; they are typed again
        typed = restore_types({"pretrain": {"channels_last": str(given).lower()}})
        assert typed["pretrain"]["channels_last"] == meant
    with pytest.raises(InvpropError, match="channels_last = 'nhwc' is invalid: expected one of"):
        config_from_dict({"pretrain": {"channels_last": "nhwc"}})


@pytest.mark.parametrize(
    ("precision", "channels_last", "dtype", "nhwc"),
    [
        ("bf16", True, torch.bfloat16, True),
        ("auto", "auto", torch.float32, False),  # the defaults: fp32 and NCHW on the CPU
        ("fp32", False, torch.float32, False),
        ("auto", True, torch.float32, True),
    ],
)
def test_precision_and_layout_mean_on_the_cpu_what_they_mean_on_a_gpu(
    precision: str, channels_last: bool | str, dtype: torch.dtype, nhwc: bool
) -> None:
    """What the first convolution puts out in a training step (RGB images) and in
    `extract` (grey images, a fresh encoder): bf16 where precision asks for it, NHWC where
    channels_last does (auto means neither on the CPU); the bank stays fp32."""
    seen: list[tuple[torch.dtype, bool]] = []

    def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        seen.append((output.dtype, output.is_contiguous(memory_format=torch.channels_last)))

    for channels in (3, 1):
        cfg = config_from_dict(
            {
                "data": {"name": "synthetic", "image_size": 16, "channels": channels},
                "model": {"dim": 8},
                "pretrain": {
                    "precision": precision,
                    "channels_last": channels_last,
                    "n_background": 16,
                },
                "transfer": {"targets": []},
            }
        )
        encoder = build_encoder(cfg)
        encoder.backbone[0].register_forward_hook(record)
        images = torch.randint(0, 256, (6, channels, 16, 16), dtype=torch.uint8)
        if channels == 3:
            bank = MemoryBank(32, 8, cfg.pretrain.k)
            bank.init_random(torch.Generator().manual_seed(0))
            augment = BatchAugment(cfg.augment, 16, [0.5] * 3, [0.25] * 3)
            optimizer = make_optimizer(cfg, encoder)
            training_step(encoder, bank, optimizer, augment, images, torch.arange(6), cfg, 1, 0)
            assert bank.vectors.dtype == torch.float32
        else:
            split = Split("test", images.numpy(), np.zeros(6, dtype=np.int64))
            meta = {"dataset": "synthetic", "mean": [0.5], "std": [0.25]}
            features, embeddings = extract(encoder, split, meta, cfg, "cpu", batch_size=3)
            assert features.dtype == embeddings.dtype == torch.float32
    assert seen == [(dtype, nhwc)] * 3  # the step, then extract's two batches


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(RUNS))
def test_gpu_preset_runs_on_the_cpu_in_bf16_channels_last(
    tmp_path: Path, preset: str, fresh_dynamo: Any
) -> None:
    cfg = project_config(tmp_path, preset)
    project = tmp_path / "project"
    preset_params = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    for section in ("model", "augment"):  # the preset's network and views, unscaled
        resolved = cfg.to_dict()[section]
        assert resolved == {**resolved, **preset_params.get(section, {})}, section

    with contextlib.chdir(project):
        for stage in STAGES:
            run_stage(stage, cfg)
            if stage == "pretrain":
                compiled = compilations()

    final = load_checkpoint(project / PRETRAIN.final)
    trained = final["config"]["pretrain"]
    assert (trained["precision"], trained["channels_last"]) == ("bf16", True)
    history = final["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert all(math.isfinite(row[key]) for key in ("loss", "loss_instance", "loss_invariance"))
    assert history[0]["loss_invariance"] == 0 < history[1]["loss_invariance"]

    # bf16 is the network's arithmetic only: what training keeps stays full precision
    bank = final["bank"]
    assert bank["vectors"].dtype == torch.float32 and bank["neighbours"].dtype == torch.int64
    assert bank["vectors"].shape == (N_TRAIN, cfg.model.dim)
    assert torch.allclose(bank["vectors"].norm(dim=1), torch.ones(N_TRAIN), atol=1e-5)
    assert ((bank["neighbours"] >= 0) & (bank["neighbours"] < N_TRAIN)).all()
    floats = [t for t in final["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    momenta = [s["momentum_buffer"] for s in final["optimizer"]["state"].values()]
    assert momenta and all(t.dtype == torch.float32 for t in momenta)
    convolutions = [t for t in final["model"].values() if t.dim() == 4 and t.shape[1] > 1]
    assert convolutions
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in convolutions)

    # the snapshot reloads, and resumes to the uninterrupted run's final state, bit for bit
    resumed = TrainingRun(tmp_path / "resumed/models", tmp_path / "resumed/curves")
    resumed.last.parent.mkdir(parents=True)
    shutil.copy(project / PRETRAIN.snapshot(1), resumed.last)
    with contextlib.chdir(project):
        assert train(cfg, resumed)["epochs"] == 2
    assert same_training_state(final, load_checkpoint(resumed.final))

    for tag in cfg.embed.tags:
        embeddings = load_embeddings(project / "artifacts/embeddings" / tag)
        for kind in ("features", "embeddings"):
            assert embeddings[f"train_{kind}"].dtype == np.float32, (tag, kind)
            assert np.isfinite(embeddings[f"test_{kind}"]).all(), (tag, kind)

    metrics = json.loads((project / "reports/evaluate.json").read_text())
    written = [f"invp/knn_clean/embeddings/k{k}/top1" for k in cfg.evaluate.knn_k]
    written += ["invp/knn_bank/k200/top1", "invp/linear/top1"]
    for key in written:
        assert 0 <= metrics[key] <= 1, key
    assert metrics["invp/linear/protocol"] == cfg.evaluate.linear.protocol

    if cfg.pretrain.compile:
        # 2 epochs of 3 steps in 2 batch shapes (27 and 26 images): a compilation for the
        # first, at most one more (with the batch dimension dynamic) for the second
        assert 1 <= compiled["graphs"] <= 2 and not compiled["graph_breaks"], compiled
    else:
        assert compiled["graphs"] == 0
