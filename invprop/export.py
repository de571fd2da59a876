"""Pretrained backbones out of invprop: torchvision, timm, safetensors and ONNX files.

`export_backbone(checkpoint, fmt, out)` writes the backbone of a pretraining checkpoint
(and with `head=True` its projection head) in a format other libraries load, and nothing
else: no memory bank, neighbour table, optimizer or history. It returns an `Export` whose
`code` is a runnable Python file: comment lines saying what was written, then the plain
PyTorch (or onnxruntime) lines that load it and the checkpoint's preprocessing as
torchvision transforms. `invprop ckpt export` prints exactly that.

Formats (`FORMATS`):

* ``torchvision``: the backbone's state dict (``torch.save``), which
  ``torchvision.models.resnet50(weights=None)`` loads with ``strict=True`` once ``fc`` is an
  ``nn.Identity()`` (invprop's ResNets keep no classifier). Keys: the checkpoint's
  ``backbone.<name>`` written as ``<name>``. A one-channel stem (grey images) loads once
  ``conv1`` takes one channel; the printed code replaces it.
* ``timm``: the same file, for ``timm.create_model("resnet50", pretrained=False,
  num_classes=0, in_chans=C)``: timm's ResNet names its modules as torchvision's.
* ``safetensors``: the backbone's tensors under its own key names, with `head` also the
  head's under ``head.<name>``; `metadata` (below) in the header.
* ``onnx``: the backbone with its pooling: input ``images`` float32 ``[batch, C, S, S]``
  (preprocessed), output ``features`` ``[batch, F]``, the batch axis dynamic; with `head`
  a second output ``embeddings`` ``[batch, dim]``, the L2-normalised head output the memory
  bank holds. `metadata` in ``metadata_props``. Written by torch's ``torch.export``-based
  exporter (onnxscript), opset 18.

Only backbones with a standard counterpart (`COUNTERPARTS`) go to torchvision and timm;
the others (small_cnn, resnet18_cifar, and any backbone without an entry there, which is
taken for invprop's own network) are refused with the reason, and go to safetensors and
ONNX, whose printed code rebuilds them from torch.nn and torchvision alone; a backbone or
head that is not made of torch.nn layers alone (a module with its own ``forward``) is
rebuilt by importing its registered builder, which the code names.

Metadata, all strings (safetensors and ONNX alike): ``architecture`` (invprop's backbone
name), ``image_size``, ``channels``, ``stored_size``, ``mean``, ``std`` (JSON lists): the
checkpoint's ``preprocessing`` record; ``feature_dim``, ``params_hash``, ``epoch``,
``invprop_version``; with `head` also ``head`` and ``embedding_dim``; safetensors adds
``format: pt``, which Hugging Face's loaders expect of a PyTorch file.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from invprop import __version__
from invprop.checkpoint import checkpoint_preprocessing, encoder_from_checkpoint, load_checkpoint
from invprop.config import ModelConfig
from invprop.errors import InvpropError
from invprop.io import atomic_file, check_output_file, ensure_free_space
from invprop.models import BACKBONES, HEADS, Encoder

__all__ = [
    "COUNTERPARTS",
    "FORMATS",
    "Counterpart",
    "Export",
    "export_backbone",
    "module_code",
]

FORMATS: tuple[str, ...] = ("torchvision", "timm", "safetensors", "onnx")
# The modules each format's writer imports, all from the `export` extra.
REQUIRED_MODULES: dict[str, tuple[str, ...]] = {
    "torchvision": (),
    "timm": ("timm",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx", "onnxscript"),
}
INSTALL_HINT = "pip install -e '.[export]'"
ONNX_OPSET = 18  # read by onnxruntime since 1.14 (2023)
# Checkpoint entries that describe the run rather than hold state; everything else that is
# not the model (bank, optimizer, history, ...) is what an export leaves out.
DESCRIPTIVE_KEYS = ("version", "epoch", "params_hash", "config", "preprocessing", "model")


@dataclass(frozen=True)
class Counterpart:
    """A backbone's place outside invprop.

    `torchvision`: the ``torchvision.models`` builder whose modules the backbone has (some
    replaced): the rebuild code starts from it; "" for an ``nn.Sequential`` of torch.nn
    layers. `standard`: the backbone is that model, stem included (up to its input
    channels) and classifier aside, so torchvision and timm load it under that name;
    otherwise `why_not` says why neither library has it.
    """

    torchvision: str
    standard: bool
    why_not: str = ""


COUNTERPARTS: dict[str, Counterpart] = {
    "resnet50": Counterpart("resnet50", standard=True),
    "resnet18_cifar": Counterpart(
        "resnet18",
        standard=False,
        why_not=(
            "its stem is one 3x3 stride-1 convolution without max-pool (the CIFAR stem), "
            "while every ResNet of torchvision and timm downsamples 4x in its stem "
            "(a stride-2 7x7 or 3-conv stem, then a stride-2 max-pool or convolution)"
        ),
    ),
    "small_cnn": Counterpart(
        "", standard=False, why_not="it is invprop's own 4-layer CNN for 28x28 images"
    ),
}
# The counterpart of a backbone COUNTERPARTS does not name (a new one needs no entry here).
OWN_NETWORK = Counterpart("", standard=False, why_not="it is invprop's own network")


@dataclass
class Export:
    """What `export_backbone` wrote: `code` loads it (see the module docstring)."""

    path: str
    format: str
    checkpoint: str
    backbone: str
    head: bool
    size_bytes: int
    tensors: int
    # key prefix in the checkpoint -> key prefix in the file (state dicts and safetensors)
    renamed: dict[str, str]
    left_out: list[str]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)
    code: str = ""


def _require_modules(fmt: str) -> None:
    missing = []
    for name in REQUIRED_MODULES[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InvpropError(
            f"--format {fmt} needs {' and '.join(missing)}, which are not installed; "
            f"install the export extra: {INSTALL_HINT}"
        )


def module_code(module: nn.Module, indent: str = "") -> str:
    """A Python expression building `module` from torch.nn alone: ``nn.X(...)`` for a torch.nn
    layer, ``nn.Sequential(...)`` of such expressions for a Sequential (subclasses included:
    only the layers and their order make the state dict's keys)."""
    if isinstance(module, nn.Sequential):
        inner = indent + "    "
        items = "".join(f"{inner}{module_code(child, inner)},\n" for child in module)
        return f"nn.Sequential(\n{items}{indent})"
    cls = type(module)
    if getattr(nn, cls.__name__, None) is not cls or next(module.children(), None) is not None:
        raise TypeError(f"{cls.__name__} is not a torch.nn layer; no plain PyTorch builds it")
    return f"nn.{cls.__name__}({_constructor_arguments(module)})"


def _constructor_arguments(module: nn.Module) -> str:
    """A torch.nn layer's ``extra_repr`` (its constructor's arguments), less the keywords at
    their defaults, so the line also runs on torch versions that lack a newer keyword;
    ``(3, 3)`` reads ``3``."""
    call = ast.parse(f"f({module.extra_repr()})", mode="eval").body
    assert isinstance(call, ast.Call)
    defaults = inspect.signature(type(module)).parameters
    keywords = []
    for keyword in call.keywords:
        value = ast.literal_eval(keyword.value)
        if isinstance(value, tuple) and len(set(value)) == 1:
            value = value[0]
            keyword.value = ast.Constant(value)
        parameter = defaults.get(keyword.arg or "")
        if parameter is None or parameter.default != value:
            keywords.append(keyword)
    call.keywords = keywords
    return ast.unparse(call)[2:-1]


def _torchvision_base(counterpart: Counterpart) -> nn.Module:
    """The counterpart's torchvision model, on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return getattr(torchvision.models, counterpart.torchvision)(weights=None)


def _replaced_children(backbone: nn.Module, base: nn.Module) -> dict[str, nn.Module]:
    """The backbone's top-level modules that differ from the torchvision model's."""
    ours, theirs = dict(backbone.named_children()), dict(base.named_children())
    if ours.keys() != theirs.keys():
        raise TypeError(f"modules {sorted(ours)} do not follow torchvision's {sorted(theirs)}")
    return {name: child for name, child in ours.items() if repr(child) != repr(theirs[name])}


def _built_code(
    variable: str, module: nn.Module, builder: Callable[..., Any], *args: int
) -> list[str]:
    """Lines that assign the rebuilt (untrained) `module` to `variable`: torch.nn alone where
    it is made of torch.nn layers, otherwise a call of its registered `builder`, imported
    from its module (which the reader's Python must then be able to import)."""
    try:
        return [f"{variable} = {module_code(module)}"]
    except TypeError:
        pass
    where, name = builder.__module__, builder.__qualname__
    if "<locals>" in name or where == "__main__":
        raise InvpropError(
            f"{type(module).__name__} is not made of torch.nn layers alone and its builder "
            f"{where}.{name} cannot be imported; define the builder at the top level of an "
            "importable module"
        )
    call = ", ".join(map(str, args))
    return [
        f"# {type(module).__name__} is not made of torch.nn layers alone: its builder makes it",
        f"from {where} import {name}",
        f"{variable} = {name}({call})",
    ]


def _backbone_code(
    encoder: Encoder, name: str, counterpart: Counterpart, channels: int
) -> list[str]:
    """Lines that assign the rebuilt (untrained) backbone to `backbone`."""
    if not counterpart.torchvision:
        return _built_code("backbone", encoder.backbone, BACKBONES[name], channels)
    base = _torchvision_base(counterpart)
    lines = [f"backbone = torchvision.models.{counterpart.torchvision}(weights=None)"]
    for child_name, child in _replaced_children(encoder.backbone, base).items():
        lines.append(f"backbone.{child_name} = {module_code(child)}")
    return lines


def _preprocessing_code(pre: dict[str, Any]) -> list[str]:
    """torchvision transforms from a PIL image to the network's input, as invprop's embed
    computes it: convert to the channel count, fit to `stored_size` (when images are
    stored at another size than the network sees), resize the shorter side to
    `image_size` (bilinear, antialiased), centre crop, scale to [0, 1], normalise."""
    sizes = [pre["image_size"]]
    if pre["stored_size"] != pre["image_size"]:
        sizes.insert(0, pre["stored_size"])
    steps = ["v2.Grayscale(1)" if pre["channels"] == 1 else "v2.RGB()"]
    for size in sizes:
        steps += [f"v2.Resize({size})", f"v2.CenterCrop({size})"]
    steps += [
        "v2.ToImage()",
        "v2.ToDtype(torch.float32, scale=True)",
        f"v2.Normalize(mean={pre['mean']}, std={pre['std']})",
    ]
    return ["preprocess = v2.Compose([", *(f"    {step}," for step in steps), "])"]


def _metadata(
    encoder: Encoder, name: str, state: dict[str, Any], pre: dict[str, Any], head: str | None
) -> dict[str, str]:
    metadata = {
        "architecture": name,
        "image_size": str(pre["image_size"]),
        "channels": str(pre["channels"]),
        "stored_size": str(pre["stored_size"]),
        "mean": json.dumps(pre["mean"]),
        "std": json.dumps(pre["std"]),
        "feature_dim": str(encoder.feature_dim),
        "params_hash": str(state["params_hash"]),
        "epoch": str(int(state["epoch"])),
        "invprop_version": __version__,
    }
    if head is not None:
        metadata |= {"head": head, "embedding_dim": str(encoder.dim)}
    return metadata


class _FeaturesAndEmbeddings(nn.Module):
    """The encoder as ONNX sees it with a head: (features [B, F], embeddings [B, dim])."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.embed(images)


def _exported_tensors(encoder: Encoder, head: bool) -> dict[str, torch.Tensor]:
    """The backbone's state dict under its own names, and with `head` the head's as head.*."""
    tensors = dict(encoder.backbone.state_dict())
    if head:
        tensors |= {f"head.{k}": v for k, v in encoder.head.state_dict().items()}
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def _write_state_dict(
    encoder: Encoder, pre: dict[str, Any], head: bool, metadata: dict[str, str], path: Path
) -> None:
    # Through a file object: torch.save names the zip's records after the file it is given.
    with open(path, "wb") as handle:
        torch.save(encoder.backbone.state_dict(), handle)


def _write_safetensors(
    encoder: Encoder, pre: dict[str, Any], head: bool, metadata: dict[str, str], path: Path
) -> None:
    from safetensors.torch import save_file

    save_file(_exported_tensors(encoder, head), str(path), metadata={"format": "pt", **metadata})


def _write_onnx(
    encoder: Encoder, pre: dict[str, Any], head: bool, metadata: dict[str, str], path: Path
) -> None:
    import onnx

    module = (_FeaturesAndEmbeddings(encoder) if head else encoder.backbone).eval()
    example = torch.zeros(2, pre["channels"], pre["image_size"], pre["image_size"])
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["images"],
        output_names=["features", "embeddings"] if head else ["features"],
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=ONNX_OPSET,
        external_data=False,  # one file: the weights inside (backbones are far below 2 GB)
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    onnx.save_model(proto, str(path))


Writer = Callable[[Encoder, dict[str, Any], bool, dict[str, str], Path], None]
WRITERS: dict[str, Writer] = {
    "torchvision": _write_state_dict,
    "timm": _write_state_dict,
    "safetensors": _write_safetensors,
    "onnx": _write_onnx,
}


def _check_loads_into_target(
    fmt: str, counterpart: Counterpart, backbone: nn.Module, channels: int
) -> None:
    """Load the backbone's state dict strictly into the model the printed code builds (on
    the meta device), so a file that the library would refuse is never written."""
    if fmt == "timm":
        import timm

        with torch.device("meta"):
            target = timm.create_model(
                counterpart.torchvision, pretrained=False, num_classes=0, in_chans=channels
            )
    else:
        target = _torchvision_base(counterpart)
        replaced = _replaced_children(backbone, target)
        # What the printed code may replace in a standard model: the classifier, and the
        # stem's convolution for another number of input channels.
        if not replaced.keys() <= {"fc"} | ({"conv1"} if channels != 3 else set()):
            raise TypeError(f"{sorted(replaced)} differ from torchvision's; not standard")
        for name, child in replaced.items():
            setattr(target, name, copy.deepcopy(child).to("meta"))
    target.load_state_dict(backbone.state_dict(), strict=True, assign=True)


def _loader_code(
    fmt: str,
    out: Path,
    encoder: Encoder,
    model: ModelConfig,
    counterpart: Counterpart,
    head: bool,
    channels: int,
) -> list[str]:
    """The imports and the lines that load the file (the preprocessing follows them)."""
    path = repr(str(out))
    if fmt == "onnx":
        return [
            "import onnxruntime as ort",
            "import torch",
            "from torchvision.transforms import v2",
            "",
            f"session = ort.InferenceSession({path}, providers=['CPUExecutionProvider'])",
            "metadata = session.get_modelmeta().custom_metadata_map",
        ]
    if fmt == "timm":
        return [
            "import timm",
            "import torch",
            "from torchvision.transforms import v2",
            "",
            f"backbone = timm.create_model({counterpart.torchvision!r}, pretrained=False, "
            f"num_classes=0, in_chans={channels})",
            f"backbone.load_state_dict(torch.load({path}, weights_only=True))",
            "backbone.eval()",
        ]
    lines = ["import torch"]
    if counterpart.torchvision:
        lines.append("import torchvision")
    if fmt == "safetensors":
        lines += ["from safetensors import safe_open", "from safetensors.torch import load_file"]
    lines += ["from torch import nn", "from torchvision.transforms import v2", ""]
    lines += _backbone_code(encoder, model.backbone, counterpart, channels)
    if fmt == "torchvision":
        return [
            *lines,
            f"backbone.load_state_dict(torch.load({path}, weights_only=True))",
            "backbone.eval()",
        ]
    lines += [
        f"with safe_open({path}, 'pt') as file:",
        "    metadata = file.metadata()",
        f"tensors = load_file({path})",
    ]
    if not head:
        return [*lines, "backbone.load_state_dict(tensors)", "backbone.eval()"]
    return [
        *lines,
        "backbone.load_state_dict({k: v for k, v in tensors.items() if not k.startswith('head.')})",
        "backbone.eval()",
        *_built_code("head", encoder.head, HEADS[model.head], encoder.feature_dim, encoder.dim),
        "head.load_state_dict(",
        "    {k.removeprefix('head.'): v for k, v in tensors.items() if k.startswith('head.')}",
        ")",
        "head.eval()",
    ]


def _usage_code(fmt: str, head: bool) -> list[str]:
    """Comment lines: the file applied to a list of PIL images."""
    batch = "torch.stack([preprocess(image) for image in images])"
    if fmt == "onnx":
        outputs = "['features', 'embeddings']" if head else "['features']"
        return [f"# outputs = session.run({outputs}, {{'images': {batch}.numpy()}})"]
    lines = ["# with torch.no_grad():", f"#     features = backbone({batch})"]
    if head:
        lines.append("#     embeddings = nn.functional.normalize(head(features), dim=1)")
    return lines


def _target_notes(fmt: str, counterpart: Counterpart, channels: int) -> list[str]:
    """What to know when loading into torchvision's or timm's model."""
    notes = []
    if channels != 3:
        how = (
            f"builds it with in_chans={channels}"
            if fmt == "timm"
            else f"replaces conv1 with a {channels}-channel one before loading"
        )
        notes.append(
            f"conv1 takes {channels} input channel(s), {fmt}'s {counterpart.torchvision} "
            f"3 (grey images): the code below {how}"
        )
    return [*notes, f"{fmt}'s classifier stays out: fc is an nn.Identity() (num_classes=0)"]


def _check_target(
    fmt: str, counterpart: Counterpart, name: str, head: bool, checkpoint: Path
) -> None:
    """torchvision and timm take standard backbones only, and no head."""
    if fmt not in ("torchvision", "timm"):
        return
    if not counterpart.standard:
        raise InvpropError(
            f"{checkpoint} holds a {name} backbone, which no {fmt} model matches: "
            f"{counterpart.why_not}; export it with --format safetensors or onnx, which "
            "print the plain PyTorch that rebuilds it"
        )
    if head:
        raise InvpropError(
            f"--head: {fmt}'s {counterpart.torchvision} has no projection head; "
            "export the head with --format safetensors or onnx"
        )


def export_backbone(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    head: bool = False,
    force: bool = False,
) -> Export:
    """Write the backbone of `checkpoint` (with `head`, also its head) to `out` as `fmt`,
    atomically; refuse to overwrite `out` unless `force`. See the module docstring."""
    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise InvpropError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    check_output_file(out, force, inputs=(checkpoint,))
    _require_modules(fmt)
    state = load_checkpoint(checkpoint)
    if "model" not in state:
        raise InvpropError(
            f"{checkpoint} holds no model weights; pass a checkpoint written by pretrain"
        )
    pre = checkpoint_preprocessing(state, str(checkpoint))
    encoder, cfg, _ = encoder_from_checkpoint(state)
    name = cfg.model.backbone
    counterpart = COUNTERPARTS.get(name, OWN_NETWORK)
    _check_target(fmt, counterpart, name, head, checkpoint)

    metadata = _metadata(encoder, name, state, pre, cfg.model.head if head else None)
    notes = []
    if fmt in ("torchvision", "timm"):
        _check_loads_into_target(fmt, counterpart, encoder.backbone, pre["channels"])
        notes = _target_notes(fmt, counterpart, pre["channels"])
    tensors = _exported_tensors(encoder, head)
    ensure_free_space(
        out.parent, sum(t.numel() * t.element_size() for t in tensors.values()), str(out)
    )
    with atomic_file(out) as tmp:
        WRITERS[fmt](encoder, pre, head, metadata, tmp)

    head_size = len(encoder.head.state_dict())
    left_out = [] if head else [f"the {cfg.model.head} head ({head_size} tensors)"]
    left_out += [key for key in state if key not in DESCRIPTIVE_KEYS]
    result = Export(
        path=str(out),
        format=fmt,
        checkpoint=str(checkpoint),
        backbone=name,
        head=head,
        size_bytes=out.stat().st_size,
        tensors=len(tensors),
        # ONNX names its weights after the graph's nodes: no keys to rename
        renamed={} if fmt == "onnx" else {"backbone.": "", **({"head.": "head."} if head else {})},
        left_out=left_out,
        metadata=metadata,
        notes=notes,
    )
    lines = _summary(result, int(state["epoch"]))
    lines += _loader_code(fmt, out, encoder, cfg.model, counterpart, head, pre["channels"])
    lines += _preprocessing_code(pre) + _usage_code(fmt, head)
    result.code = "\n".join(lines) + "\n"
    return result


def _summary(result: Export, epoch: int) -> list[str]:
    """Comment lines: what was written, from what, under which names, what was left out."""
    meta = result.metadata
    size = f"{meta['channels']}, {meta['image_size']}, {meta['image_size']}"
    if result.format == "onnx":
        outputs = f"features [batch, {meta['feature_dim']}]"
        if result.head:
            outputs += f", embeddings [batch, {meta['embedding_dim']}] (L2-normalised)"
        names = f"# graph: input images [batch, {size}] (preprocessed), outputs {outputs}"
    else:
        head = ", the head's head.<name> as is" if result.head else ""
        names = (
            f"# keys: the checkpoint's backbone.<name> as <name>{head} "
            f"({result.tensors} tensors); features: {meta['feature_dim']}-d from [{size}]"
        )
    lines = [
        f"# {result.path}: the {result.backbone} backbone of {result.checkpoint} (epoch {epoch})"
        f"{' and its head' if result.head else ''}, {result.format} format, "
        f"{result.size_bytes / 1e6:.1f} MB",
        names,
        f"# left out: {', '.join(result.left_out)}",
        *(f"# {note}" for note in result.notes),
    ]
    return [*lines, ""]
