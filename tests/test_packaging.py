"""The set-ups install exactly one neighbour-search package (faiss-cpu and faiss-gpu both
provide the `faiss` module, and pip cannot install one in place of the other), and the
export extra."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def faiss_packages(requirements: list[str]) -> list[str]:
    return [r for r in requirements if re.match(r"faiss[-_]", r)]


def test_faiss_is_an_extra_and_the_makefile_installs_the_cpu_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert faiss_packages(project["dependencies"]) == []
    assert [p.split(">")[0] for p in faiss_packages(extras["cpu"])] == ["faiss-cpu"]
    assert [p.split(">")[0] for p in faiss_packages(extras["gpu"])] == ["faiss-gpu"]
    assert "--editable '.[dev,cpu,export]'" in (ROOT / "Makefile").read_text()


def test_the_export_extra_is_installed_by_the_makefile_and_pinned() -> None:
    """`invprop ckpt export`'s packages: an extra (the export names it when one is missing),
    which `make` installs so that CI runs tests/test_export.py, each pinned."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = [re.split(r"[<>=]", requirement)[0] for requirement in extras["export"]]
    assert names == ["timm", "safetensors", "onnx", "onnxscript", "onnxruntime"]
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    assert set(names) <= pinned


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_each_extra_resolves_to_one_faiss_package(extra: str) -> None:
    """pip's own resolver on the extra's requirements, as in a fresh environment. The base
    dependencies hold no faiss (above); a full `.[gpu]` resolution is in docs/results.md."""
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ][extra]
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
    result = subprocess.run(
        [*pip, "--report", "-", *requirements],
        capture_output=True,
        text=True,
        timeout=300,
    )
    offline = re.search(r"connection|resolve host|network", result.stderr, re.I)
    if result.returncode != 0 and offline:
        pytest.skip(f"the package registry is unreachable: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    names = [item["metadata"]["name"] for item in json.loads(result.stdout)["install"]]
    assert [n for n in names if n.startswith("faiss")] == [f"faiss-{extra}"]
