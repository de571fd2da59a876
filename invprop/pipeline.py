"""The stage registry: one function per pipeline stage, shared by DVC, Snakemake and the CLI.

`stages/<name>.py` (what dvc.yaml and the Snakefile run) and `invprop stage <name>` both
call `main(name, argv)`, which loads and validates params, then runs the stage's function.
Stage modules are imported only when their stage runs, so nothing heavy loads up front.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence

from invprop.config import Config, load_config
from invprop.errors import InvpropError

STAGE_NAMES = (
    "prepare",
    "pretrain",
    "instance_discrimination",
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


def stage_function(name: str) -> Callable[..., None]:
    """Import and return the function of stage `name`."""
    if name not in STAGES:
        raise InvpropError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, _, function = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_stage(name: str, cfg: Config, args: Sequence[str] = ()) -> float:
    """Run stage `name` with a validated config; return its wall time in seconds."""
    function = stage_function(name)
    start = time.perf_counter()
    function(cfg, *args)
    return time.perf_counter() - start


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
    options = parser.parse_args(argv)
    try:
        cfg = load_config(options.params, options.overrides)
        seconds = run_stage(name, cfg, options.args)
    except InvpropError as exc:
        print(f"invprop {name}: error: {exc}", file=sys.stderr)
        return 2
    print(f"invprop {name}: done in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # `python -m invprop.pipeline <stage> ...`, as torchrun starts it
    stage, *options = sys.argv[1:] or [""]
    sys.exit(main(stage, options))
