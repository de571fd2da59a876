"""Time the prepare stage per dataset, in a scratch folder (nothing lands in the repo).

    python bench/prepare_time.py          # fashion_mnist (if installed), digits, synthetic
    python bench/prepare_time.py cifar10 --set data.root=/data/cifar --repeat 3

Prints one JSON line per dataset: best and median wall seconds, artifact bytes, counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from invprop.config import config_from_dict
from invprop.stages.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    names = options.datasets or [
        *(["fashion_mnist"] if Path("/usr/share/datasets/fashion-mnist").is_dir() else []),
        "digits",
        "synthetic",
    ]
    for name in names:
        # Overrides apply to every dataset named: bench one dataset per data.root.
        params = {"data": {"name": name}, "transfer": {"targets": []}}
        cfg = config_from_dict(params, options.overrides)
        times, meta, size = [], {}, 0
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / name
            for _ in range(options.repeat):
                start = time.perf_counter()
                meta = prepare(cfg, name, out, Path(scratch) / "report.json")
                times.append(time.perf_counter() - start)
            size = sum(f.stat().st_size for f in out.iterdir())
        row = {
            "dataset": name,
            "best_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "bytes": size,
            "counts": meta["counts"],
            "cpus": os.cpu_count(),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
