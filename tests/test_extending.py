"""docs/extending.md stays true: its snippets, applied to a copy of the repository, run.

Each `python file=PATH` block of the guide is added at the end of PATH (or makes PATH), each
`diff file=PATH` block replaces its `-` lines by its `+` lines where its unmarked lines
stand (exactly once). The copy then runs the tests the snippets add, one tiny training with
the new propagator, backbone and dataset, and the new baseline stage with the tests that
keep the pipeline consistent (layout, dependencies, the DAG of both orchestrators).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"
SNIPPET = re.compile(r"^```(python|diff) file=(\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODEL_EXAMPLES = ("A propagator", "A backbone", "A dataset")
BASELINE_EXAMPLE = "A baseline training stage"


@dataclass(frozen=True)
class Snippet:
    kind: str  # "python" (added) or "diff" (a change)
    path: str
    body: str


def guide_sections() -> dict[str, list[Snippet]]:
    """The snippets of each `## ` section of the guide, by the section's title up to `:`."""
    sections: dict[str, list[Snippet]] = {}
    for block in re.split(r"^## ", GUIDE.read_text(), flags=re.MULTILINE)[1:]:
        title = block.splitlines()[0].split(":")[0]
        sections[title] = [Snippet(*m.groups()) for m in SNIPPET.finditer(block)]
    return sections


def apply(root: Path, snippet: Snippet) -> None:
    target = root / snippet.path
    if snippet.kind == "python":
        if target.exists():
            target.write_text(target.read_text().rstrip("\n") + "\n\n\n" + snippet.body)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(snippet.body)
        return
    old, new = [], []
    for line in snippet.body.splitlines():
        marker, text = line[:1] or " ", line[1:]
        if marker not in " -+":
            raise ValueError(f"{snippet.path}: a diff line starts with {marker!r}: {line!r}")
        if marker != "+":
            old.append(text)
        if marker != "-":
            new.append(text)
    before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
    text = target.read_text()
    assert text.count(before) == 1, f"{snippet.path}: the lines the change replaces:\n{before}"
    target.write_text(text.replace(before, after))


def added_tests(snippets: list[Snippet]) -> list[str]:
    """pytest ids of the test functions the snippets add."""
    return [
        f"{snippet.path}::{node.name}"
        for snippet in snippets
        if snippet.kind == "python" and snippet.path.startswith("tests/")
        for node in ast.parse(snippet.body).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


def copy_of_repo(into: Path, *paths: str) -> Path:
    for path in paths:
        source, target = ROOT / path, into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return into


def run(args: list[str], cwd: Path, code: Path) -> subprocess.CompletedProcess[str]:
    """`args` with the copy's invprop first on the path."""
    env = os.environ | {"PYTHONPATH": str(code), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def pytest_in(code: Path, *tests: str) -> None:
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], code, code
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def stage(name: str, *args: str, work: Path, code: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "invprop.pipeline", name, *args, "--params", "params.yaml", "-q"],
        work,
        code,
    )


def test_the_guide_has_its_four_examples_each_with_code_and_a_test() -> None:
    sections = guide_sections()
    for title in (*MODEL_EXAMPLES, BASELINE_EXAMPLE):
        snippets = sections[title]
        assert added_tests(snippets), title
        assert any(s.path.startswith("invprop/") for s in snippets), title


def test_a_diff_snippet_applies_only_where_its_lines_stand_once(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\ny = 2\ny = 2\n")
    apply(tmp_path, Snippet("diff", "a.py", " x = 1\n-y = 2\n+y = 3\n"))
    assert (tmp_path / "a.py").read_text() == "x = 1\ny = 3\ny = 2\n"
    with pytest.raises(AssertionError, match="the lines the change replaces"):
        apply(tmp_path, Snippet("diff", "a.py", "-y = 9\n+y = 3\n"))
    apply(tmp_path, Snippet("python", "b/c.py", "z = 0\n"))
    apply(tmp_path, Snippet("python", "b/c.py", "w = 1\n"))
    assert (tmp_path / "b" / "c.py").read_text() == "z = 0\n\n\nw = 1\n"


@pytest.mark.slow
def test_the_propagator_backbone_and_dataset_of_the_guide_train(tmp_path: Path) -> None:
    code = copy_of_repo(tmp_path / "repo", "invprop", "tests", "pyproject.toml")
    sections = guide_sections()
    snippets = [snippet for title in MODEL_EXAMPLES for snippet in sections[title]]
    for snippet in snippets:
        apply(code, snippet)
    pytest_in(code, *added_tests(snippets))

    # One tiny epoch: the npz dataset, the tiny_cnn backbone, the one_hop propagator.
    work = tmp_path / "work"
    raw = work / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("test", 32)):
        images = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
        np.savez(raw / f"{split}.npz", images=images, labels=np.arange(n) % 4)
    params = {
        "data": {"name": "npz", "root": str(raw), "image_size": 16, "channels": 1},
        "model": {"backbone": "tiny_cnn", "dim": 16},
        "pretrain": {
            "epochs": 1,
            "batch_size": 32,
            "n_background": 32,
            "k": 4,
            "n_pos": 4,
            "propagator": "one_hop",
            "device": "cpu",
            "threads": 1,
        },
        "transfer": {"targets": []},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("prepare", "pretrain"):
        args = ["npz"] if name == "prepare" else []
        result = stage(name, *args, work=work, code=code)
        assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run(
        [
            sys.executable,
            "-c",
            "import json, sys; from invprop.checkpoint import load_checkpoint; "
            "state = load_checkpoint(sys.argv[1]); "
            "print(json.dumps([state['epoch'], state['config']]))",
            "models/pretrain/final.pt",
        ],
        work,
        code,
    )
    assert checkpoint.returncode == 0, checkpoint.stderr[-3000:]
    epoch, config = json.loads(checkpoint.stdout)
    assert epoch == 1
    assert config["data"]["name"] == "npz" and config["model"]["backbone"] == "tiny_cnn"
    assert config["pretrain"]["propagator"] == "one_hop"

    # The propagator's declared bound reaches params validation.
    refused = stage("pretrain", "--set", "pretrain.n_pos=20", work=work, code=code)
    assert refused.returncode == 2
    assert "largest possible positive set of pretrain.propagator 'one_hop', 4" in refused.stderr

    # The new backbone exports without an entry in invprop.export.
    export = run(
        [
            sys.executable,
            "-c",
            "from invprop.cli import main; main()",
            "ckpt",
            "export",
            "models/pretrain/final.pt",
            "--format",
            "safetensors",
            "--out",
            "tiny_cnn.safetensors",
        ],
        work,
        code,
    )
    assert export.returncode == 0, export.stdout + export.stderr
    assert (work / "tiny_cnn.safetensors").stat().st_size > 4000 * 4


@pytest.mark.slow
def test_the_baseline_stage_of_the_guide_trains_and_joins_the_pipeline(tmp_path: Path) -> None:
    code = copy_of_repo(
        tmp_path / "repo",
        "invprop",
        "stages",
        "tests",
        "pyproject.toml",
        "params.yaml",
        "dvc.yaml",
        "Snakefile",
        ".dvc/config",
        ".dvcignore",
        ".gitignore",
    )
    subprocess.run(["git", "init", "-q"], cwd=code, check=True)
    snippets = guide_sections()[BASELINE_EXAMPLE]
    for snippet in snippets:
        apply(code, snippet)
    pytest_in(
        code,
        *added_tests(snippets),
        "tests/test_baselines.py::test_every_training_baseline_has_a_recipe",
        "tests/test_names.py",
        "tests/test_layout.py",
        "tests/test_stage_deps.py",
        "tests/test_pipeline_dag.py",
        "tests/test_config.py::test_params_yaml_restates_exactly_the_defaults",
    )

    work = tmp_path / "work"
    work.mkdir()
    params = {
        "data": {"name": "synthetic", "image_size": 16, "train_limit": 96, "test_limit": 32},
        "model": {"dim": 16},
        "pretrain": {
            "epochs": 1,
            "batch_size": 32,
            "n_background": 32,
            "n_pos": 4,
            "device": "cpu",
            "threads": 1,
        },
        "evaluate": {"baselines": {"easy_positives": True}},
        "transfer": {"targets": []},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for name, args in (("prepare", ["synthetic"]), ("easy_positives", [])):
        result = stage(name, *args, work=work, code=code)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "models" / "easy_positives" / "final.pt").is_file()
    assert (work / "artifacts" / "embeddings" / "easy_positives" / "embeddings.npz").is_file()
    report = json.loads((work / "reports" / "easy_positives.json").read_text())
    assert report["epochs"] == 1
