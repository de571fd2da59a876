"""After `make run`: every metrics file dvc.yaml declares exists and holds only finite figures,
and the report was written. Exits 1 naming each problem."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvc.repo import Repo


def numbers(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a JSON value, with its dotted key."""
    if isinstance(value, dict):
        for name, child in value.items():
            yield from numbers(child, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from numbers(child, f"{key}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield key, float(value)


def main() -> int:
    with Repo(".") as repo:
        metrics = sorted(
            str(out.def_path) for stage in repo.index.stages for out in stage.outs if out.metric
        )
    problems = []
    for path in metrics:
        if not Path(path).is_file():
            problems.append(f"{path}: missing")
            continue
        figures = list(numbers(json.loads(Path(path).read_text())))
        if not figures:
            problems.append(f"{path}: holds no figures")
        problems += [
            f"{path}: {key} = {value}" for key, value in figures if not math.isfinite(value)
        ]
    if not Path("reports/report.md").is_file():
        problems.append("reports/report.md: missing")
    for problem in problems:
        print(f"ci: {problem}", file=sys.stderr)
    print(f"ci: {len(metrics)} metrics files checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
