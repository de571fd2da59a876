"""The stage registry: one function per pipeline stage, shared by DVC, Snakemake and the CLI.

`stages/<name>.py` (what dvc.yaml and the Snakefile run) and `invprop stage <name>` both
call `main(name, argv)`, which loads and validates params, then runs the stage's function.
Stage modules are imported only when their stage runs, so nothing heavy loads up front.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from invprop import names, workspace
from invprop.config import Config, load_config
from invprop.errors import InvpropError
from invprop.io import write_json
from invprop.logs import get_logger, launch_rank, setup_logging

STAGE_NAMES = (
    "prepare",
    "pretrain",
    *names.TRAINING_BASELINES,  # a stage each, named as the baseline
    "embed",
    "graph",
    "propagate",
    "evaluate",
    "transfer",
    "report",
)
# name -> "module:function": invprop/stages/<name>.py holds each stage's `run`, which
# takes (cfg, *positional args).
STAGES: dict[str, str] = {name: f"invprop.stages.{name}:run" for name in STAGE_NAMES}


# Stages that run once per dataset or tag, named by their first argument.
PER_ITEM_STAGES = ("prepare", "embed", "graph", "propagate")


def stage_report(name: str, args: Sequence[str] = ()) -> Path:
    """The `reports/*.json` of one run of stage `name`, e.g. reports/embed_final.json."""
    item = f"_{args[0]}" if name in PER_ITEM_STAGES and args else ""
    return workspace.stage_report(f"{name}{item}")


def footprint(wall_seconds: float) -> dict[str, float]:
    """Wall and CPU time and peak memory of this process and the processes it waited for
    (the torchrun ranks of a relaunched stage), and the peak GPU memory torch allocated."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    measured = {
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 1),  # KiB on Linux
    }
    torch = sys.modules.get("torch")  # only when the stage used it; never imported here
    if torch is not None and torch.cuda.is_initialized():
        measured["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return measured


def record_footprint(report: Path, measured: dict[str, float]) -> None:
    """Add `measured` to the stage's report under "footprint" (creating the report when the
    stage writes none). Of the processes of a DDP launch only rank 0 writes."""
    if launch_rank() != 0:
        return
    data: dict[str, Any] = json.loads(report.read_text()) if report.is_file() else {}
    write_json(report, data | {"footprint": measured})


def stage_function(name: str) -> Callable[..., None]:
    """Import and return the function of stage `name`."""
    if name not in STAGES:
        raise InvpropError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, _, function = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_stage(name: str, cfg: Config, args: Sequence[str] = ()) -> float:
    """Run stage `name` with a validated config, record its footprint in its report, and
    return its wall time in seconds."""
    function = stage_function(name)
    start = time.perf_counter()
    function(cfg, *args)
    seconds = time.perf_counter() - start
    record_footprint(stage_report(name, args), footprint(seconds))
    return seconds


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of `stages/<name>.py`: parse options, run, print user errors as one line."""
    parser = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"Run the {name} stage.")
    parser.add_argument("args", nargs="*", help="stage arguments (see dvc.yaml)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param, e.g. --set pretrain.epochs=2 (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also print debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    options = parser.parse_args(argv)
    start = time.monotonic()
    try:
        with stopped_by_sigterm():
            setup_logging(options.verbose - options.quiet)
            cfg = load_config(options.params, options.overrides)
            seconds = run_stage(name, cfg, options.args)
    except InvpropError as exc:
        print(f"invprop {name}: error: {exc}", file=sys.stderr)
        return 2
    except StoppedBySignal as stop:
        print(
            f"invprop {name}: stopped by SIGTERM after {time.monotonic() - start:.0f} s (SLURM "
            "sends it when a job reaches its time limit or is cancelled). Every artifact "
            "written so far is complete; run the stage again to finish it (a training stage "
            "resumes from its last finished epoch, kept in models/in_progress/)",
            file=sys.stderr,
        )
        return 128 + stop.signum
    get_logger(name).info(f"done in {seconds:.1f} s")
    return 0


class StoppedBySignal(Exception):
    """SIGTERM arrived: raised in the main thread, so that `finally` blocks (temporary
    files of atomic writes) run before the process ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Turn SIGTERM into StoppedBySignal for the span of the block."""

    def stop(signum: int, _frame: object) -> None:
        raise StoppedBySignal(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # `python -m invprop.pipeline <stage> ...`, as torchrun starts it
    stage, *options = sys.argv[1:] or [""]
    sys.exit(main(stage, options))
