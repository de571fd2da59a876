"""The ImageNet presets end to end on a tiny ImageNet-style folder of JPEGs.

params.yaml + presets/imagenet-authors.yaml (the authors' code: MLP head without
BatchNorm, tau 0.2, concatenated propagation, MoCo-v2 augmentation with blur) or
presets/imagenet-paper.yaml (the paper's settings: linear head, tau 0.07, exact BFS, the
paper's background, step schedule), then an overlay that lowers only what 48 tiny images
on a CPU force: the image size, epochs (and the ramp, snapshot and schedule epochs with
them), batch, background M (at most the 36 train images), workers and the linear probe's
epochs; transfer is off. The rest of each preset stays: ResNet-50, P = 50, k = 4, 3 hops,
random bank init, HNSW graph, the authors' linear protocol. The stages prepare ->
pretrain -> instance_discrimination -> embed -> graph -> propagate -> evaluate run in a
temporary project folder, the image folder streamed through DataLoader workers, which
crop each whole image.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from invprop.checkpoint import load_checkpoint
from invprop.config import apply_preset, load_config
from invprop.pipeline import run_stage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "prepare",
    "pretrain",
    "instance_discrimination",  # the preset's baseline: InvP off, same recipe
    "embed",
    "graph",
    "propagate",
    "evaluate",
)
CLASSES = ("n01440764", "n01443537", "n01484850")  # ImageNet synset folder names
TRAIN_PER_CLASS, VAL_PER_CLASS = 12, 4
N_TRAIN = TRAIN_PER_CLASS * len(CLASSES)
# What the tiny data forces, and nothing more.
TINY = {
    # ResNet-50 on two CPU cores; stored at 36 x 36 (8/7 margin for the random crop).
    "data": {"image_size": 32},
    "pretrain": {
        # Two epochs: the random bank init has no neighbour table in epoch 1, so the
        # propagation term (P = 50 hard positives) first has positives in epoch 2.
        "epochs": 2,
        "ramp_epoch": 1,
        "snapshot_epochs": [],  # the preset's 30, 200, 400 are past the last epoch
        "batch_size": 12,  # 256 > the 36 train images; 12 gives 3 steps an epoch
        "n_background": N_TRAIN,  # M = 4096 cannot exceed the memory bank
        "num_workers": 2,  # 12 workers on a 2-core machine would only contend
        "device": "cpu",
        "lr_milestones": [2],  # imagenet-paper's 400, 600, 700 are past the last epoch
    },
    "evaluate": {"linear": {"epochs": 1, "milestones": []}},
    "transfer": {"targets": []},
}
FRACTION_KEY = re.compile(r"(^|/)(top\d+)$")


def write_jpegs(folder: Path, per_class: int, rng: np.random.Generator) -> None:
    """40 x 48 JPEGs per class folder: coloured 8 x 8 blocks, class k brighter in channel k."""
    from PIL import Image

    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            blocks = rng.integers(0, 90, (5, 6, 3))
            blocks[..., k] += 140
            pixels = np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{name}_{i:04d}.JPEG", quality=90)


@pytest.mark.parametrize("preset_name", ["imagenet-authors", "imagenet-paper"])
def test_imagenet_preset_runs_end_to_end(tmp_path: Path, preset_name: str) -> None:
    rng = np.random.default_rng(0)
    write_jpegs(tmp_path / "imagenet/train", TRAIN_PER_CLASS, rng)
    write_jpegs(tmp_path / "imagenet/val", VAL_PER_CLASS, rng)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    apply_preset(project / "params.yaml", ROOT / "presets" / f"{preset_name}.yaml")
    overlay = {**TINY, "data": {**TINY["data"], "root": str(tmp_path / "imagenet")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(overlay))
    apply_preset(project / "params.yaml", tmp_path / "tiny.yaml")
    cfg = load_config(project / "params.yaml")
    preset = yaml.safe_load((ROOT / "presets" / f"{preset_name}.yaml").read_text())
    assert cfg.to_dict()["model"] == preset["model"]
    assert cfg.to_dict()["augment"] == {**cfg.to_dict()["augment"], **preset["augment"]}

    with contextlib.chdir(project):
        for stage in STAGES:
            run_stage(stage, cfg)

    prepared = json.loads((project / "data/prepared/imagefolder/meta.json").read_text())
    assert prepared["format"] == "files" and prepared["classes"] == list(CLASSES)
    assert prepared["counts"] == {"train": N_TRAIN, "test": VAL_PER_CLASS * len(CLASSES)}
    assert prepared["shape"] == [3, 36, 36]

    final = load_checkpoint(project / "models/pretrain/final.pt")
    trained = final["config"]["pretrain"]
    for key in ("temperature", "n_pos", "k", "hops", "positives", "bank_init", "lr"):
        assert trained[key] == preset["pretrain"][key], key
    epochs = final["history"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert all(math.isfinite(row["loss"]) for row in epochs)
    assert epochs[0]["loss_invariance"] == 0 < epochs[1]["loss_invariance"]

    embedded = json.loads((project / "artifacts/embeddings/final/meta.json").read_text())
    assert embedded["dims"] == {"features": 2048, "embeddings": 128}  # ResNet-50, 128-d head
    graph = json.loads((project / "reports/graph_final.json").read_text())
    assert graph["index"] == "hnsw" and graph["n"] == N_TRAIN and 0 <= graph["recall"] <= 1
    assert (project / "artifacts/propagation/final/positives.npz").is_file()
    propagated = json.loads((project / "reports/propagate_final.json").read_text())
    assert propagated["n"] == N_TRAIN

    metrics = json.loads((project / "reports/evaluate.json").read_text())
    assert metrics["evaluate/train_images"] == N_TRAIN
    assert metrics["invp/linear/protocol"] == "sgd_augmented"
    fractions = {key: value for key, value in metrics.items() if FRACTION_KEY.search(key)}
    assert "invp/linear/top1" in fractions and "invp/knn_clean/features/k20/top1" in fractions
    assert "instance_discrimination/linear/top1" in fractions
    # the authors' ImageNet probe: a classifier on each of the four blocks they score, the
    # last (layer4.2, the pooled features) as the headline
    for layer in ("layer3.5", "layer4.0", "layer4.1", "layer4.2"):
        assert f"invp/linear/layers/{layer}/top1" in fractions
        assert f"invp/linear/layers/{layer}/authors_best_on_test/top1" in fractions
    assert metrics["invp/linear/top1"] == metrics["invp/linear/layers/layer4.2/top1"]
    assert metrics["invp/linear/authors_best_on_test/epoch"] == 0  # scored before epoch 1 only
    assert all(0 <= value <= 1 for value in fractions.values()), fractions
