"""`invprop embed CKPT FOLDER`, and kNN and neighbours within its output, on tiny PNG/JPEG
folders, against a plain PIL + encoder reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from invprop.checkpoint import encoder_from_checkpoint, load_checkpoint, save_checkpoint
from invprop.cli import app
from invprop.config import config_from_dict
from invprop.data import load_prepared
from invprop.inference import normalisation
from invprop.stages.prepare import prepare
from invprop.training import train

TINY = {
    "data": {"name": "synthetic", "image_size": 16, "train_limit": 64, "test_limit": 16},
    "model": {"dim": 16},
    "pretrain": {
        "epochs": 1,
        "batch_size": 32,
        "n_background": 32,
        "n_pos": 4,
        "snapshot_epochs": [],
        "threads": 1,
        "monitor_knn": False,
    },
    "embed": {"tags": ["final"]},
    "transfer": {"targets": []},
}
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, writers):
    """A one-epoch checkpoint, a labelled folder (PNG cats, JPEG dogs) and a flat one."""
    root = tmp_path_factory.mktemp("embed_folder")
    cfg = config_from_dict(TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        (root / "params.yaml").write_text(yaml.safe_dump(TINY))
        prepare(cfg, "synthetic")
        train(cfg)
    writers.image_folder(root / "photos", {"cat": 3}, fmt="png", size=32)
    writers.image_folder(root / "photos", {"dog": 2}, fmt="jpg", size=24, seed=7)
    writers.image_folder(root / "flat", {None: 4}, fmt="jpg", size=20, mode="L")
    return root, cfg


def reference_embed(checkpoint: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """PIL resize to the recorded size, normalise with the recorded statistics, encode."""
    state = load_checkpoint(checkpoint)
    pre = state["preprocessing"]
    encoder, _, _ = encoder_from_checkpoint(state)
    mode = "L" if pre["channels"] == 1 else "RGB"
    size = pre["image_size"]
    batch = []
    for path in files:
        image = Image.open(path).convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).reshape(size, size, -1) / 255
        batch.append(torch.from_numpy(pixels).permute(2, 0, 1))
    x = torch.stack(batch)
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        features, embeddings = encoder.embed((x - mean) / std)
    return features.numpy(), embeddings.numpy()


def test_training_records_the_preprocessing(trained) -> None:
    root, cfg = trained
    prepared = load_prepared(root / "data/prepared/synthetic")
    mean, std = normalisation(prepared.meta, cfg.data.channels)
    state = load_checkpoint(root / "models/pretrain/final.pt")
    assert state["preprocessing"] == {
        "image_size": 16,
        "channels": cfg.data.channels,
        "mean": mean,
        "std": std,
        "stored_size": prepared.shape[-1],
    }


def test_embed_a_labelled_folder_with_nothing_but_the_checkpoint(trained, tmp_path) -> None:
    root, _ = trained
    checkpoint = root / "models/pretrain/final.pt"
    out = tmp_path / "photos.npz"
    result = invoke("embed", str(checkpoint), str(root / "photos"), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["counts"] == {"images": 5, "labelled": 5} and meta["epoch"] == 1
    with np.load(out) as data:
        assert data["paths"].tolist() == [f"cat/img_{i:03d}.png" for i in range(3)] + [
            f"dog/img_{i:03d}.jpg" for i in range(2)
        ]
        assert data["classes"].tolist() == ["cat", "dog"]
        assert data["labels"].tolist() == [0, 0, 0, 1, 1]
        features, embeddings = reference_embed(
            checkpoint, [root / "photos" / p for p in data["paths"]]
        )
        # PNGs match to float noise; JPEGs within what PIL's reduced-scale (draft) decoding
        # changes. A wrong size, channel count or normalisation moves values by >> 1e-2.
        np.testing.assert_allclose(data["features"][:3], features[:3], atol=1e-5)
        np.testing.assert_allclose(data["embeddings"][:3], embeddings[:3], atol=1e-5)
        np.testing.assert_allclose(data["features"], features, atol=2e-3)
        np.testing.assert_allclose(data["embeddings"], embeddings, atol=2e-3)


def test_embed_a_flat_folder_knn_and_neighbours(trained, tmp_path) -> None:
    root, _ = trained
    checkpoint = str(root / "models/pretrain/final.pt")
    photos, flat = tmp_path / "photos.npz", tmp_path / "flat.npz"
    assert invoke("embed", checkpoint, str(root / "photos"), "--out", str(photos)).exit_code == 0
    assert invoke("embed", checkpoint, str(root / "flat"), "--out", str(flat)).exit_code == 0
    with np.load(flat) as data:
        assert data["labels"].tolist() == [-1] * 4 and data["classes"].tolist() == []
        assert data["embeddings"].shape == (4, 16)

    # each image is its own nearest neighbour: kNN with k = 1 of a set against itself is exact
    result = invoke("knn", "--train", str(photos), "--queries", str(photos), "--k", "1", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["knn/embeddings/k1/top1"] == 1.0 and scores["knn/features/k1/top1"] == 1.0

    result = invoke("graph", "neighbours", "1", "--embeddings", str(flat), "--k", "2", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    with np.load(flat) as data:
        unit = data["embeddings"] / np.linalg.norm(data["embeddings"], axis=1, keepdims=True)
        paths = data["paths"].tolist()
    sims = unit @ unit[1]
    sims[1] = -np.inf
    expected = np.argsort(-sims, kind="stable")[:2].tolist()
    assert [e["id"] for e in found["neighbours"]] == expected
    assert [e["path"] for e in found["neighbours"]] == [paths[i] for i in expected]
    np.testing.assert_allclose([e["sim"] for e in found["neighbours"]], sims[expected], atol=1e-5)
    table = invoke("graph", "neighbours", "1", "--embeddings", str(photos), "--k", "4")
    assert table.exit_code == 0 and "dog/img_000.jpg" in table.output, table.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("knn", "--train", "{photos}", "--queries", "{flat}"), "no labelled images to be scored"),
        (("knn", "--train", "{photos}"), "both --train and --queries"),
        (("graph", "neighbours", "9", "--embeddings", "{flat}"), "index 9 is out of range"),
        (("embed", "{old}", "{root}/photos", "--out", "{tmp}/x.npz"), "records no image"),
        (("embed", "{ckpt}", "{root}/nowhere", "--out", "{tmp}/x.npz"), "is not a folder"),
        (
            ("embed", "{ckpt}", "{tmp}/empty", "--out", "{tmp}/x.npz"),
            "no images found in",  # and what to pass instead: not the pipeline's data.root
        ),
        (
            ("embed", "{ckpt}", "{tmp}/broken", "--out", "{tmp}/x.npz"),
            "replace or delete the file, then rerun invprop embed",  # not the prepare stage
        ),
    ],
)
def test_user_errors_are_one_line(trained, tmp_path, args, message) -> None:
    root, _ = trained
    checkpoint = root / "models/pretrain/final.pt"
    state = load_checkpoint(checkpoint)
    del state["preprocessing"]
    save_checkpoint(tmp_path / "old.pt", state)
    paths = {
        "photos": tmp_path / "photos.npz",
        "flat": tmp_path / "flat.npz",
        "old": tmp_path / "old.pt",
        "ckpt": checkpoint,
        "root": root,
        "tmp": tmp_path,
    }
    for name in ("photos", "flat"):
        invoke("embed", str(checkpoint), str(root / name), "--out", str(paths[name]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/broken.png").write_bytes(b"not a PNG")
    result = invoke(*(arg.format(**paths) for arg in args))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    if args[0] == "embed":  # the fix is about the folder given, not the pipeline's dataset
        assert "data.root" not in lines[0] and "prepare stage" not in lines[0], lines[0]
    assert not (tmp_path / "x.npz").exists()


def test_an_existing_output_stays_unless_forced(trained, tmp_path) -> None:
    root, _ = trained
    checkpoint = str(root / "models/pretrain/final.pt")
    out = tmp_path / "photos.npz"
    out.write_bytes(b"keep me")
    args = ("embed", checkpoint, str(root / "photos"), "--out", str(out))
    result = invoke(*args)
    assert result.exit_code == 2 and "exists; pass --force" in result.output, result.output
    assert out.read_bytes() == b"keep me"
    assert invoke(*args, "--force").exit_code == 0
    with np.load(out) as data:
        assert data["embeddings"].shape == (5, 16)
    result = invoke("embed", checkpoint, str(root / "photos"), "--out", checkpoint, "--force")
    assert result.exit_code == 2 and "would overwrite the input" in result.output, result.output
    assert load_checkpoint(checkpoint)["epoch"] == 1


def test_a_checkpoint_with_fixed_normalisation_embeds_a_folder(tmp_path, writers) -> None:
    """Presets that fix augment.mean/std (cifar10-paper, imagenet-paper) record them as the
    checkpoint's preprocessing, and a folder is normalised with that record (which names no
    dataset: this used to fail with a KeyError)."""
    from conftest import write_untrained_checkpoint

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    cfg = config_from_dict(
        {
            "data": {"name": "synthetic", "image_size": 16, "channels": 3},
            "augment": {"mean": mean, "std": std},
            "transfer": {"targets": []},
        }
    )
    checkpoint = tmp_path / "fixed.pt"
    write_untrained_checkpoint(cfg, checkpoint, mean, std)
    writers.image_folder(tmp_path / "photos", {"cat": 2}, fmt="png", size=16)
    out = tmp_path / "photos.npz"
    result = invoke("embed", str(checkpoint), str(tmp_path / "photos"), "--out", str(out))
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        features, _ = reference_embed(checkpoint, [tmp_path / "photos" / p for p in data["paths"]])
        np.testing.assert_allclose(data["features"], features, atol=1e-5)
