"""`invprop ckpt export` on the default, cifar10-authors and imagenet-paper configurations:
file size, export time, and how far the exported model's features are from invprop's own
`extract` on the same images.

Each configuration's checkpoint is the initial network with every tensor perturbed by a
fixed seed (tests/conftest.py `write_untrained_checkpoint`, what the tests export); each
export is loaded by running the Python it prints (torchvision, timm, safetensors: its
`backbone`; ONNX: its onnxruntime `session`) and fed `--images` random images through its
printed `preprocess`. Prints one JSON line per export, after one line per configuration
with PyTorch's own fp32 rounding there (extract's fp32 features against the same network
in fp64).

    python bench/export_parity.py                          # the three configurations
    python bench/export_parity.py --configs default --images 4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invprop.augment import center
from invprop.checkpoint import encoder_from_checkpoint, load_checkpoint
from invprop.config import Config, config_from_dict, read_yaml_mapping
from invprop.data.prepared import Split
from invprop.errors import InvpropError
from invprop.export import FORMATS, export_backbone
from invprop.inference import extract

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import pil_images, write_untrained_checkpoint  # noqa: E402

# Fashion-MNIST's channel statistics (the prepared data's meta.json), for the default.
FASHION_MNIST = ([0.2860406], [0.3530242])
CONFIGS = {
    "default": None,
    "cifar10-authors": "presets/cifar10-authors.yaml",
    "imagenet-paper": "presets/imagenet-paper.yaml",
}


def config(name: str) -> Config:
    preset = CONFIGS[name]
    return config_from_dict(
        read_yaml_mapping(ROOT / preset, "preset") if preset else {"transfer": {"targets": []}}
    )


def measure(name: str, n_images: int, folder: Path) -> list[dict[str, Any]]:
    cfg = config(name)
    a = cfg.augment
    mean, std = (list(a.mean), list(a.std)) if a.mean is not None else FASHION_MNIST
    checkpoint = folder / f"{name}.pt"
    write_untrained_checkpoint(cfg, checkpoint, mean, std)
    state = load_checkpoint(checkpoint)
    encoder, ckpt_cfg, _ = encoder_from_checkpoint(state)
    pre = state["preprocessing"]
    shape = (n_images, pre["channels"], pre["image_size"], pre["image_size"])
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    split = Split("images", images, np.full(n_images, -1, np.int64))
    features, _ = extract(encoder, split, {"mean": mean, "std": std}, ckpt_cfg, "cpu")
    common = {
        "config": name,
        "backbone": ckpt_cfg.model.backbone,
        "input": list(shape[1:]),
        "images": n_images,
        "feature_scale": round(float(features.abs().max()), 3),
        "checkpoint_bytes": checkpoint.stat().st_size,
    }
    rows = []
    for fmt in FORMATS:
        out = folder / f"{name}.{fmt}"
        start = time.perf_counter()
        try:
            result = export_backbone(checkpoint, fmt, out)
        except InvpropError as exc:
            rows.append(common | {"format": fmt, "refused": str(exc)})
            continue
        seconds = time.perf_counter() - start
        namespace: dict[str, Any] = {}
        exec(result.code, namespace)
        x = torch.stack([namespace["preprocess"](image) for image in pil_images(images)])
        if fmt == "onnx":
            (loaded,) = namespace["session"].run(["features"], {"images": x.numpy()})
        else:
            with torch.no_grad():
                loaded = namespace["backbone"](x).numpy()
        difference = float(np.abs(loaded - features.numpy()).max())
        rows.append(
            common
            | {
                "format": fmt,
                "size_bytes": result.size_bytes,
                "export_s": round(seconds, 2),
                "max_abs_diff": difference,
            }
        )
    with torch.no_grad():  # the very input extract fed the network, in fp64
        x64 = center(torch.from_numpy(images), pre["image_size"], mean, std).double()
        reference64 = copy.deepcopy(encoder).double().features(x64)
    floor = float((features.double() - reference64).abs().max())
    return [common | {"format": "pytorch fp32 vs fp64", "max_abs_diff": floor}, *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            for row in measure(name, args.images, Path(tmp)):
                print(json.dumps(row | machine), flush=True)


if __name__ == "__main__":
    main()
