"""The set-ups install exactly one neighbour-search package (faiss-cpu and faiss-gpu both
provide the `faiss` module, and pip cannot install one in place of the other), and the
export and slurm extras, which the tests need."""

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


def makefile_extras() -> set[str]:
    """The extras the Makefile's set-up installs: `--editable '.[dev,cpu,...]'`."""
    match = re.search(r"--editable '\.\[([^\]]+)\]'", (ROOT / "Makefile").read_text())
    assert match, "the Makefile installs the project with no extras"
    return set(match.group(1).split(","))


def test_faiss_is_an_extra_and_the_makefile_installs_the_cpu_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert faiss_packages(project["dependencies"]) == []
    assert [p.split(">")[0] for p in faiss_packages(extras["cpu"])] == ["faiss-cpu"]
    assert [p.split(">")[0] for p in faiss_packages(extras["gpu"])] == ["faiss-gpu"]
    assert "cpu" in makefile_extras() and "gpu" not in makefile_extras()


@pytest.mark.parametrize(
    ("extra", "packages"),
    [
        ("export", ["timm", "safetensors", "onnx", "onnxscript", "onnxruntime"]),
        ("slurm", ["snakemake-executor-plugin-slurm"]),
    ],
)
def test_the_extras_the_tests_need_are_installed_by_the_makefile_and_pinned(
    extra: str, packages: list[str]
) -> None:
    """`invprop ckpt export`'s packages and Snakemake's SLURM executor: extras (the export
    names its extra when a package is missing), which `make` installs so that CI runs
    tests/test_export.py and tests/test_slurm.py, each pinned."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = [re.split(r"[<>=]", requirement)[0] for requirement in extras[extra]]
    assert names == packages
    assert extra in makefile_extras()
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
