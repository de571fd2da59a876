"""Crop-box geometry relative to the ORIGINAL image: invprop's sampler against torchvision's
RandomResizedCrop (what the authors use), on synthetic image sizes of several aspect ratios.

Three ways to draw a training crop of an image folder:

* ``whole``: invprop now, boxes drawn at the decoded image's own size (CroppedImageFiles);
* ``torchvision``: RandomResizedCrop.get_params on the same size (the authors');
* ``prefit``: invprop before, the image first fitted to a 256 x 256 centre square of its
  shorter side (ImageOps.fit), boxes drawn on that square, mapped back to the original.

For each size: mean area fraction of the original image, the share of the original's
columns and rows that any crop reaches, and the two-sample Kolmogorov-Smirnov statistic and
p-value of area fraction and aspect ratio against torchvision's. Prints one JSON line per
(size, method). No data or network needed; seconds on a CPU.

    .venv/bin/python bench/crop_geometry.py --samples 20000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from invprop.augment import sample_params
from invprop.config import AugmentConfig

SIZES = [(375, 500), (500, 375), (480, 640), (300, 300), (200, 800)]  # (height, width)
PREFIT = 256


def torchvision_boxes(height: int, width: int, config: AugmentConfig, n: int) -> np.ndarray:
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    scale, ratio = list(config.crop_scale), list(config.crop_ratio)
    return np.array([RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)], float)


def invprop_boxes(height: int, width: int, config: AugmentConfig, n: int) -> np.ndarray:
    p = sample_params(0, 1, torch.arange(n), config, height, width)
    return torch.stack([p.top, p.left, p.height, p.width], 1).double().numpy()


def prefit_boxes(height: int, width: int, config: AugmentConfig, n: int) -> np.ndarray:
    """Boxes drawn on the 256 x 256 fitted centre square, in original-image pixels."""
    side = min(height, width)
    scale = side / PREFIT
    boxes = invprop_boxes(PREFIT, PREFIT, config, n) * scale
    boxes[:, 0] += (height - side) / 2
    boxes[:, 1] += (width - side) / 2
    return boxes


def describe(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray | float]:
    top, left, h, w = boxes.T
    reach_x = (np.minimum(left.min(), width) + (width - np.max(left + w))) / width
    reach_y = (top.min() + (height - np.max(top + h))) / height
    return {
        "area": h * w / (height * width),
        "aspect": w / h,
        "columns_reached": 1.0 - reach_x,
        "rows_reached": 1.0 - reach_y,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--scale", type=float, nargs=2, default=[0.2, 1.0])
    args = parser.parse_args()
    config = AugmentConfig(crop_scale=tuple(args.scale))
    for height, width in SIZES:
        reference = describe(torchvision_boxes(height, width, config, args.samples), height, width)
        for method, draw in [
            ("torchvision", torchvision_boxes),
            ("whole", invprop_boxes),
            ("prefit", prefit_boxes),
        ]:
            stats = describe(draw(height, width, config, args.samples), height, width)
            row = {
                "height": height,
                "width": width,
                "method": method,
                "mean_area": round(float(np.mean(stats["area"])), 4),
                "columns_reached": round(float(stats["columns_reached"]), 3),
                "rows_reached": round(float(stats["rows_reached"]), 3),
            }
            for key in ("area", "aspect"):
                test = ks_2samp(stats[key], reference[key], method="asymp")
                row[f"ks_{key}"] = round(float(test.statistic), 4)
                row[f"p_{key}"] = float(f"{test.pvalue:.3g}")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
