"""What two runs of the same inputs must agree on: parsed JSON without the keys that
measure time. Shared by the orchestrator tests and bench/determinism_check.py."""

from __future__ import annotations

import re
from typing import Any

# Keys that measure time or speed, never equal between two runs, and a stage's footprint
# (time and memory). A checkpoint's sha256 is compared: checkpoints keep no timings, so
# equal training gives equal bytes.
TIMING_KEY = re.compile(r"second|timestamp|elapsed|^footprint$")
# Columns of the report's tables that hold measurements of a run (its stage times table).
MEASURED_COLUMN = re.compile(r"second|memory")


def without_timing(data: Any) -> Any:
    """`data` (parsed JSON) without the keys that measure time."""
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if not TIMING_KEY.search(str(k))}
    if isinstance(data, list):
        return [without_timing(v) for v in data]
    return data
