"""The prepare stage: artifact layout, meta.json, the reader's checks, and bad input that
must fail with one clear line while the previous prepared folder stays complete."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from invprop.config import config_from_dict, params_hash
from invprop.data import as_tensor, convert_channels, load_prepared
from invprop.errors import InvpropError
from invprop.pipeline import main as stage_main
from invprop.stages.prepare import run

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("transfer:\n  targets: []\n")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_synthetic_artifact_and_meta(in_tmp, data_config):
    cfg = data_config("synthetic", train_limit=100, test_limit=30)
    run(cfg)  # no argument: every dataset of cfg.prepared_datasets()
    folder = in_tmp / "data/prepared/synthetic"
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta.json",
        "test_images.npy",
        "test_labels.npy",
        "train_images.npy",
        "train_labels.npy",
    ]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["version"] == 1 and meta["dataset"] == "synthetic" and meta["format"] == "arrays"
    assert meta["shape"] == [1, 28, 28] and len(meta["classes"]) == 10
    assert meta["counts"] == {"train": 100, "test": 30}
    assert meta["class_counts"]["train"] == [10] * 10 and sum(meta["class_counts"]["test"]) == 30
    assert meta["params"] == {
        "data_hash": params_hash(cfg.to_dict("data")["data"]),  # every data key: main dataset
        "data_seed": 0,
        "train_limit": 100,
        "test_limit": 30,
    }
    assert "prepare_seconds" not in meta and meta["sources"] == []  # timings: report only

    ds = load_prepared(folder)
    images = np.asarray(ds.train.images)
    assert images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(meta["mean"], [pixels.mean()], atol=1e-6)
    np.testing.assert_allclose(meta["std"], [pixels.std()], atol=1e-6)

    report = json.loads((in_tmp / "reports/prepare_synthetic.json").read_text())
    assert report["counts"] == meta["counts"] and report["seconds"] > 0
    assert report["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())


def test_a_transfer_target_takes_nothing_from_the_pretraining_datasets_subset(in_tmp, data_config):
    """Its stage does not track data.train_limit / test_limit, so they must not shape a
    target (a synthetic target once took them, and its meta hashed the whole data section)."""
    folder = in_tmp / "data/prepared/synthetic"
    run(data_config("digits", train_limit=50, test_limit=20), "synthetic")
    first = snapshot(folder)
    run(data_config("digits", train_limit=80), "synthetic")
    assert snapshot(folder) == first
    assert json.loads(first["meta.json"])["counts"] == {"train": 2000, "test": 500}


def test_prepare_is_deterministic_and_limits_follow_the_data_seed(in_tmp, data_config):
    run(data_config("digits", train_limit=200), "digits")
    first = snapshot(in_tmp / "data/prepared/digits")
    run(data_config("digits", train_limit=200), "digits")
    second = snapshot(in_tmp / "data/prepared/digits")
    assert {k: v for k, v in first.items() if k != "meta.json"} == {
        k: v for k, v in second.items() if k != "meta.json"
    }
    ds = load_prepared(in_tmp / "data/prepared/digits")
    assert len(ds.train) == 200 and ds.meta["native_counts"]["train"] == 1438
    assert max(ds.meta["class_counts"]["train"]) - min(ds.meta["class_counts"]["train"]) <= 2
    # The training seed leaves the subset alone; the data seed draws another.
    trained_otherwise = {
        "seed": 1,
        "data": {"name": "digits", "train_limit": 200},
        "transfer": {"targets": []},
    }
    run(config_from_dict(trained_otherwise), "digits")
    assert (
        snapshot(in_tmp / "data/prepared/digits")["train_labels.npy"] == (first["train_labels.npy"])
    )
    reseeded = {
        "data": {"name": "digits", "train_limit": 200, "seed": 1},
        "transfer": {"targets": []},
    }
    run(config_from_dict(reseeded), "digits")
    assert (
        snapshot(in_tmp / "data/prepared/digits")["train_labels.npy"] != (first["train_labels.npy"])
    )


def test_tensor_helpers(in_tmp, data_config):
    import torch

    run(data_config("synthetic", channels=3, image_size=16, train_limit=20, test_limit=10))
    ds = load_prepared(in_tmp / "data/prepared/synthetic")
    x = as_tensor(ds.train)
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 16, 16)
    np.testing.assert_array_equal(x.numpy(), ds.train.images)
    grey = convert_channels(x, 1)
    assert grey.shape == (20, 1, 16, 16) and grey.dtype == torch.uint8
    from PIL import Image

    reference = np.asarray(Image.fromarray(x[0].permute(1, 2, 0).numpy()).convert("L"))
    assert np.abs(grey[0, 0].numpy().astype(int) - reference).max() <= 1  # BT.601, as PIL
    back = convert_channels(grey, 3)
    assert back.shape == x.shape and torch.equal(back[:, 0], back[:, 2])
    assert convert_channels(x, 3) is x
    with pytest.raises(ValueError, match="only 1 <-> 3"):
        convert_channels(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), 3)


# --- the reader refuses incomplete or inconsistent folders -----------------------------


def _drop(folder: Path) -> None:
    (folder / "test_labels.npy").unlink()


def _short_labels(folder: Path) -> None:
    np.save(folder / "train_labels.npy", np.zeros(5, np.int64))


def _float_images(folder: Path) -> None:
    np.save(folder / "test_images.npy", np.zeros((10, 1, 28, 28), np.float32))


def _wrong_count(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["counts"]["train"] += 1
    (folder / "meta.json").write_text(json.dumps(meta))


def _bad_json(folder: Path) -> None:
    (folder / "meta.json").write_text("{ not json")


def _old_version(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["version"] = 0
    (folder / "meta.json").write_text(json.dumps(meta))


def _label_range(folder: Path) -> None:
    np.save(folder / "test_labels.npy", np.full(10, 10, np.int64))


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_drop, r"test_labels.npy: missing"),
        (_short_labels, r"train_labels.npy: 5 labels for 20 images"),
        (_float_images, r"test_images.npy: expected uint8"),
        (_wrong_count, r"train_images.npy: 20 images but meta.json counts"),
        (_bad_json, r"meta.json: not valid JSON"),
        (_old_version, r"meta.json: version 0"),
        (_label_range, r"test_labels.npy: labels outside -1..9"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_reader_validates(in_tmp, data_config, corrupt, expected):
    run(data_config("synthetic", train_limit=20, test_limit=10))
    folder = in_tmp / "data/prepared/synthetic"
    corrupt(folder)
    with pytest.raises(InvpropError, match=expected) as error:
        load_prepared(folder)
    assert "rerun the prepare stage" in str(error.value) and "\n" not in str(error.value)


def test_reader_missing_folder(tmp_path):
    with pytest.raises(InvpropError, match=r"nothing not found; rerun the prepare stage"):
        load_prepared(tmp_path / "nothing")


# --- bad input: one clear line, and the previous prepared folder survives ---------------


def _cifar_missing_root(raw: Path, writers) -> tuple[Path, str]:
    return raw / "missing", r"missing does not exist; set data.root"


def _cifar_corrupt_pickle(raw: Path, writers) -> tuple[Path, str]:
    bad = raw.parent / "bad"
    shutil.copytree(raw, bad)
    batch = bad / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    return bad, r"data_batch_3: corrupt or truncated pickle"


def _cifar_evil_pickle(raw: Path, writers) -> tuple[Path, str]:
    bad = raw.parent / "bad"
    shutil.copytree(raw, bad)
    payload = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": sys.exit}
    (bad / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(payload))
    return bad, r"data_batch_1: refused to load: the pickle references sys.exit"


def _fmnist_count_mismatch(raw: Path, writers) -> tuple[Path, str]:
    bad = raw.parent / "bad"
    shutil.copytree(raw, bad)
    writers.idx_file(bad / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    return bad, r"train-images-idx3-ubyte.gz and .*: 40 images but 39 labels"


def _folder_no_images(raw: Path, writers) -> tuple[Path, str]:
    bad = raw.parent / "bad"
    (bad / "cat").mkdir(parents=True)
    return bad, r"no images found in .*bad"


def _folder_truncated_image(raw: Path, writers) -> tuple[Path, str]:
    bad = raw.parent / "bad"
    shutil.copytree(raw, bad)
    image = bad / "dog" / "img_002.png"
    image.write_bytes(image.read_bytes()[:-40])
    return bad, r"dog/img_002.png: corrupt or truncated image"


GOOD = {
    "cifar10": lambda raw, w: w.cifar10(raw),
    "fashion_mnist": lambda raw, w: w.fashion_mnist(raw),
    "imagefolder": lambda raw, w: w.image_folder(raw, {"cat": 5, "dog": 5}),
}


@pytest.mark.parametrize(
    ("name", "break_input"),
    [
        ("cifar10", _cifar_missing_root),
        ("cifar10", _cifar_corrupt_pickle),
        ("cifar10", _cifar_evil_pickle),
        ("fashion_mnist", _fmnist_count_mismatch),
        ("imagefolder", _folder_no_images),
        ("imagefolder", _folder_truncated_image),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else v,
)
def test_bad_input_keeps_previous_artifact(in_tmp, writers, data_config, name, break_input):
    raw = in_tmp / "raw"
    GOOD[name](raw, writers)
    run(data_config(name, root=str(raw)), name)
    folder = in_tmp / "data/prepared" / name
    before = snapshot(folder)

    bad_root, expected = break_input(raw, writers)
    with pytest.raises(InvpropError, match=expected) as error:
        run(data_config(name, root=str(bad_root)), name)
    assert "\n" not in str(error.value)

    assert snapshot(folder) == before
    assert load_prepared(folder).meta["counts"] == json.loads(before["meta.json"])["counts"]
    assert [p.name for p in folder.parent.iterdir()] == [name]  # no temporary leftovers


def test_interrupted_write_keeps_previous_artifact(in_tmp, data_config, monkeypatch):
    run(data_config("synthetic", train_limit=20, test_limit=10))
    folder = in_tmp / "data/prepared/synthetic"
    before = snapshot(folder)
    real_save, calls = np.save, []

    def save_then_interrupt(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(data_config("synthetic", train_limit=40, test_limit=10))
    assert snapshot(folder) == before
    assert [p.name for p in folder.parent.iterdir()] == ["synthetic"]


def test_stage_entry_points_exit_2_and_keep_data(in_tmp):
    """stages/prepare.py (subprocess) and `invprop stage prepare` (CliRunner): unknown
    dataset, bad params value, dataset error: exit 2, one line, nothing lost."""
    from typer.testing import CliRunner

    from invprop.cli import app

    assert stage_main("prepare", ["synthetic", "--set", "data.train_limit=30"]) == 0
    folder = in_tmp / "data/prepared/synthetic"
    before = snapshot(folder)

    result = subprocess.run(
        [sys.executable, str(ROOT / "stages/prepare.py"), "no_such_data"],
        capture_output=True,
        text=True,
        cwd=in_tmp,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()
        == [
            result.stderr.strip(),
        ]
        and "unknown dataset 'no_such_data'" in result.stderr
    )

    runner = CliRunner()
    result = runner.invoke(app, ["stage", "prepare", "synthetic", "--set", "data.train_limit=0"])
    assert result.exit_code == 2
    assert "data.train_limit = 0 is out of range" in result.output

    assert stage_main("prepare", ["synthetic", "--set", "data.channels=2"]) == 2
    code = stage_main("prepare", ["cifar10", "--set", f"data.root={in_tmp / 'none'}"])
    assert code == 2
    assert snapshot(folder) == before


# --- the real Fashion-MNIST (the "done when" check) ------------------------------------


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(in_tmp, data_config):
    from typer.testing import CliRunner

    from invprop.cli import app

    run(data_config("fashion_mnist"), "fashion_mnist")
    result = CliRunner().invoke(app, ["data", "show", "data/prepared/fashion_mnist", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["counts"] == {"train": 60000, "test": 10000}
    assert info["class_counts"] == {"train": [6000] * 10, "test": [1000] * 10}
    assert info["per_class"][9] == {"class": "Ankle boot", "train": 6000, "test": 1000}
    assert Path(info["sources"][0]["path"]).name == "train-images-idx3-ubyte.gz"
    assert abs(info["mean"][0] - 0.2860) < 1e-3 and abs(info["std"][0] - 0.3530) < 1e-3
    ds = load_prepared("data/prepared/fashion_mnist")
    assert ds.train.labels[0] == 9 and ds.train.images.shape == (60000, 1, 28, 28)
