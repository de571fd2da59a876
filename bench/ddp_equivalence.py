"""How far 2 DDP ranks end from one process, next to the float noise of one process alone.

    python bench/ddp_equivalence.py --epochs 1 2

Trains the tiny run of tests/test_distributed.py three ways in a scratch folder: one
process with 1 thread (the reference), torchrun with 2 gloo ranks, and one process with 2
threads (which only reorders float sums). Prints one JSON line per (epochs, run): the
relative error of all weights and of the bank vectors, and the share of equal table rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test's own runner and params: one definition

import test_distributed as ddp  # noqa: E402

from invprop.checkpoint import load_checkpoint  # noqa: E402
from invprop.config import config_from_dict  # noqa: E402
from invprop.stages.prepare import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    options = parser.parse_args()
    for epochs in options.epochs:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            os.chdir(root)
            prepare(config_from_dict(ddp.PARAMS), "synthetic")
            one = load_checkpoint(ddp.run_pretrain(root / "one", [sys.executable], epochs=epochs))
            runs = {
                "2 ranks": ([*ddp.TORCHRUN, "--nproc_per_node=2"], {}),
                "1 process, 2 threads": ([sys.executable], {"threads": 2}),
            }
            for name, (launcher, extra) in runs.items():
                folder = root / name.replace(" ", "_").replace(",", "")
                other = load_checkpoint(ddp.run_pretrain(folder, launcher, epochs=epochs, **extra))
                rows = other["bank"]["neighbours"] == one["bank"]["neighbours"]
                print(
                    json.dumps(
                        {
                            "epochs": epochs,
                            "run": name,
                            "weights_relative_error": ddp.relative_error(
                                ddp.weights(other), ddp.weights(one)
                            ),
                            "bank_relative_error": ddp.relative_error(
                                other["bank"]["vectors"], one["bank"]["vectors"]
                            ),
                            "table_rows_equal": rows.all(dim=1).float().mean().item(),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
