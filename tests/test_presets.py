"""Each authors' preset against the authors' own command: the README's main.py command over
main.py's defaults (WangFeng18/InvariancePropagation@cad924e), translated key by key into
invprop params, must equal the preset merged into params.yaml, except where the preset's
header names and explains a departure."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from invprop.config import config_from_dict, deep_merge

ROOT = Path(__file__).resolve().parents[1]

# main.py's argparse defaults that a recipe reads (cad924e); flags default to False.
MAIN_DEFAULTS: dict[str, Any] = {
    "max_epoch": 800,
    "lr": 0.03,
    "batch_size": 128,
    "weight_decay": 5e-4,
    "n_background": 4096,
    "t": 0.07,
    "m": 0.5,
    "blur": False,
    "cos": False,
    "network": "resnet18",
    "not_hardpos": False,
    "InvP": 1,
    "ramp_up": "binary",
    "lam_inv": 0.6,
    "diffusion_layer": 3,
    "K_nearst": 4,
    "n_pos": 50,
    "exclusive": 1,
    "nonlinearhead": 0,
    "dataset": "imagenet",
}
FLAGS = {"blur", "cos", "not_hardpos"}

# The README's commands; `-n_background` (one dash) in the CIFAR ones is a typo that does
# not parse, written here with two (its value is main.py's default anyway).
README = {
    "imagenet-authors": "--exp p --n_background 4096 --t 0.2 --blur --cos --network resnet50 "
    "--nonlinearhead 1 --weight_decay 1e-4",
    "cifar10-paper": "--exp p --n_background 4096 --t 0.2 --blur --cos --network resnet18_cifar "
    "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset cifar10",
    "cifar100-paper": "--exp p --n_background 4096 --t 0.2 --blur --cos --network resnet18_cifar "
    "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset cifar100",
    # no SVHN command at cad924e: the CIFAR one on SVHN (see the preset's header)
    "svhn-paper": "--exp p --n_background 4096 --t 0.2 --blur --cos --network resnet18_cifar "
    "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset svhn",
}

# datasets/cifar.py and datasets/svhn.py `get_dataloader`; datasets/imagenet.py
# `get_instance_dataloader` with --blur (MoCo v2).
SMALL_AUGMENT = {
    "crop_scale": [0.2, 1.0],
    "flip_p": 0.0,
    "jitter_p": 1.0,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.4,
    "grayscale_p": 0.2,
    "blur_p": 0.0,
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2023, 0.1994, 0.2010],
}
IMAGENET_BLUR_AUGMENT = {
    "crop_scale": [0.2, 1.0],
    "flip_p": 0.5,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": [0.1, 2.0],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "shorter_side": None,
}


def parse(command: str) -> dict[str, Any]:
    """main.py's arguments: its defaults overridden by `command` (``--key value`` / flags)."""
    args = dict(MAIN_DEFAULTS)
    words = shlex.split(command)
    i = 0
    while i < len(words):
        key = words[i].removeprefix("--")
        assert words[i].startswith("--"), words[i]
        if key in FLAGS:
            args[key], i = True, i + 1
            continue
        value, default = words[i + 1], MAIN_DEFAULTS.get(key)
        args[key] = type(default)(value) if isinstance(default, int | float) else value
        i += 2
    return args


def translate(args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What main.py runs with these arguments, as invprop params."""
    imagenet = args["dataset"] == "imagenet"
    assert args["cos"] and args["ramp_up"] == "binary"  # the only ones invprop expresses
    return {
        "data": {
            "name": "imagefolder" if imagenet else args["dataset"],
            "image_size": 224 if imagenet else 32,
            "channels": 3,
        },
        "model": {
            "backbone": args["network"],
            "head": "mlp_no_bn" if args["nonlinearhead"] else "linear",
            "dim": 128,
        },
        # --blur is read by datasets/imagenet.py only
        "augment": IMAGENET_BLUR_AUGMENT if imagenet and args["blur"] else SMALL_AUGMENT,
        "pretrain": {
            "epochs": args["max_epoch"],  # main.py trains one fewer (a listed departure)
            "batch_size": args["batch_size"],
            "lr": args["lr"],
            "momentum": 0.9,
            "weight_decay": args["weight_decay"],
            "schedule": "cosine",
            "warmup_epochs": 0,
            "temperature": args["t"],
            "bank_momentum": args["m"],
            "bank_init": "random",
            "invp": bool(args["InvP"]),
            "k": args["K_nearst"],
            "hops": args["diffusion_layer"],
            "n_pos": args["n_pos"],
            "n_background": args["n_background"],
            "positives": "easy" if args["not_hardpos"] else "hard",
            "propagator": "concat",
            "background": "code" if args["exclusive"] else "paper",
            "lambda_inv": args["lam_inv"],
            "ramp_epoch": 30,
            "precision": "fp32",
        },
    }


def merged(preset: str) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    return config_from_dict(deep_merge(params, overlay)).to_dict()


@pytest.mark.parametrize("preset", list(README))
def test_authors_presets_are_the_readme_command_over_main_py_defaults(preset: str) -> None:
    cfg = merged(preset)
    for section, values in translate(parse(README[preset])).items():
        for key, value in values.items():
            got = cfg[section][key]
            want = pytest.approx(value) if isinstance(value, float | list) else value
            assert got == want, f"{section}.{key}"


@pytest.mark.parametrize("preset", [*README, "imagenet-paper"])
def test_authors_and_paper_presets_name_their_departures(preset: str) -> None:
    header = (ROOT / "presets" / f"{preset}.yaml").read_text().split("\ndata:")[0]
    assert "cad924e" in header and "Departures" in header
    assert "799" in header  # main.py's range(1, max_epoch)


def test_cifar_linear_protocol_is_eval_linear_and_imagenets_is_linear_classification() -> None:
    cifar = merged("linear-authors-cifar")["evaluate"]["linear"]
    imagenet = merged("linear-authors-imagenet")["evaluate"]["linear"]
    assert (cifar["lr"], cifar["epochs"], cifar["milestones"], cifar["lr_decay"]) == (
        30.0,
        100,
        [40, 60, 80],
        0.2,
    )
    assert (imagenet["lr"], imagenet["epochs"], imagenet["milestones"]) == (1.0, 120, [50, 80, 100])
    assert imagenet["batchnorm"] and not cifar["batchnorm"]
    for preset, linear in [("cifar10-paper", cifar), ("imagenet-authors", imagenet)]:
        assert merged(preset)["evaluate"]["linear"] == linear


def test_paper_preset_takes_the_papers_stated_settings() -> None:
    cfg = merged("imagenet-paper")
    p = cfg["pretrain"]
    assert cfg["model"]["head"] == "linear" and p["temperature"] == 0.07
    stated = {"lambda_inv": 0.6, "ramp_epoch": 30, "k": 4, "hops": 3, "n_pos": 50}
    assert {k: p[k] for k in stated} == stated
    assert (p["n_background"], p["momentum"], p["batch_size"]) == (4096, 0.9, 128)
    assert (p["propagator"], p["background"], p["precision"]) == ("exact", "paper", "fp32")
    # main.py without --cos
    assert (p["schedule"], p["lr_milestones"], p["lr_decay"]) == ("step", [400, 600, 700], 0.1)
