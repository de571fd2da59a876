"""`invprop ckpt export`: each backbone in each format, loaded the way a user of that
library loads it, against invprop's own `extract` on the same images; the metadata against
the checkpoint's preprocessing; the printed code run; the refusals; the README's snippets.

Checkpoints are written without training (tests/conftest.py write_untrained_checkpoint);
ResNet-50 runs at 32x32, three images at a time.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from conftest import pil_images, write_untrained_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import invprop
from invprop import export as export_module
from invprop.checkpoint import encoder_from_checkpoint, load_checkpoint, save_checkpoint
from invprop.cli import app
from invprop.cli.ckpt import ExportFormat
from invprop.config import config_from_dict
from invprop.data.prepared import Split
from invprop.export import COUNTERPARTS, FORMATS, OWN_NETWORK
from invprop.inference import extract
from invprop.models import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# The preprocessing each checkpoint records: Fashion-MNIST-like for one channel, ImageNet's
# constants for three.
GREY = ([0.2860406], [0.3530242])
RGB = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# name: (backbone, channels, image size, head)
CHECKPOINTS = {
    "small_cnn": ("small_cnn", 1, 28, "mlp_hidden_bn"),
    "resnet18_cifar": ("resnet18_cifar", 3, 32, "mlp_hidden_out_bn"),
    "resnet50": ("resnet50", 3, 32, "linear"),
    "resnet50_grey": ("resnet50", 1, 32, "linear"),
}
# What the parity tests export: (checkpoint, format, --head)
CASES = [
    ("small_cnn", "safetensors", False),
    ("small_cnn", "safetensors", True),
    ("small_cnn", "onnx", False),
    ("small_cnn", "onnx", True),
    ("resnet18_cifar", "safetensors", True),
    ("resnet18_cifar", "onnx", False),
    ("resnet50", "torchvision", False),
    ("resnet50", "timm", False),
    ("resnet50", "safetensors", False),
    ("resnet50", "onnx", False),
    ("resnet50_grey", "torchvision", False),
    ("resnet50_grey", "timm", False),
]
SUFFIX = {"torchvision": "pth", "timm": "pth", "safetensors": "safetensors", "onnx": "onnx"}


def invoke(*args: str):
    return runner.invoke(app, ["ckpt", "export", *args])


def one_line_error(result) -> str:
    """The CLI's user error: status 2 and a single `error: ...` line."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ---------------------------------------------------------------------------------------
# Fixtures: checkpoints, images and their reference representations, exports


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoints(folder: Path) -> dict[str, Path]:
    paths = {}
    for name, (backbone, channels, size, head) in CHECKPOINTS.items():
        cfg = config_from_dict(
            {
                "data": {"name": "synthetic", "image_size": size, "channels": channels},
                "model": {"backbone": backbone, "head": head, "dim": 16},
                "transfer": {"targets": []},
            }
        )
        paths[name] = folder / f"{name}.pt"
        write_untrained_checkpoint(cfg, paths[name], *(GREY if channels == 1 else RGB))
    return paths


def images_for(channels: int, size: int, n: int = 3) -> np.ndarray:
    """uint8 [n, C, S, S] images, stored at the network's input size."""
    return np.random.default_rng(channels * 100 + size).integers(
        0, 256, (n, channels, size, size), dtype=np.uint8
    )


@pytest.fixture(scope="module")
def reference(checkpoints: dict[str, Path]) -> Callable[[str], dict[str, Any]]:
    """Per checkpoint: its images, and the features and embeddings invprop's `extract`
    gives them with the checkpoint's recorded preprocessing (as `invprop embed` does)."""
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            state = load_checkpoint(checkpoints[name])
            encoder, cfg, _ = encoder_from_checkpoint(state)
            pre = state["preprocessing"]
            images = images_for(pre["channels"], pre["image_size"])
            split = Split("test", images, np.full(len(images), -1, np.int64))
            statistics = {"mean": pre["mean"], "std": pre["std"]}
            features, embeddings = extract(encoder, split, statistics, cfg, "cpu")
            cache[name] = {
                "state": state,
                "encoder": encoder,
                "images": images,
                "features": features,
                "embeddings": embeddings,
            }
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exported(
    folder: Path, checkpoints: dict[str, Path], readme_run: dict[str, tuple[Path, str]]
) -> Callable[..., tuple[Path, str]]:
    """`exported(checkpoint, format, head)`: (file, printed code) of the CLI's export, once.
    The ResNet-50 files are those the README's commands write."""
    cache = {("resnet50", fmt, False): written for fmt, written in readme_run.items()}

    def get(name: str, fmt: str, head: bool = False) -> tuple[Path, str]:
        if (name, fmt, head) not in cache:
            out = folder / f"{name}-{fmt}{'-head' if head else ''}.{SUFFIX[fmt]}"
            flags = ["--head"] if head else []
            result = invoke(str(checkpoints[name]), "--format", fmt, "--out", str(out), *flags)
            assert result.exit_code == 0, result.output
            cache[name, fmt, head] = out, result.stdout
        return cache[name, fmt, head]

    return get


def normalised(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """The network's input, written plainly: [0, 1], minus mean, over std (per channel).

    Scaled by a multiplication with 1/255, as invprop and torchvision's ToDtype both do: a
    division by 255 differs in the last bit for some pixels, which ResNet-50 at init
    amplifies to ~5e-5 in its features."""
    x = torch.from_numpy(images).float() * (1 / 255)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def max_difference(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    return float((torch.as_tensor(a) - b).abs().max())


def onnx_tolerance(features: torch.Tensor) -> float:
    """ONNX Runtime sums in another order than PyTorch; in fp32 that moves a result by a
    few units of its magnitude's last digits, so 1e-5 is held relative to the features'
    scale. (ResNet-50 at init has features up to ~60; PyTorch's own fp32 and fp64 results
    differ there by ~5e-5. docs/results.md has the measured figures.)"""
    return 1e-5 * max(1.0, float(features.abs().max()))


# ---------------------------------------------------------------------------------------
# Loading as each library's users do, against extract


def load_as_a_user(name: str, fmt: str, path: Path, pre: dict[str, Any], code: str):
    """A callable images [B, C, S, S] (normalised) -> features (and embeddings with a head),
    built only with the library the format is for."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda x: session.run(names, {"images": x.numpy()})
    if fmt == "timm":
        model = timm.create_model(
            "resnet50", pretrained=False, num_classes=0, in_chans=pre["channels"]
        )
        model.load_state_dict(torch.load(path, weights_only=True), strict=True)
        return model.eval()
    if fmt == "torchvision" or (fmt == "safetensors" and name.startswith("resnet50")):
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Identity()
        if pre["channels"] == 1:
            model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        tensors = torch.load(path, weights_only=True) if fmt == "torchvision" else load_file(path)
        model.load_state_dict(tensors, strict=True)
        return model.eval()
    # small_cnn and resnet18_cifar: no library has them; the printed code rebuilds them
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["backbone"]


@pytest.mark.parametrize(("name", "fmt", "head"), CASES)
def test_the_export_loads_as_its_library_does_and_gives_extracts_features(
    name: str, fmt: str, head: bool, exported, reference
) -> None:
    path, code = exported(name, fmt, head)
    ref = reference(name)
    pre = ref["state"]["preprocessing"]
    model = load_as_a_user(name, fmt, path, pre, code)
    x = normalised(ref["images"], pre["mean"], pre["std"])
    if fmt == "onnx":
        outputs = model(x)
        assert len(outputs) == (2 if head else 1)
        assert max_difference(outputs[0], ref["features"]) <= onnx_tolerance(ref["features"])
        if head:
            assert max_difference(outputs[1], ref["embeddings"]) <= 1e-5
        return
    with torch.no_grad():
        features = model(x)
    assert features.shape == ref["features"].shape
    assert max_difference(features, ref["features"]) <= 1e-5


@pytest.mark.parametrize(("name", "fmt", "head"), CASES)
def test_the_printed_code_runs_loads_the_file_and_preprocesses_as_invprop(
    name: str, fmt: str, head: bool, exported, reference, monkeypatch
) -> None:
    """The printed lines are a Python file that needs no invprop: run them, then feed PIL
    images through its `preprocess` and its model."""
    path, code = exported(name, fmt, head)
    assert not re.search(r"^\s*(import|from) invprop", code, re.M)
    monkeypatch.setitem(sys.modules, "invprop", None)  # importing invprop would fail
    monkeypatch.chdir(path.parent)  # the README's commands name their files relatively
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    ref = reference(name)
    x = torch.stack([namespace["preprocess"](image) for image in pil_images(ref["images"])])
    pre = ref["state"]["preprocessing"]
    assert torch.equal(x, normalised(ref["images"], pre["mean"], pre["std"]))
    if fmt == "onnx":
        outputs = namespace["session"].run(None, {"images": x.numpy()})
        assert max_difference(outputs[0], ref["features"]) <= onnx_tolerance(ref["features"])
        return
    with torch.no_grad():
        features = namespace["backbone"](x)
        assert max_difference(features, ref["features"]) <= 1e-5
        if head:
            embeddings = nn.functional.normalize(namespace["head"](features), dim=1)
            assert max_difference(embeddings, ref["embeddings"]) <= 1e-5


def test_onnx_has_a_dynamic_batch_axis_and_nothing_but_the_graph(exported, reference) -> None:
    path, _ = exported("resnet18_cifar", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    assert images.name == "images" and isinstance(images.shape[0], str)
    assert images.shape[1:] == [3, 32, 32]
    assert [o.name for o in session.get_outputs()] == ["features"]
    ref = reference("resnet18_cifar")
    pre = ref["state"]["preprocessing"]
    x = normalised(ref["images"], pre["mean"], pre["std"])
    for batch in (1, 2):  # exported with an example batch of 2
        (features,) = session.run(None, {"images": x[:batch].numpy()})
        assert features.shape == (batch, 512)
        tolerance = onnx_tolerance(ref["features"])
        assert max_difference(features, ref["features"][:batch]) <= tolerance
    # No weights beyond the backbone's (the bank, say): BatchNorm may be folded into the
    # convolutions, never more.
    model = onnx.load(str(path))
    stored = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == 1)
    backbone = ref["encoder"].backbone.state_dict()
    assert stored <= sum(t.numel() * 4 for t in backbone.values() if t.is_floating_point())


# ---------------------------------------------------------------------------------------
# Metadata, and what the files hold


def metadata_of(fmt: str, path: Path) -> dict[str, str]:
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    with safe_open(str(path), "pt") as file:
        return dict(file.metadata())


@pytest.mark.parametrize(
    ("name", "fmt", "head"),
    [case for case in CASES if case[1] in ("safetensors", "onnx")],
)
def test_metadata_carries_the_checkpoints_preprocessing(
    name: str, fmt: str, head: bool, exported, reference
) -> None:
    path, _ = exported(name, fmt, head)
    metadata = metadata_of(fmt, path)
    state = reference(name)["state"]
    read_back = {
        "image_size": int(metadata["image_size"]),
        "channels": int(metadata["channels"]),
        "mean": json.loads(metadata["mean"]),
        "std": json.loads(metadata["std"]),
        "stored_size": int(metadata["stored_size"]),
    }
    assert read_back == state["preprocessing"]
    backbone, _, _, head_kind = CHECKPOINTS[name]
    feature_dim = {"small_cnn": 256, "resnet18_cifar": 512, "resnet50": 2048}[backbone]
    assert metadata["architecture"] == backbone
    assert int(metadata["feature_dim"]) == feature_dim
    assert metadata["params_hash"] == state["params_hash"]
    assert int(metadata["epoch"]) == state["epoch"]
    assert metadata["invprop_version"] == invprop.__version__
    if head:
        assert (metadata["head"], int(metadata["embedding_dim"])) == (head_kind, 16)
    else:
        assert "head" not in metadata


@pytest.mark.parametrize(
    ("name", "fmt", "head"),
    # ResNet-50's files load with strict=True into models that have no other keys (above)
    [case for case in CASES if case[1] != "onnx" and not case[0].startswith("resnet50")],
)
def test_the_file_holds_the_backbone_and_what_was_asked_only(
    name: str, fmt: str, head: bool, exported, reference
) -> None:
    path, code = exported(name, fmt, head)
    tensors = torch.load(path, weights_only=True) if fmt != "safetensors" else load_file(path)
    encoder = reference(name)["encoder"]
    expected = {k: v for k, v in encoder.backbone.state_dict().items()}
    if head:
        expected |= {f"head.{k}": v for k, v in encoder.head.state_dict().items()}
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert "left out: " in code and all(key in code for key in ("bank", "optimizer", "history"))


@pytest.mark.parametrize(("name", "fmt", "head"), CASES)
def test_the_export_is_readable_as_any_file_its_user_creates(
    name: str, fmt: str, head: bool, exported
) -> None:
    path, _ = exported(name, fmt, head)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)


def test_json_lists_the_renamed_keys_and_what_was_left_out(
    checkpoints, reference, tmp_path
) -> None:
    out = tmp_path / "b.safetensors"
    args = ["--format", "safetensors", "--out", str(out), "--json"]
    result = invoke(str(checkpoints["small_cnn"]), *args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["renamed"] == {"backbone.": ""}
    assert info["left_out"] == [
        "the mlp_hidden_bn head (9 tensors)",
        "bank",
        "optimizer",
        "history",
    ]
    backbone = reference("small_cnn")["encoder"].backbone
    assert info["size_bytes"] == out.stat().st_size
    assert info["tensors"] == len(backbone.state_dict())
    assert info["code"].startswith(f"# {out}: the small_cnn backbone of")
    assert "backbone = nn.Sequential(" in info["code"]


# ---------------------------------------------------------------------------------------
# Refusals: one line each, nothing written


@pytest.mark.parametrize(
    ("name", "fmt", "reason"),
    [
        ("small_cnn", "torchvision", "invprop's own 4-layer CNN"),
        ("resnet18_cifar", "torchvision", "3x3 stride-1 convolution without max-pool"),
        ("resnet18_cifar", "timm", "3x3 stride-1 convolution without max-pool"),
    ],
)
def test_a_backbone_without_a_counterpart_is_refused_with_one_line(
    name: str, fmt: str, reason: str, checkpoints, tmp_path
) -> None:
    out = tmp_path / "x.pth"
    line = one_line_error(invoke(str(checkpoints[name]), "--format", fmt, "--out", str(out)))
    assert f"holds a {name} backbone, which no {fmt} model matches" in line
    assert reason in line and "--format safetensors or onnx" in line
    assert list(tmp_path.iterdir()) == []


def test_head_into_torchvision_is_refused(checkpoints, tmp_path) -> None:
    args = ["--format", "torchvision", "--out", str(tmp_path / "x.pth"), "--head"]
    line = one_line_error(invoke(str(checkpoints["resnet50"]), *args))
    assert "has no projection head" in line and "safetensors or onnx" in line


def test_an_existing_file_stays_unless_forced(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "b.safetensors"
    out.write_bytes(b"keep me")
    args = [str(checkpoints["small_cnn"]), "--format", "safetensors", "--out", str(out)]
    line = one_line_error(invoke(*args))
    assert "exists; pass --force" in line and out.read_bytes() == b"keep me"
    assert invoke(*args, "--force").exit_code == 0
    assert load_file(out).keys() == reference("small_cnn")["encoder"].backbone.state_dict().keys()
    checkpoint = str(checkpoints["small_cnn"])
    line = one_line_error(invoke(checkpoint, "--format", "onnx", "--out", checkpoint, "--force"))
    assert "would overwrite the input" in line


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(
    checkpoints, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "b.safetensors"
    out.write_bytes(b"previous")

    def half_written(encoder, pre, head, metadata, path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setitem(export_module.WRITERS, "safetensors", half_written)
    with pytest.raises(OSError, match="disk full"):
        export_module.export_backbone(checkpoints["small_cnn"], "safetensors", out, force=True)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]


@pytest.mark.parametrize(
    ("fmt", "module"), [("timm", "timm"), ("safetensors", "safetensors"), ("onnx", "onnxscript")]
)
def test_a_missing_package_names_the_extra(
    fmt: str, module: str, checkpoints, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    out = tmp_path / "x"
    line = one_line_error(invoke(str(checkpoints["small_cnn"]), "--format", fmt, "--out", str(out)))
    assert f"--format {fmt} needs {module}" in line
    assert "pip install -e '.[export]'" in line and not out.exists()


def test_a_checkpoint_without_preprocessing_says_how_to_get_one(checkpoints, tmp_path) -> None:
    state = load_checkpoint(checkpoints["small_cnn"])
    del state["preprocessing"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, state)
    out = tmp_path / "x.onnx"
    line = one_line_error(invoke(str(old), "--format", "onnx", "--out", str(out)))
    assert "records no image preprocessing" in line and not out.exists()


# ---------------------------------------------------------------------------------------
# The registries stay complete


def test_counterparts_name_registered_backbones_and_the_cli_every_format() -> None:
    # A backbone without an entry (a new one: docs/extending.md) is invprop's own network.
    assert set(COUNTERPARTS) <= set(BACKBONES)
    assert not OWN_NETWORK.standard and not OWN_NETWORK.torchvision and OWN_NETWORK.why_not
    assert get_args(ExportFormat) == FORMATS
    for name, counterpart in COUNTERPARTS.items():
        assert counterpart.standard != bool(counterpart.why_not), name
        if counterpart.standard:
            assert timm.is_model(counterpart.torchvision)
            assert callable(getattr(torchvision.models, counterpart.torchvision))


@pytest.mark.parametrize("head", ["linear", "mlp_no_bn", "mlp_hidden_bn", "mlp_hidden_out_bn"])
def test_module_code_rebuilds_every_head(head: str) -> None:
    from invprop.models import build_head

    module = build_head(head, 8, 4)
    rebuilt = eval(export_module.module_code(module), {"nn": nn})
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    assert repr(rebuilt) == repr(module)


# A backbone of the user's own: a module with its own forward, not torch.nn layers alone
CUSTOM_BACKBONE = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.block = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.feature_dim = 8

    def forward(self, x):
        x = self.stem(x)
        return (x + self.block(x)).mean(dim=(2, 3))


def residual(in_channels):
    return Residual(in_channels)
"""


def test_a_backbone_with_its_own_forward_is_rebuilt_by_its_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its printed code imports the registered builder (from the user's module) instead of
    spelling torch.nn layers, runs, and gives extract's features."""
    (tmp_path / "my_backbones.py").write_text(CUSTOM_BACKBONE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_backbones

    monkeypatch.setitem(BACKBONES, "small_cnn", my_backbones.residual)
    cfg = config_from_dict(
        {
            "data": {"name": "synthetic", "image_size": 28, "channels": 1},
            "model": {"backbone": "small_cnn", "head": "linear", "dim": 4},
            "transfer": {"targets": []},
        }
    )
    checkpoint = tmp_path / "custom.pt"
    write_untrained_checkpoint(cfg, checkpoint, *GREY)
    out = tmp_path / "custom.safetensors"
    result = invoke(str(checkpoint), "--format", "safetensors", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "from my_backbones import residual\nbackbone = residual(1)\n" in result.stdout

    namespace: dict[str, Any] = {}
    exec(result.stdout, namespace)
    encoder, cfg, _ = encoder_from_checkpoint(checkpoint)
    images = images_for(1, 28)
    split = Split("test", images, np.full(len(images), -1, np.int64))
    features, _ = extract(encoder, split, {"mean": GREY[0], "std": GREY[1]}, cfg, "cpu")
    with torch.no_grad():
        rebuilt = namespace["backbone"](normalised(images, *GREY))
    assert max_difference(rebuilt, features) <= 1e-5

    # A builder that no import reaches is refused with one line that says what to do.
    def local_builder(in_channels: int) -> nn.Module:
        return my_backbones.Residual(in_channels)

    monkeypatch.setitem(BACKBONES, "small_cnn", local_builder)
    refused = invoke(str(checkpoint), "--format", "safetensors", "--out", str(out), "--force")
    assert "define the builder at the top level of an importable module" in one_line_error(refused)


# ---------------------------------------------------------------------------------------
# The README's section: its commands, its four snippets, its sizes


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Using your backbone elsewhere")
    return text[start : text.index("\n## ", start + 1)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def readme_run(folder: Path, checkpoints: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """The README's export commands, run as written on a ResNet-50 checkpoint placed at
    models/pretrain/final.pt: {format: (file written, printed code)}."""
    run_dir = folder / "readme"
    (run_dir / "models/pretrain").mkdir(parents=True)
    (run_dir / "models/pretrain/final.pt").symlink_to(checkpoints["resnet50"])
    (commands,) = code_blocks(readme_section(), "bash")
    written = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run_dir)
        for line in commands.strip().splitlines():
            args = line.split()
            assert args[:3] == ["invprop", "ckpt", "export"], line
            result = invoke(*args[3:])
            assert result.exit_code == 0, result.output
            out = run_dir / args[args.index("--out") + 1]
            written[args[args.index("--format") + 1]] = out, result.stdout
    assert set(written) == set(FORMATS)
    return written


def test_the_readme_snippets_load_the_files_its_commands_write(
    readme_run, reference, monkeypatch
) -> None:
    snippets = code_blocks(readme_section(), "python")
    assert len(snippets) == len(FORMATS)
    ref = reference("resnet50")
    pre = ref["state"]["preprocessing"]
    x = normalised(ref["images"], pre["mean"], pre["std"])
    monkeypatch.chdir(readme_run["onnx"][0].parent)
    for fmt, snippet in zip(FORMATS, snippets, strict=True):
        assert readme_run[fmt][0].name in snippet, fmt
        namespace: dict[str, Any] = {}
        exec(snippet, namespace)
        if fmt == "onnx":
            assert namespace["features"].shape == (4, 2048)
            continue
        with torch.no_grad():
            features = namespace["backbone"].eval()(x)
        assert max_difference(features, ref["features"]) <= 1e-5, fmt
        if fmt == "safetensors":
            assert (namespace["mean"], namespace["std"]) == (pre["mean"], pre["std"])


def readme_sizes() -> dict[str, dict[str, float | None]]:
    """The README's size table: {format: {"default": MB or None, "imagenet": MB or None}}."""
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \|$", readme_section(), re.M)
    assert {row[0] for row in rows} == set(FORMATS)

    def megabytes(cell: str) -> float | None:
        found = re.match(r"([\d.]+) MB", cell)
        return float(found.group(1)) if found else None

    return {fmt: {"default": megabytes(a), "imagenet": megabytes(b)} for fmt, a, b in rows}


def test_the_readme_sizes_are_those_of_real_exports(exported) -> None:
    """ResNet-50's file sizes do not depend on the image size (32 here, 224 in the preset);
    the default is small_cnn at 28x28x1, which no torchvision or timm model matches."""
    sizes = readme_sizes()
    for fmt in FORMATS:
        path, _ = exported("resnet50", fmt)
        assert sizes[fmt]["imagenet"] == pytest.approx(path.stat().st_size / 1e6, abs=0.1), fmt
        if fmt in ("torchvision", "timm"):
            assert sizes[fmt]["default"] is None
        else:
            path, _ = exported("small_cnn", fmt)
            assert sizes[fmt]["default"] == pytest.approx(path.stat().st_size / 1e6, abs=0.1)


def test_an_unknown_format_is_refused_with_the_four(tmp_path) -> None:
    line = one_line_error(invoke("x.pt", "--format", "keras", "--out", str(tmp_path / "x")))
    assert "'torchvision', 'timm', 'safetensors', 'onnx'" in line
