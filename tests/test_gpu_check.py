"""bench/gpu_check.sh --tiny: every step of the GPU check rehearsed on the CPU, as a lent
GPU machine would run it: without dvc, dvclive, Snakemake, faiss or ruamel (hidden from
Python here), printing its figures as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RawWriters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("dvc", "dvclive", "snakemake", "faiss", "ruamel")
# Imported by Python at start-up, from the first PYTHONPATH folder: every import of a
# hidden package (or of anything inside it) fails as on a machine without it.
SITECUSTOMIZE = f"""
import sys

class HideModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)", name=name)
        return None

sys.meta_path.insert(0, HideModules())
"""


def hidden_env(tmp_path: Path) -> dict[str, str]:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{ROOT}", "PATH": path}


def test_gpu_check_runs_tiny_on_the_cpu_without_dvc_snakemake_or_faiss(tmp_path: Path) -> None:
    env = hidden_env(tmp_path)
    for name in HIDDEN:  # the premise: each is hidden from the check's Python
        probe = subprocess.run(["python", "-c", f"import {name}"], env=env, capture_output=True)
        assert probe.returncode == 1 and b"(hidden)" in probe.stderr, name
    RawWriters.fashion_mnist(tmp_path / "fashion-mnist", n_train=120, n_test=60)
    command = [
        "bash",
        "bench/gpu_check.sh",
        "--tiny",
        "--fashion-mnist",
        str(tmp_path / "fashion-mnist"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON lines only

    steps = [row for row in lines if row.get("bench") == "pretrain_step"]
    assert [(r["batch_size"], r["bank_size"], r["precision"], r["compile"]) for r in steps] == [
        (8, 256, "auto", False),
        (8, 256, "fp32", False),
        (8, 256, "auto", True),
        (8, 512, "auto", False),
    ]
    assert all(r["device"] == "cpu" and r["images_per_second"] > 0 for r in steps)
    ops = {row["op"] for row in lines if "op" in row}
    assert {"bank_similarities", "top_background", "propagate_exact"} <= ops
    benches = {row.get("bench") for row in lines}
    assert {"augment", "folder_source", "folder_source+augment"} <= benches

    pair = {row["method"]: row for row in lines if row.get("bench") == "quality_pair"}
    assert set(pair) == {"invp", "instance_discrimination"}
    for method, row in pair.items():
        assert (row["preset"], row["precision"], row["epochs"]) == ("fmnist-gpu", "bf16", 2)
        assert row["train_images"] == 100, method  # --tiny's data.train_limit
        for key in ("knn_k200_top1", "knn_bank_k200_top1", "linear_top1"):
            assert 0 <= row[key] <= 1, (method, key)
        assert row["train_seconds"] > 0 and row["evaluate_seconds"] > 0
    assert {"pretrain.snapshot_epochs=[]", "embed.tags=[final]"} <= set(pair["invp"]["overrides"])
    # trained without dvclive: said once per training, and the figures are there all the same
    assert done.stderr.count("dvclive is not installed: no training curves") == 2


def test_gpu_check_refuses_a_missing_data_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--tiny", "--fashion-mnist", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"no Fashion-MNIST folder {tmp_path / 'none'}; pass --fashion-mnist DIR"
    )
