"""Each authors' preset against the authors' own command: a README's main.py command over
main.py's defaults (WangFeng18/InvariancePropagation), translated key by key into invprop
params, must equal the preset merged into params.yaml, and every key a preset sets must be
either translated here or one of invprop's pipeline settings. Departures the translation
cannot express are named in each preset's header; the facts below cite the authors' files
by commit and line."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from invprop.config import config_from_dict, deep_merge, flat_keys

ROOT = Path(__file__).resolve().parents[1]

# main.py's argparse options that a recipe reads, with their defaults (main.py:32-67 at
# cad924e; the same options and defaults at 602add6, main.py:30-66). Flags default to False.
MAIN_DEFAULTS: dict[str, Any] = {
    "gpus": "0,1,2,3",
    "max_epoch": 800,
    "lr_decay_steps": "400,600,700",
    "exp": "",
    "res_path": "",
    "dataset": "imagenet",
    "lr": 0.03,
    "lr_decay_rate": 0.1,
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
}
FLAGS = {"blur", "cos", "not_hardpos"}

# What main.py does with its arguments, where the two commits differ:
# - first_epoch: `range(start_epoch, max_epoch)` with start_epoch 0 (602add6 main.py:143,
#   and the main branch until 188f834) or 1 (cad924e main.py:148);
# - passes_n_background: 602add6 main.py:133 builds the loss without --n_background, so the
#   loss keeps its default 4096 (objective.py:63); passed since 559b400.
ERAS = {
    "cad924e": {"first_epoch": 1, "passes_n_background": True},
    "602add6": {"first_epoch": 0, "passes_n_background": False},
}

# The README commands, as written (README.md at the era's commit).
COMMANDS = {
    # cad924e README.md lines 12, 30, 32, 34 (CIFAR since b7e753c, SVHN since dc92685)
    "imagenet-authors": (
        "cad924e",
        "--exp 'your_path' --n_background 4096 --t 0.2 --blur --cos --network 'resnet50' "
        "--nonlinearhead 1 --weight_decay 1e-4",
    ),
    "cifar10-authors": (
        "cad924e",
        "--exp 'your_path' -n_background 4096 --t 0.2 --blur --cos --network 'resnet18_cifar' "
        "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset 'cifar10'",
    ),
    "cifar100-authors": (
        "cad924e",
        "--exp 'your_path' -n_background 4096 --t 0.2 --blur --cos --network 'resnet18_cifar' "
        "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset 'cifar100'",
    ),
    "svhn-authors": (
        "cad924e",
        "--exp 'your_path' -n_background 4096 --t 0.2 --blur --cos --network 'resnet18_cifar' "
        "--nonlinearhead 1 --weight_decay 5e-4 --n_pos 20 --dataset 'svhn'",
    ),
    # 602add6 README.md line 35
    "imagenet-authors-602add6": (
        "602add6",
        "--exp your_folder --res_path your_result_folder --batch_size 128 --blur "
        "--network 'resnet50' --diffusion_layer 3 --nonlinearhead 1 --t 0.2 "
        "--n_background 65536 --weight_decay 1e-4 --max_epoch 1000 "
        "--lr_decay_step '400,600,750,800,1000'  --lr 0.015",
    ),
    # 602add6 README.md line 34, inside an HTML comment: the linear-head setting
    # imagenet-paper runs with the paper's method (PAPER_METHOD) instead of the code's
    "imagenet-paper": (
        "cad924e",
        "--exp 'your_exp_folder_path' --dataset 'imagenet' --weight_decay 1e-4 --t 0.07 "
        "--network 'resnet50'",
    ),
}
# The paper's method in place of the code's: breadth-first positive sets, its background,
# its losses without the code's 1e-7 guard (docs/method.md).
PAPER_METHOD = {"propagator": "exact", "background": "paper", "loss_eps": 0.0}
# 602add6 README.md lines 21, 25, 29: the paper-era CIFAR/SVHN commands.
PAPER_ERA_SMALL = [
    "--exp 'p' --dataset 'cifar10' --weight_decay 5e-4 --t 0.1 --network 'resnet18_cifar' "
    "--n_pos 20 --mix",
    "--exp 'p' --dataset 'cifar100' --weight_decay 5e-4 --t 0.1 --network 'resnet18_cifar' "
    "--n_pos 20 --diffusion_layer 4 --mix",
    "--exp 'p' --dataset 'svhn' --weight_decay 5e-4 --t 0.1 --network 'resnet18_cifar' "
    "--n_pos 20 --mix",
]

# Keys a preset may set that are invprop's pipeline settings, not the recipe's (each
# preset's header says so).
PIPELINE_KEYS = {
    "data.root",
    "pretrain.snapshot_epochs",
    "pretrain.num_workers",
    "embed.batch_size",
    "embed.tags",
    "graph.index",
    "evaluate.baselines.instance_discrimination",
    "transfer.targets",
}

# datasets/cifar.py:83-91 and datasets/svhn.py:39-46 `get_dataloader` (identical);
# datasets/imagenet.py `get_instance_dataloader` with --blur (lines 56-67, MoCo v2) and
# without (lines 68-76). RandomResizedCrop's default ratio everywhere.
RATIO = [0.75, 4 / 3]
SMALL_AUGMENT = {
    "crop_scale": [0.2, 1.0],
    "crop_ratio": RATIO,
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
IMAGENET_NORMALISE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
IMAGENET_BLUR_AUGMENT = {
    "crop_scale": [0.2, 1.0],
    "crop_ratio": RATIO,
    "flip_p": 0.5,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": [0.1, 2.0],
    "shorter_side": None,
    **IMAGENET_NORMALISE,
}
# The grey-before-jitter order of this branch is a listed departure of imagenet-paper.
IMAGENET_PLAIN_AUGMENT = {
    **SMALL_AUGMENT,
    "flip_p": 0.5,
    "shorter_side": None,
    **IMAGENET_NORMALISE,
}


def resnet50_block_names() -> list[str]:
    """models/resnet.py `forward_convs` (cad924e lines 196-217): the stem, then every block
    of layer1-4 ([3, 4, 6, 3] Bottlenecks, line 246), named as torchvision names them."""
    blocks = [f"layer{i + 1}.{j}" for i, n in enumerate([3, 4, 6, 3]) for j in range(n)]
    return ["stem", *blocks]


# downstream/linear_classification/linear_classification.py (cad924e, the same at 602add6):
# defaults lines 103-107, MultiStepLR line 178 (stepped after each 0-based epoch, line 202),
# network.eval() in train (line 232), heads 13..16 scored (lines 195, 298), eval before
# train (lines 185-186); models/LinearModelMulti.py: pool to g x g, BatchNorm1d, Linear,
# N(0, 0.01) weights (lines 25-30, 44-48); the per-head (g, channels) config (line 59).
HEAD_CONFIG = [(12, 64), *[(6, 256)] * 3, *[(4, 512)] * 4, *[(3, 1024)] * 6, *[(1, 2048)] * 3]
SCORED_HEADS = range(13, 17)
LINEAR_CLASSIFICATION = {
    "protocol": "sgd_augmented",
    "epochs": 120,
    "lr": 1.0,
    "batch_size": 256,
    "schedule": "step",
    "milestones": [50, 80, 100],
    "lr_decay": 0.1,
    "batchnorm": "eval",
    "init_std": 0.01,
    "layers": [
        {"name": resnet50_block_names()[i], "grid": HEAD_CONFIG[i][0]} for i in SCORED_HEADS
    ],
    "test_scoring": "before_each_epoch",
}
# downstream/linear_classification/eval_linear.py (cad924e): defaults lines 72-101 (lr 30 at
# line 78), --layer 6 (the pooled layer4), validation after each epoch (lines 342-364); the
# one recorded run passes --learning_rate 1.0 (line 523); N(0, 0.01) weights from the 2020
# version of models/LinearModel.py (faffc70 lines 104-109; the cad924e one cannot run).
EVAL_LINEAR = {
    "protocol": "sgd_augmented",
    "epochs": 100,
    "lr": 1.0,
    "batch_size": 256,
    "schedule": "step",
    "milestones": [40, 60, 80],
    "lr_decay": 0.2,
    "batchnorm": "none",
    "init_std": 0.01,
    "layers": [{"name": "features", "grid": 1}],
    "test_scoring": "after_each_epoch",
}
LINEAR_PRESETS = {
    "linear-authors-imagenet": LINEAR_CLASSIFICATION,
    "linear-authors-cifar": EVAL_LINEAR,
    "linear-authors-cifar-lr30": {**EVAL_LINEAR, "lr": 30.0},
}


class Refused(Exception):
    """main.py's argparse would refuse the command (and exit)."""


def parse(command: str) -> dict[str, Any]:
    """main.py's arguments: its defaults overridden by `command`, read as argparse reads it
    (``--key value`` and flags; a unique prefix of an option stands for it)."""
    args = dict(MAIN_DEFAULTS)
    words = shlex.split(command)
    i = 0
    while i < len(words):
        if not words[i].startswith("--"):
            raise Refused(f"unrecognized argument {words[i]}")
        given = words[i].removeprefix("--")
        names = [name for name in MAIN_DEFAULTS if name.startswith(given)]
        key = given if given in MAIN_DEFAULTS else names[0] if len(names) == 1 else None
        if key is None:
            raise Refused(f"unrecognized argument --{given}")
        if key in FLAGS:
            args[key], i = True, i + 1
            continue
        default = MAIN_DEFAULTS[key]
        args[key] = (
            type(default)(words[i + 1]) if isinstance(default, int | float) else words[i + 1]
        )
        i += 2
    return args


def translate(args: dict[str, Any], era: str) -> dict[str, dict[str, Any]]:
    """What main.py at `era` runs with these arguments, as invprop params."""
    first_epoch, passes_m = ERAS[era]["first_epoch"], ERAS[era]["passes_n_background"]
    imagenet = args["dataset"] == "imagenet"
    assert args["ramp_up"] == "binary"  # the only ramp-up invprop expresses
    epochs = args["max_epoch"]  # at cad924e main.py trains one fewer (a listed departure)
    # utils.py adjust_learning_rate: x rate once the epoch index (from first_epoch) reaches
    # a milestone: from epoch m + 1 - first_epoch, counting from 1; later ones never come.
    milestones = [int(m) + 1 - first_epoch for m in args["lr_decay_steps"].split(",")]
    schedule: dict[str, Any] = {"schedule": "cosine"}
    if not args["cos"]:
        schedule = {
            "schedule": "step",
            "lr_milestones": [m for m in milestones if m <= epochs],
            "lr_decay": args["lr_decay_rate"],
        }
    if imagenet:
        augment = IMAGENET_BLUR_AUGMENT if args["blur"] else IMAGENET_PLAIN_AUGMENT
    else:
        augment = SMALL_AUGMENT  # --blur is read by datasets/imagenet.py only
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
            # models/resnet.py:139-141; models/resnet_cifar.py has no init loop
            "head_init": "xavier_uniform" if args["network"] == "resnet50" else "torch",
        },
        "augment": augment,
        "pretrain": {
            "epochs": epochs,
            "batch_size": args["batch_size"],
            "lr": args["lr"],
            "momentum": 0.9,  # main.py:126
            "weight_decay": args["weight_decay"],
            **schedule,
            "warmup_epochs": 0,
            "temperature": args["t"],
            "bank_momentum": args["m"],
            "bank_init": "random",  # initialize_memorybank: random_init_bank
            "table_refresh": "online",  # objective.py update_nn, every batch
            "invp": bool(args["InvP"]),
            "k": args["K_nearst"],
            "hops": args["diffusion_layer"],
            "n_pos": args["n_pos"],
            "n_background": args["n_background"] if passes_m else 4096,
            "positives": "easy" if args["not_hardpos"] else "hard",
            "propagator": "concat",  # objective.py propagate
            # objective.py:131-135: exclusive 1 subtracts E[i,i]; 0 adds it back
            "background": "code" if args["exclusive"] else "code_inclusive",
            "loss_eps": 1e-7,  # objective.py:115, 132, 135
            "lambda_inv": args["lam_inv"],
            # BinaryRampUp(i_epoch, 30): on once the epoch index exceeds 30
            "ramp_epoch": 31 - first_epoch,
            "precision": "fp32",
            "monitor_knn": True,  # kNN(K=200, sigma=0.07) on the bank after every epoch
        },
        "evaluate": {
            "knn_k[0]": 200,
            "knn_temperature": 0.07,
            "linear": LINEAR_CLASSIFICATION if imagenet else EVAL_LINEAR,
        },
    }


def expected(preset: str) -> dict[str, dict[str, Any]]:
    era, command = COMMANDS[preset]
    # The CIFAR commands' `-n_background` (one dash) does not parse (test below); its value
    # is main.py's default anyway.
    want = translate(parse(command.replace(" -n_background", " --n_background")), era)
    if preset == "imagenet-paper":
        want["pretrain"] |= PAPER_METHOD
    return want


def preset_keys(preset: str) -> set[str]:
    return set(flat_keys(yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())))


def merged(preset: str) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    return config_from_dict(deep_merge(params, overlay)).to_dict()


def expect(value: Any) -> Any:
    """`value`, compared approximately when it is a float or a list of numbers."""
    if isinstance(value, float) or (
        isinstance(value, list) and all(isinstance(v, int | float) for v in value)
    ):
        return pytest.approx(value)
    return value


def check(got: dict[str, Any], want: dict[str, dict[str, Any]]) -> set[str]:
    """Assert every translated key (``linear``: a nested section); return the dotted keys
    checked."""
    checked = set()
    for section, values in want.items():
        for key, value in values.items():
            if key == "linear":
                for name, item in value.items():
                    assert got[section]["linear"][name] == expect(item), f"linear.{name}"
                    checked.add(f"{section}.linear.{name}")
            elif key == "knn_k[0]":  # K = 200 first; the smaller K after it are invprop's
                assert got[section]["knn_k"][0] == value
                checked.add(f"{section}.knn_k")
            else:
                assert got[section][key] == expect(value), f"{section}.{key}"
                checked.add(f"{section}.{key}")
    return checked


@pytest.mark.parametrize("preset", list(COMMANDS))
def test_authors_presets_are_the_readme_command_over_main_py_defaults(preset: str) -> None:
    checked = check(merged(preset), expected(preset))
    untranslated = preset_keys(preset) - checked - PIPELINE_KEYS
    assert not untranslated, f"{preset} sets keys no translation checks: {sorted(untranslated)}"


@pytest.mark.parametrize("preset", list(LINEAR_PRESETS))
def test_linear_presets_are_the_authors_scripts(preset: str) -> None:
    checked = check(merged(preset), {"evaluate": {"linear": LINEAR_PRESETS[preset]}})
    assert preset_keys(preset) == checked


def test_the_imagenet_probe_trains_the_four_blocks_the_script_scores() -> None:
    names = resnet50_block_names()
    assert len(names) == len(HEAD_CONFIG) == 17  # n_layers = 17 (line 121)
    # head 13 is layer3's last block (1024 channels, pooled 3 x 3), 14-16 layer4's blocks
    assert [names[i] for i in SCORED_HEADS] == ["layer3.5", "layer4.0", "layer4.1", "layer4.2"]
    assert [HEAD_CONFIG[i] for i in SCORED_HEADS] == [(3, 1024), *[(1, 2048)] * 3]


def test_the_exclusive_flag_maps_to_the_two_code_backgrounds() -> None:
    base = COMMANDS["imagenet-authors"][1]
    assert translate(parse(base), "cad924e")["pretrain"]["background"] == "code"
    inclusive = translate(parse(base + " --exclusive 0"), "cad924e")["pretrain"]
    assert inclusive["background"] == "code_inclusive"
    config_from_dict({"pretrain": {"background": inclusive["background"]}})  # a valid value


def test_commands_that_do_not_parse_are_refused() -> None:
    # the CIFAR/SVHN commands at cad924e, as written: `-n_background` has one dash
    for preset in ("cifar10-authors", "cifar100-authors", "svhn-authors"):
        with pytest.raises(Refused, match="-n_background"):
            parse(COMMANDS[preset][1])
    # the paper-era CIFAR/SVHN commands: main.py at 602add6 has no --mix, so they are no
    # presets (each CIFAR/SVHN preset's header says what --mix is and why)
    for command in PAPER_ERA_SMALL:
        with pytest.raises(Refused, match="--mix"):
            parse(command)
    # argparse's abbreviation, which the first ImageNet command relies on
    assert parse("--lr_decay_step 1,2")["lr_decay_steps"] == "1,2"


@pytest.mark.parametrize("preset", [*COMMANDS, *LINEAR_PRESETS])
def test_authors_and_paper_presets_name_their_sources_and_departures(preset: str) -> None:
    text = (ROOT / "presets" / f"{preset}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    era = COMMANDS[preset][0] if preset in COMMANDS else "cad924e"
    assert era in header
    if preset in COMMANDS:
        assert "Departures" in header
    if era == "cad924e" and preset in COMMANDS:
        assert "799" in header  # main.py's range(1, max_epoch)


def test_small_image_presets_name_the_paper_era_command_they_are_not() -> None:
    for preset, line in (("cifar10-authors", 21), ("cifar100-authors", 25), ("svhn-authors", 29)):
        text = (ROOT / "presets" / f"{preset}.yaml").read_text()
        assert f"README.md line {line} at 602add6" in text and "--mix" in text


def test_svhn_preset_names_the_readme_svhn_command() -> None:
    text = (ROOT / "presets" / "svhn-authors.yaml").read_text()
    assert "README.md line 34" in text and "--dataset 'svhn'" in text
    assert "no SVHN command" not in text


def test_paper_preset_takes_the_papers_stated_settings() -> None:
    cfg = merged("imagenet-paper")
    p = cfg["pretrain"]
    assert cfg["model"]["head"] == "linear" and p["temperature"] == 0.07
    stated = {"lambda_inv": 0.6, "ramp_epoch": 30, "k": 4, "hops": 3, "n_pos": 50}
    assert {k: p[k] for k in stated} == stated
    assert (p["n_background"], p["momentum"], p["batch_size"]) == (4096, 0.9, 128)
    assert (p["propagator"], p["background"], p["precision"]) == ("exact", "paper", "fp32")
    header = (ROOT / "presets" / "imagenet-paper.yaml").read_text().split("\ndata:")[0]
    assert "71.3%" in header and "imagenet-authors" in header  # whose headline it is not
