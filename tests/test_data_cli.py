"""`invprop data show|grid` on prepared folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from invprop.cli import app
from invprop.stages.prepare import prepare

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, writers, data_config):
    """One arrays dataset (synthetic, 3 channels) and one files dataset (unlabeled part)."""
    base = tmp_path_factory.mktemp("cli")
    cfg = data_config("synthetic", channels=3, image_size=16, train_limit=60, test_limit=20)
    prepare(cfg, "synthetic", base / "synthetic", base / "r1.json")
    writers.image_folder(base / "raw/train", {"cat": 4, "dog": 4})
    writers.image_folder(base / "raw/val", {None: 3})
    cfg = data_config("imagefolder", root=str(base / "raw"))
    prepare(cfg, "imagefolder", base / "folder", base / "r2.json")
    return base


def test_show_table(prepared):
    result = runner.invoke(app, ["data", "show", str(prepared / "synthetic")])
    assert result.exit_code == 0, result.output
    for text in ("synthetic", "arrays", "[3, 16, 16]", "60 / 20", "triangle_down", "size on disk"):
        assert text in result.output
    result = runner.invoke(app, ["data", "show", str(prepared / "folder")])
    assert result.exit_code == 0, result.output
    assert "(unlabeled)" in result.output and "files" in result.output


def test_show_json(prepared):
    result = runner.invoke(app, ["data", "show", str(prepared / "folder"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "files" and info["counts"] == {"train": 8, "test": 3}
    assert info["per_class"] == [
        {"class": "cat", "train": 4, "test": 0},
        {"class": "dog", "train": 4, "test": 0},
    ]
    assert info["unlabeled"] == {"train": 0, "test": 3} and info["size_bytes"] > 0


@pytest.mark.parametrize(("name", "split"), [("synthetic", "train"), ("folder", "test")])
def test_grid_png(prepared, tmp_path, name, split):
    from PIL import Image

    out = tmp_path / "grid.png"
    args = ["data", "grid", str(prepared / name), "--out", str(out), "--split", split]
    result = runner.invoke(app, [*args, "--per-class", "4", "--max-classes", "5"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100


def test_user_errors_are_one_line(tmp_path, prepared):
    result = runner.invoke(app, ["data", "show", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert (
        result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    )
    out = str(tmp_path / "g.png")
    result = runner.invoke(
        app, ["data", "grid", str(prepared / "synthetic"), "--out", out, "--split", "val"]
    )
    assert result.exit_code == 2 and "unknown split 'val'" in result.output


def test_cli_module_import_stays_light():
    code = (
        "import sys, invprop.cli.data; "
        "heavy = [m for m in ('torch', 'matplotlib', 'numpy', 'PIL') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
