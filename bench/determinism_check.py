"""Run the default pipeline twice in two fresh clones and compare everything it made.

    nice -n 10 python bench/determinism_check.py --source . --workdir /tmp/det [--parallel]
    python bench/determinism_check.py --workdir /tmp/det --compare-only   # compare again

Both clones (`git clone SOURCE WORKDIR/runA`, `.../runB`) are made first, so they hold the
same commit; then `dvc repro` runs in each with the committed params.yaml, one after the
other (or both at once with --parallel), importing `invprop` from its own clone
(PYTHONPATH) and the tools of this Python's venv.
Compared, run A against run B:

- prepared data and the files of every other cached artifact (embeddings, graphs,
  propagation snapshots, transfer): byte for byte (sha256), except JSON, compared parsed;
- checkpoints (models/pretrain/ and models/instance_discrimination/) tensor by tensor:
  model, bank (vectors and neighbour table), optimizer state, and the other fields
  (epoch, config, history);
- the report's figures, plot data and explorer page byte for byte, and report.md without
  the columns that measure time;
- every metric in reports/*.json and each row of the dvclive training curves.

Keys that measure time or speed (seconds, images_per_second, ...) are left out and listed
as "differs, expected". Checkpoints keep no timings, so equal training must give
byte-identical checkpoint files: differing bytes are unexpected. The summary is printed
and written to WORKDIR/determinism.json; the exit code is 1 if anything else differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from invprop.checkpoint import load_checkpoint
from invprop.io import file_sha256

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # one definition of timing
from run_comparison import MEASURED_COLUMN, TIMING_KEY, without_timing

BIN = Path(sys.executable).parent
ARTIFACT_ROOTS = ("data/prepared", "artifacts")
TRAINING_RUNS = ("models/pretrain", "models/instance_discrimination")
REPORT_FOLDERS = ("reports/figures", "reports/plots", "reports/explorer")
# The parts of a checkpoint that hold tensors (invprop.training.TrainState.to_checkpoint).
TENSOR_PARTS = ("model", "bank", "optimizer")


def run_pipelines(source: Path, clones: list[Path], parallel: bool) -> dict[str, float]:
    """Clone `source` into each of `clones` (all before any run, so all hold one commit),
    then run `dvc repro` in each, one after the other or all at once; wall seconds."""
    for clone in clones:
        if clone.exists():
            raise SystemExit(f"{clone} exists; the check needs fresh clones (or --compare-only)")
    for clone in clones:
        subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    walls: dict[str, float] = {}
    running: list[tuple[Path, subprocess.Popen[bytes], Any, float]] = []

    def finished() -> None:
        """Record the wall time of each run that has ended since the last look."""
        for clone, process, log, start in running:
            if str(clone) not in walls and process.poll() is not None:
                walls[str(clone)] = round(time.monotonic() - start, 1)
                log.close()
                if process.returncode != 0:
                    raise SystemExit(f"dvc repro failed in {clone} (exit {process.returncode})")

    for clone in clones:
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(clone),
            "DVC_NO_ANALYTICS": "1",
        }
        log = open(clone.parent / f"{clone.name}.log", "w")  # noqa: SIM115 - closed in finished()
        process = subprocess.Popen(["dvc", "repro"], cwd=clone, env=env, stdout=log, stderr=log)
        running.append((clone, process, log, time.monotonic()))
        if not parallel:
            process.wait()
            finished()
    while len(walls) < len(running):
        time.sleep(1)
        finished()
    return walls


def commit_of(clone: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
    ).stdout.strip()


def timing_keys(data: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the keys `without_timing` drops."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found |= {path} if TIMING_KEY.search(str(key)) else timing_keys(value, path)
    elif isinstance(data, list):
        for value in data:
            found |= timing_keys(value, f"{prefix}[]")
    return found


def without_timing_columns(markdown: str) -> list[str]:
    """The lines of a markdown text with the cells of timing columns in its tables blanked."""
    lines, timing_columns = [], set()
    for line in markdown.splitlines():
        if not line.startswith("|"):
            timing_columns = set()
            lines.append(line)
            continue
        cells = line.strip("|").split("|")
        if not timing_columns:  # a table's first row names its columns
            timing_columns = {i for i, c in enumerate(cells) if MEASURED_COLUMN.search(c.strip())}
            timing_columns = timing_columns or {-1}  # -1: a table with no timing column
        lines.append("|".join("" if i in timing_columns else c for i, c in enumerate(cells)))
    return lines


def differences(a: Any, b: Any, path: str, counts: dict[str, int]) -> list[str]:
    """Paths where `a` and `b` differ; tensors by dtype, shape and bytes; counts leaves."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        counts["tensors"] += 1
        counts["tensor_elements"] += a.numel()
        same = a.dtype == b.dtype and a.shape == b.shape
        if same and a.numel():
            same = (
                a.contiguous()
                .view(-1)
                .view(torch.uint8)
                .equal(b.contiguous().view(-1).view(torch.uint8))
            )
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} (keys {sorted(set(a) ^ set(b), key=str)})"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}", counts)]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} vs {len(b)})"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]", counts)
        ]
    counts["values"] += 1
    return [] if type(a) is type(b) and a == b else [path]


def files_under(root: Path, folder: str) -> dict[str, Path]:
    base = root / folder
    return {str(p.relative_to(root)): p for p in sorted(base.rglob("*")) if p.is_file()}


def compare(run_a: Path, run_b: Path) -> dict[str, Any]:
    equal: list[str] = []
    expected: list[str] = []
    unexpected: list[str] = []
    counts = {"tensors": 0, "tensor_elements": 0, "values": 0, "files": 0}

    def record(name: str, diffs: list[str]) -> None:
        if diffs:
            unexpected.extend(f"{name}: {d}" for d in diffs[:20])
        else:
            equal.append(name)

    # Cached artifacts: bytes, JSON parsed without timings.
    for folder in ARTIFACT_ROOTS:
        files_a, files_b = files_under(run_a, folder), files_under(run_b, folder)
        if sorted(files_a) != sorted(files_b):
            unexpected.append(f"{folder}: file lists differ {sorted(set(files_a) ^ set(files_b))}")
        for rel in sorted(set(files_a) & set(files_b)):
            counts["files"] += 1
            a, b = files_a[rel], files_b[rel]
            if file_sha256(a) == file_sha256(b):
                equal.append(f"{rel} (bytes)")
            elif a.suffix == ".json":
                data_a, data_b = json.loads(a.read_text()), json.loads(b.read_text())
                record(
                    f"{rel} (parsed, no timing)",
                    differences(without_timing(data_a), without_timing(data_b), "", counts),
                )
                expected.append(f"{rel} bytes: keys {sorted(timing_keys(data_a))}")
            else:
                unexpected.append(f"{rel}: bytes differ")

    # Checkpoints: every tensor, and the other fields without timings.
    ckpts_a, ckpts_b = {}, {}
    for folder in TRAINING_RUNS:
        ckpts_a |= files_under(run_a, folder)
        ckpts_b |= files_under(run_b, folder)
    if sorted(ckpts_a) != sorted(ckpts_b):
        unexpected.append(f"checkpoints: file lists differ {sorted(set(ckpts_a) ^ set(ckpts_b))}")
    for rel in sorted(set(ckpts_a) & set(ckpts_b)):
        counts["files"] += 1
        state_a = load_checkpoint(ckpts_a[rel])
        state_b = load_checkpoint(ckpts_b[rel])
        for part in TENSOR_PARTS:
            record(f"{rel} {part} tensors", differences(state_a[part], state_b[part], part, counts))
        rest = {k: v for k, v in state_a.items() if k not in TENSOR_PARTS}
        rest_b = {k: v for k, v in state_b.items() if k not in TENSOR_PARTS}
        record(
            f"{rel} fields {sorted(rest)} without timing",
            differences(without_timing(rest), without_timing(rest_b), "", counts),
        )
        if file_sha256(ckpts_a[rel]) != file_sha256(ckpts_b[rel]):
            unexpected.append(f"{rel} file bytes differ")

    # Metrics.
    for path_a in sorted((run_a / "reports").glob("*.json")):
        counts["files"] += 1
        data_a = json.loads(path_a.read_text())
        data_b = json.loads((run_b / "reports" / path_a.name).read_text())
        name = f"reports/{path_a.name}"
        record(
            f"{name} (no timing)",
            differences(without_timing(data_a), without_timing(data_b), "", counts),
        )
        dropped = timing_keys(data_a)
        if dropped and file_sha256(path_a) != file_sha256(run_b / "reports" / path_a.name):
            expected.append(f"{name}: keys {sorted(dropped)}")

    # The report: figures by bytes, the markdown without its timing columns.
    for folder in REPORT_FOLDERS:
        files_a, files_b = files_under(run_a, folder), files_under(run_b, folder)
        if sorted(files_a) != sorted(files_b):
            unexpected.append(f"{folder}: file lists differ {sorted(set(files_a) ^ set(files_b))}")
        for rel in sorted(set(files_a) & set(files_b)):
            counts["files"] += 1
            if file_sha256(files_a[rel]) == file_sha256(files_b[rel]):
                equal.append(f"{rel} (bytes)")
            else:
                unexpected.append(f"{rel}: bytes differ")
    report_a, report_b = (run / "reports" / "report.md" for run in (run_a, run_b))
    counts["files"] += 1
    lines_a = without_timing_columns(report_a.read_text())
    lines_b = without_timing_columns(report_b.read_text())
    record(
        "reports/report.md (without timing columns)",
        [f"line {i + 1}" for i, (x, y) in enumerate(zip(lines_a, lines_b, strict=False)) if x != y]
        + ([f"{len(lines_a)} vs {len(lines_b)} lines"] if len(lines_a) != len(lines_b) else []),
    )
    if file_sha256(report_a) != file_sha256(report_b):
        expected.append("reports/report.md: its stage times table")

    # Training curves: every column but the timing ones; curves of a timing are expected
    # to differ.
    for path_a in sorted((run_a / "dvclive").rglob("*.tsv")):
        rel = path_a.relative_to(run_a)
        counts["files"] += 1
        if TIMING_KEY.search(path_a.stem):
            expected.append(f"{rel}: a timing curve")
            continue
        rows = []
        for path in (path_a, run_b / rel):
            with open(path, newline="") as handle:
                rows.append([without_timing(r) for r in csv.DictReader(handle, delimiter="\t")])
        record(f"{rel} (no timing)", differences(rows[0], rows[1], "", counts))
    return {
        "equal": equal,
        "differs_expected": expected,
        "differs_unexpected": unexpected,
        "counts": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("."), help="git repository to clone")
    parser.add_argument("--workdir", type=Path, required=True, help="where runA/ and runB/ go")
    parser.add_argument("--compare-only", action="store_true", help="compare existing runs")
    parser.add_argument("--parallel", action="store_true", help="run both pipelines at once")
    options = parser.parse_args()
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    clones = [workdir / "runA", workdir / "runB"]
    summary_path = workdir / "determinism.json"
    if options.compare_only:
        earlier = json.loads(summary_path.read_text())["runs"] if summary_path.is_file() else []
        walls = {run["clone"]: run["dvc_repro_seconds"] for run in earlier}
    else:
        walls = run_pipelines(options.source.resolve(), clones, options.parallel)
    runs = [
        {"clone": str(c), "commit": commit_of(c), "dvc_repro_seconds": walls.get(str(c))}
        for c in clones
    ]
    summary = {"runs": runs, **compare(*clones)}
    if len({run["commit"] for run in runs}) != 1:
        summary["differs_unexpected"].insert(0, "the clones are at different commits")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("runs", "counts", "differs_unexpected")}, indent=2))
    print(
        f"{len(summary['equal'])} equal, {len(summary['differs_expected'])} differ as expected "
        f"(timings), {len(summary['differs_unexpected'])} differ unexpectedly; see {summary_path}"
    )
    sys.exit(1 if summary["differs_unexpected"] else 0)


if __name__ == "__main__":
    main()
