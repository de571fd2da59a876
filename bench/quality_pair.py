"""InvP against instance discrimination with one recipe: train both, then kNN and the linear
probe of each, with wall times. Prints one JSON line per method.

The real stages run in a scratch project folder (--work): prepare, pretrain,
instance_discrimination (the same recipe with pretrain.invp false), embed and evaluate, on
params.yaml + --preset + --set overrides, with data.root set to --data-root. It needs no
dvc, Snakemake or faiss (the kNN classifier and the probe are torch's); without dvclive
the training curves are not written, and every epoch's figures still are logged.

    python bench/quality_pair.py --preset presets/fmnist-gpu.yaml \
        --data-root .carry/fashion-mnist --set pretrain.epochs=20 ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from invprop.config import config_from_dict, deep_merge, read_yaml_mapping, save_params
from invprop.io import read_json
from invprop.logs import setup_logging
from invprop.pipeline import run_stage

ROOT = Path(__file__).resolve().parents[1]
# (stage, its arguments) in the pipeline's order; prepare's argument is data.name
STAGES = (("pretrain", []), ("instance_discrimination", []), ("embed", ["final"]), ("evaluate", []))
METHODS = {"invp": "pretrain", "instance_discrimination": "instance_discrimination"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--preset", default=str(ROOT / "presets/fmnist-gpu.yaml"))
    parser.add_argument("--data-root", required=True, help="the raw files of data.name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    setup_logging()

    params = deep_merge(
        read_yaml_mapping(args.params, "params file"), read_yaml_mapping(args.preset, "preset")
    )
    overrides = [f"data.root={Path(args.data_root).resolve()}", *args.set]
    cfg = config_from_dict(params, overrides)
    with contextlib.ExitStack() as stack:
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        save_params(cfg, work / "params.yaml")  # what the stages ran with, beside them
        stack.enter_context(contextlib.chdir(work))
        seconds = {"prepare": run_stage("prepare", cfg, [cfg.data.name])}
        seconds |= {stage: run_stage(stage, cfg, stage_args) for stage, stage_args in STAGES}
        metrics = read_json("reports/evaluate.json")
        trained = {name: read_json(f"reports/{stage}.json") for name, stage in METHODS.items()}

    device = metrics["evaluate/device"]
    for name, stage in METHODS.items():
        k200 = f"{name}/knn_clean/embeddings/k200/top1"
        print(
            json.dumps(
                {
                    "bench": "quality_pair",
                    "method": name,
                    "preset": Path(args.preset).stem,
                    "overrides": args.set,
                    "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
                    "precision": cfg.pretrain.precision,
                    "epochs": trained[name]["epochs"],
                    "train_images": trained[name]["train_images"],
                    "knn_k200_top1": metrics.get(k200),
                    "knn_k200_features_top1": metrics.get(k200.replace("embeddings", "features")),
                    "knn_bank_k200_top1": metrics.get(f"{name}/knn_bank/k200/top1"),
                    "linear_top1": metrics.get(f"{name}/linear/top1"),
                    "train_seconds": round(trained[name]["seconds"], 1),
                    "images_per_second": round(trained[name]["images_per_second"], 1),
                    # the stage's wall time: training, and the baseline's embedding too
                    "stage_seconds": round(seconds[stage], 1),
                    "embed_seconds": round(seconds["embed"], 1) if name == "invp" else None,
                    "evaluate_seconds": round(seconds["evaluate"], 1),
                    "torch": torch.__version__,
                    "at": time.strftime("%Y-%m-%d"),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
