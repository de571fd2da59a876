"""One typed, validated configuration built from `params.yaml`, presets and overrides.

`params.yaml` is the single source of truth that DVC and Snakemake track. `load_config`
reads it, applies `key.sub=value` overrides and returns a frozen `Config`; every value is
checked (type, range, choices, cross-field rules) before any work starts, and errors name
the key, the value and what is allowed. Defaults live here and only here.

The choices of every extension point (datasets, backbones, propagators, ...) are the lists
of `invprop.names`, which the registries share. This module imports no torch, so the CLI
answers `--help` fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from invprop import names
from invprop.bounds import max_positives
from invprop.errors import InvpropError

# Keys renamed so that one name means one thing (evaluate.knn_k is the classifier's k list;
# propagate is a stage): the old name gets a one-line error that names the new one.
RENAMED_KEYS = {
    "pretrain.knn_k": "pretrain.k",
    "pretrain.propagation": "pretrain.propagator",
}
# Values renamed so that a head is named for what it is: reading an old value in params is an
# error naming the new one, so no params file silently changes meaning.
RENAMED_VALUES: dict[str, dict[str | bool, str]] = {
    "model.head": {"mlp": "mlp_hidden_bn", "mlp_bn": "mlp_hidden_out_bn"},
    # a flag once; now which BatchNorm: none, in training mode, or the authors' eval mode
    "evaluate.linear.batchnorm": {True: "train", False: "none"},
}
_RENAME_NOTES = {
    ("model.head", "mlp"): "; the authors' head, without BatchNorm, is 'mlp_no_bn'",
    (
        "evaluate.linear.batchnorm",
        True,
    ): "; the authors' ImageNet probe keeps it in eval mode: 'eval'",
}


def with_current_names(data: dict[str, Any]) -> dict[str, Any]:
    """A params mapping written before RENAMED_KEYS / RENAMED_VALUES (a checkpoint's stored
    config) with its keys and values under their current names; other mappings come back as
    they are. `data` is not modified."""
    out = json.loads(json.dumps(data))
    for old, new in RENAMED_KEYS.items():
        (section, name), (_, new_name) = old.split("."), new.split(".")
        if name in out.get(section, {}):
            out[section][new_name] = out[section].pop(name)
    for dotted, renames in RENAMED_VALUES.items():
        *sections, name = dotted.split(".")
        node: Any = out
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and _renamed(renames, node.get(name)) is not None:
            node[name] = _renamed(renames, node[name])
    return out


def _renamed(renames: dict[str | bool, str], value: Any) -> str | None:
    """The current name of an old value (a string, or a bool once a flag), else None."""
    return renames.get(value) if isinstance(value, str | bool) else None


def _f(default: Any, **checks: Any) -> Any:
    """A dataclass field with range checks: ge, gt, le, lt (applied to numbers and list items)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=checks)
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to prepare and train on, and at what input size."""

    name: str = "fashion_mnist"
    # None: the dataset's default location (the Debian package folder for fashion_mnist).
    root: str | None = None
    # Only when asked: torchvision's download, for machines that are online.
    download: bool = False
    image_size: int = _f(28, ge=8, le=512)
    channels: Literal[1, 3] = 1
    # Seeded class-stratified subsets for quick runs; None keeps everything.
    train_limit: int | None = _f(None, ge=1)
    test_limit: int | None = _f(None, ge=1)
    # Fixes what is compared, apart from the training seed (`seed`): the subsets above, the
    # held-out validation part of train and the linear probe's C-selection split. Runs that
    # differ only in `seed` therefore train and are scored on the same images.
    seed: int = _f(0, ge=0)


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal[names.BACKBONES] = "small_cnn"
    # mlp_no_bn: the authors' Linear-ReLU-Linear; mlp_hidden_bn: with a hidden BatchNorm;
    # mlp_hidden_out_bn: with an output BatchNorm too (invprop.models.build_head).
    head: Literal[names.HEADS] = "mlp_hidden_bn"
    dim: int = _f(128, ge=2, le=4096)
    # The head's Linear layers: PyTorch's default initialisation, or the authors' ResNet-50
    # one (models/resnet.py:139-141: Xavier-uniform weights, zero biases).
    head_init: Literal[names.HEAD_INITS] = "torch"


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample random augmentation, applied batched on the data's device."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = _f(0.5, ge=0, le=1)
    jitter_p: float = _f(0.8, ge=0, le=1)
    brightness: float = _f(0.4, ge=0)
    contrast: float = _f(0.4, ge=0)
    saturation: float = _f(0.4, ge=0)
    hue: float = _f(0.1, ge=0, le=0.5)
    grayscale_p: float = _f(0.2, ge=0, le=1)
    blur_p: float = _f(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # Image folders: images whose shorter side is longer are first resized to it (aspect
    # ratio kept, the whole image) before the random crop, for speed; null: crop from the
    # full-resolution image, as the authors do.
    shorter_side: int | None = _f(None, ge=8)
    # Per-channel normalisation constants for the pretraining dataset (one value per
    # data.channels); null: the prepared data's own mean and std.
    mean: list[float] | None = None
    std: list[float] | None = _f(None, gt=0)


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = _f(2, ge=1)
    batch_size: int = _f(128, ge=2)
    lr: float = _f(0.03, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)
    # step: lr x lr_decay from each epoch in lr_milestones on (main.py without --cos).
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    lr_milestones: list[int] = _f([], ge=1)
    lr_decay: float = _f(0.1, gt=0, le=1)
    warmup_epochs: int = _f(0, ge=0)
    temperature: float = _f(0.2, gt=0)
    bank_momentum: float = _f(0.5, ge=0, lt=1)
    bank_init: Literal["random", "forward"] = "forward"
    # How the neighbour table is refreshed: "online" (authors: each batch row from its
    # augmented view against the bank), or rebuilt once per epoch as the exact k-NN of the
    # bank itself ("bank") or of clean, un-augmented embeddings of the train split ("clean").
    # The default "clean" was chosen on held-out train data (docs/results.md, seed studies).
    table_refresh: Literal[names.TABLE_REFRESHES] = "clean"
    invp: bool = True
    # Neighbours per row of the memory bank's k-NN table (propagation walks them).
    k: int = _f(4, ge=1)
    hops: int = _f(3, ge=1)
    n_pos: int = _f(20, ge=1)
    n_background: int = _f(4096, ge=1)
    positives: Literal[names.POSITIVES] = "hard"
    # How positives are propagated: exact BFS (the paper) or concat (the authors' code).
    propagator: Literal[tuple(names.PROPAGATORS)] = "exact"
    # paper: B(i) of the paper; code: the authors' default (--exclusive 1); code_inclusive:
    # their --exclusive 0 (invprop.method.loss.invariance_loss).
    background: Literal[names.BACKGROUNDS] = "paper"
    # eps in -log(ratio + eps) of both losses: 0, the exact loss, or the authors' guard
    # 1e-7 (objective.py lines 115 and 132), which caps each loss at -log(eps).
    loss_eps: float = _f(0.0, ge=0, lt=1)
    lambda_inv: float = _f(0.6, ge=0)
    ramp_epoch: int = _f(0, ge=0)
    # The network's arithmetic, the same on every device (so CI rehearses on the CPU what a
    # GPU runs): bf16 autocast (bf16), none (fp32), or auto: bf16 on CUDA, fp32 on the CPU,
    # where bf16 is slower. The bank, the table, similarities and losses stay fp32 / int64.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # The layout of images and convolution weights, the same on every device: NHWC
    # (torch.channels_last, true), NCHW (false), or auto: NHWC on CUDA, NCHW on the CPU,
    # where its kernels sum in another order than the NCHW ones all CPU figures came from.
    channels_last: Literal["auto"] | bool = "auto"
    # torch.compile of the encoder (TorchInductor: Triton on CUDA, C++ on the CPU).
    compile: bool = False
    snapshot_epochs: list[int] = _f([], ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = _f(None, ge=1)
    num_workers: int = _f(0, ge=0)
    # DDP: processes per node (one per GPU), on `nodes` nodes of a SLURM allocation.
    processes: int = _f(1, ge=1)
    nodes: int = _f(1, ge=1)
    monitor_knn: bool = True


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = _f(512, ge=1)
    # "final" and/or "epoch_NNNN" for snapshots listed in pretrain.snapshot_epochs.
    tags: list[str] = _f(["final"])


@dataclass(frozen=True)
class GraphConfig:
    k: int = _f(20, ge=1)
    backend: Literal[("auto", *names.NEIGHBOUR_BACKENDS)] = "auto"
    index: Literal[names.NEIGHBOUR_INDEXES] = "flat"
    ivf_nlist: int = _f(1024, ge=1)
    ivf_nprobe: int = _f(16, ge=1)
    hnsw_m: int = _f(32, ge=2)
    recall_queries: int = _f(1000, ge=1)


@dataclass(frozen=True)
class PropagateConfig:
    k: int = _f(4, ge=1)
    hops: int = _f(3, ge=1)
    n_pos: int = _f(20, ge=1)


@dataclass(frozen=True)
class LinearLayerConfig:
    """A backbone layer the sgd_augmented probe trains a linear classifier on."""

    # "features": the pooled backbone output (what kNN, the L-BFGS probe and transfer use);
    # else a module name of the backbone, e.g. "layer3" or "layer4.0" of a ResNet.
    name: str = "features"
    # Its output average-pooled to grid x grid cells before flattening (the authors' ImageNet
    # probe pools layer3 to 3 x 3, models/LinearModelMulti.py:23).
    grid: int = _f(1, ge=1)


@dataclass(frozen=True)
class LinearConfig:
    protocol: Literal["lbfgs", "sgd_augmented"] = "lbfgs"
    # Inverse-regularisation grid searched on a held-out part of the train split.
    c_grid: list[float] = _f([0.1, 1.0], gt=0)
    val_fraction: float = _f(0.1, gt=0, lt=1)
    max_iter: int = _f(100, ge=1)
    # Only for protocol sgd_augmented (the authors' linear evaluation).
    epochs: int = _f(100, ge=1)
    lr: float = _f(30.0, gt=0)
    batch_size: int = _f(256, ge=1)
    # cosine (per step) or step: lr x lr_decay for every milestone epoch already past.
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: list[int] = _f([], ge=1)
    lr_decay: float = _f(0.1, gt=0, le=1)
    # A BatchNorm1d on the frozen features before the linear layer: none; train (it
    # normalises each batch, its running estimates at test time); or eval, the authors'
    # ImageNet probe (models/LinearModelMulti.py:28 under network.eval(),
    # linear_classification.py:232): running statistics stay 0 and 1, so it is a learnable
    # per-feature scale and shift.
    batchnorm: Literal["none", "train", "eval"] = "none"
    # The classifier's initial weights: 0 for zeros, else N(0, init_std) (biases 0).
    init_std: float = _f(0.0, ge=0)
    # A classifier per layer, trained at once on the same batches; linear/* reports the
    # last one listed, linear/layers/<name>/* each of them when there are several.
    layers: list[LinearLayerConfig] = _f([LinearLayerConfig()])
    # When the test split is scored for the authors' best-on-test figure: after each epoch
    # (eval_linear.py) or before each epoch (linear_classification.py:185-186, so the last
    # epoch is never scored). linear/top1 is always the final classifier's.
    test_scoring: Literal["after_each_epoch", "before_each_epoch"] = "after_each_epoch"


@dataclass(frozen=True)
class BaselinesConfig:
    pixels: bool = True
    random_init: bool = False
    instance_discrimination: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    knn_k: list[int] = _f([200, 20, 1], ge=1)
    knn_temperature: float = _f(0.07, gt=0)
    # The held-out validation part of train (class-stratified, drawn with data.seed): kNN
    # and linear figures on it are what choices look at, never the test split.
    val_fraction: float = _f(0.1, gt=0, lt=1)
    linear: LinearConfig = field(default_factory=LinearConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = _f(5, ge=1)
    lr: float = _f(0.2, gt=0)
    batch_size: int = _f(128, ge=1)
    weight_decay: float = _f(5e-4, ge=0)


@dataclass(frozen=True)
class TransferConfig:
    targets: list[str] = _f(["digits"])
    # Where each target's raw files live, by dataset name (None: the dataset's default).
    roots: dict[str, str] = _f({})
    semi_fractions: list[float] = _f([0.01, 0.1], gt=0, le=1)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass(frozen=True)
class ReportConfig:
    anchors: int = _f(4, ge=1)
    map_points: int = _f(2000, ge=10)
    # reports/explorer/index.html: train images on its map, and neighbours shown per image.
    # Each image brings at most 1 + tags x (neighbours + n_pos) thumbnails of ~0.55 KB
    # (Fashion-MNIST), so 120 keeps the default page under 5 MB even without overlap.
    explorer_points: int = _f(120, ge=1)
    explorer_neighbours: int = _f(8, ge=1)


@dataclass(frozen=True)
class Config:
    # The training seed: network initialisation, augmentation draws and batch order (and
    # the report's anchors and maps). The data's own randomness is data.seed.
    seed: int = _f(0, ge=0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    propagate: PropagateConfig = field(default_factory=PropagateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self, *sections: str) -> dict[str, Any]:
        """Plain nested dict (tuples as lists) of the named sections, or of all of them, as
        it would appear in params.yaml. Only the named sections are read."""
        named = sections or tuple(f.name for f in dataclasses.fields(self))
        values = {name: getattr(self, name) for name in named}
        plain = {
            k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in values.items()
        }
        return json.loads(json.dumps(plain))

    def prepared_datasets(self) -> list[str]:
        """The datasets the prepare stage must produce: the main one, then transfer targets."""
        return list(dict.fromkeys([self.data.name, *self.transfer.targets]))

    def dataset_root(self, name: str) -> str | None:
        """Where the raw files of dataset `name` live (None: its default location)."""
        return self.data.root if name == self.data.name else self.transfer.roots.get(name)


# ---------------------------------------------------------------------------------------
# Building and validating


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a mapping of names to strings"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _check_range(key: str, value: Any, checks: dict[str, Any]) -> None:
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if item is None or not isinstance(item, int | float):
            continue
        for op, bound in checks.items():
            ok = {
                "ge": item >= bound,
                "gt": item > bound,
                "le": item <= bound,
                "lt": item < bound,
            }[op]
            if not ok:
                symbol = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
                raise InvpropError(
                    f"params: {key} = {value!r} is out of range: must be {symbol} {bound}"
                )


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Return `value` as type `tp`, or raise an error naming the key and what is allowed."""
    origin = typing.get_origin(tp)
    bad = InvpropError(f"params: {key} = {value!r} is invalid: expected {_describe(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except InvpropError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(
            _coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 5e-4 as a string; accept what people write.
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_renamed(key: str, value: Any) -> None:
    new = _renamed(RENAMED_VALUES.get(key, {}), value)
    if new is not None:
        note = _RENAME_NOTES.get((key, value), "")
        raise InvpropError(
            f"params: {key} = {value!r} was renamed: use {new!r} (the same thing){note}"
        )


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        for name in unknown:
            if f"{where}{name}" in RENAMED_KEYS:
                raise InvpropError(
                    f"params: {where}{name} was renamed to {RENAMED_KEYS[where + name]}; "
                    "rename the key in your params file or preset"
                )
        raise InvpropError(
            f"params: unknown key {where}{unknown[0]}; allowed keys here: "
            + ", ".join(f"{where}{name}" for name in fields)
        )
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        _check_renamed(key, value)
        coerced = _coerce(key, hints[name], value)
        _check_range(key, coerced, dict(fields[name].metadata))
        values[name] = coerced
    return cls(**values)


def _validate(cfg: Config) -> None:
    """Rules that span several keys."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InvpropError(f"params: {message}")

    p = cfg.pretrain
    datasets = ", ".join(names.DATASETS)
    need(
        cfg.data.name in names.DATASETS,
        f"data.name = {cfg.data.name!r} is not a known dataset; one of {datasets}",
    )
    for target in cfg.transfer.targets:
        need(
            target in names.DATASETS,
            f"transfer.targets has unknown dataset {target!r}; one of {datasets}",
        )
    need(
        cfg.data.name not in cfg.transfer.targets,
        f"transfer.targets contains the pretraining dataset {cfg.data.name!r}; remove it "
        "(semi-supervised fine-tuning on it is transfer.semi_fractions)",
    )
    need(
        len(set(cfg.transfer.targets)) == len(cfg.transfer.targets),
        "transfer.targets has duplicates",
    )
    for name, (low, high) in {
        "augment.crop_scale": cfg.augment.crop_scale,
        "augment.crop_ratio": cfg.augment.crop_ratio,
        "augment.blur_sigma": cfg.augment.blur_sigma,
    }.items():
        need(0 < low <= high, f"{name} = [{low}, {high}] must satisfy 0 < low <= high")
    need(cfg.augment.crop_scale[1] <= 1, "augment.crop_scale upper bound must be <= 1")
    a = cfg.augment
    need(
        (a.mean is None) == (a.std is None),
        "augment.mean and augment.std must be set together (or both null for the data's own)",
    )
    for name, values in (("augment.mean", a.mean), ("augment.std", a.std)):
        need(
            values is None or len(values) == cfg.data.channels,
            f"{name} has {len(values or [])} values for data.channels = {cfg.data.channels}; "
            "give one per input channel",
        )
    # The bound each propagator declares with its name (exact and concat: k + ... + k^hops).
    largest = names.PROPAGATORS[p.propagator](p.k, p.hops)
    need(
        p.n_pos <= largest,
        f"pretrain.n_pos = {p.n_pos} exceeds the largest possible positive set of "
        f"pretrain.propagator {p.propagator!r}, {largest} (k={p.k}, hops={p.hops}); "
        "lower pretrain.n_pos or raise pretrain.k / pretrain.hops",
    )
    largest = max_positives(cfg.propagate.k, cfg.propagate.hops)
    need(
        cfg.propagate.n_pos <= largest,
        f"propagate.n_pos = {cfg.propagate.n_pos} exceeds the largest possible positive set "
        f"{largest} (propagate.k={cfg.propagate.k}, propagate.hops={cfg.propagate.hops})",
    )
    need(
        cfg.propagate.k <= cfg.graph.k,
        f"propagate.k = {cfg.propagate.k} must be <= graph.k = {cfg.graph.k} "
        "(propagation walks the graph's first k neighbours)",
    )
    need(
        p.ramp_epoch < p.epochs or not p.invp or p.lambda_inv == 0,
        f"pretrain.ramp_epoch = {p.ramp_epoch} >= pretrain.epochs = {p.epochs}: the "
        "propagation loss would never switch on; lower ramp_epoch or set invp: false",
    )
    need(
        all(m <= p.epochs for m in p.lr_milestones),
        f"pretrain.lr_milestones = {p.lr_milestones} has epochs past pretrain.epochs = "
        f"{p.epochs}; remove them or raise epochs",
    )
    need(
        p.warmup_epochs < p.epochs,
        f"pretrain.warmup_epochs = {p.warmup_epochs} must be < pretrain.epochs = {p.epochs}",
    )
    bad = [e for e in p.snapshot_epochs if e > p.epochs]
    need(
        not bad,
        f"pretrain.snapshot_epochs has {bad[0] if bad else ''} > pretrain.epochs = {p.epochs}",
    )
    allowed_tags = {"final"} | {f"epoch_{e:04d}" for e in p.snapshot_epochs}
    for tag in cfg.embed.tags:
        need(
            tag in allowed_tags,
            f"embed.tags has {tag!r}; allowed: {', '.join(sorted(allowed_tags))} "
            "(add the epoch to pretrain.snapshot_epochs to embed a snapshot)",
        )
    need(len(set(cfg.embed.tags)) == len(cfg.embed.tags), "embed.tags has duplicates")
    lin = cfg.evaluate.linear
    need(
        all(m <= lin.epochs for m in lin.milestones),
        f"evaluate.linear.milestones = {lin.milestones} has epochs past evaluate.linear.epochs "
        f"= {lin.epochs}; remove them or raise epochs",
    )
    layers = [layer.name for layer in lin.layers]
    need(bool(layers), "evaluate.linear.layers is empty; list at least one layer (features)")
    need(
        len(set(layers)) == len(layers),
        f"evaluate.linear.layers names a layer twice: {', '.join(layers)}",
    )
    need(
        all(layer.grid == 1 for layer in lin.layers if layer.name == "features"),
        "evaluate.linear.layers: features are pooled already; give them grid 1",
    )
    need(
        lin.protocol == "sgd_augmented" or lin.layers == [LinearLayerConfig()],
        "evaluate.linear.layers is for protocol sgd_augmented (the L-BFGS probe fits the "
        "pooled features); set protocol: sgd_augmented or layers: [{name: features, grid: 1}]",
    )


def _takes_string(tp: Any, value: str) -> bool:
    """Whether type `tp` takes the string `value` as it is (a str, or a Literal that lists
    it); any other string given for `tp` is read as YAML ('true' for `Literal["auto"] |
    bool` is the boolean)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_takes_string(arg, value) for arg in typing.get_args(tp))
    return tp is str


def _restore(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return restore_types(value, tp)
    if isinstance(value, str) and not _takes_string(tp, value):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # validation then names the key and what it expects
    if isinstance(value, list) and typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple:
            return [_restore(arg, item) for arg, item in zip(args, value, strict=False)]
        return [_restore(args[0], item) for item in value]
    return value


def restore_types(data: dict[str, Any], cls: type = Config) -> dict[str, Any]:
    """`data` with each string that stands for a non-string value read as YAML.

    Snakemake's `--config` reads nested values as strings (`pretrain={epochs: 8}` gives
    epochs '8'); typed again here, they reach the stages as Snakemake records them.
    Unknown keys pass through, for validation to name.
    """
    hints = typing.get_type_hints(cls)
    return {key: _restore(hints[key], v) if key in hints else v for key, v in data.items()}


def save_params(cfg: Config, path: str | Path) -> Path:
    """Write `cfg` as a complete params file, atomically; left untouched when it already
    holds exactly this (so its time stamp moves only when the params do)."""
    from invprop.io import atomic_file

    path = Path(path)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if not (path.is_file() and path.read_text() == text):
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InvpropError(
            f"override {text!r} must look like key.sub=value (e.g. pretrain.epochs=10)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InvpropError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvpropError(f"override {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def merge_in_place(node: Any, overlay: dict[str, Any]) -> None:
    """Merge `overlay` into the mapping `node`: non-empty mappings merge key by key; any
    other value, an empty mapping included, replaces what was there."""
    for key, value in overlay.items():
        if isinstance(value, dict) and value and isinstance(node.get(key), dict):
            merge_in_place(node[key], value)
        else:
            node[key] = value


def params_hash(values: dict[str, Any]) -> str:
    """A short stable hash of a plain mapping of param values (key order does not count)."""
    payload = json.dumps(values, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overlay` merged in (see merge_in_place)."""
    merged = json.loads(json.dumps(base))
    merge_in_place(merged, json.loads(json.dumps(overlay)))
    return merged


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InvpropError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvpropError(f"{what} {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvpropError(
            f"{what} {path} must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def config_from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a Config from a params mapping plus `key=value` overrides."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        _set_path(data, path, value)
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def load_config(path: str | Path = "params.yaml", overrides: typing.Sequence[str] = ()) -> Config:
    """Read `params.yaml` (missing keys take their defaults), apply overrides, validate."""
    return config_from_dict(read_yaml_mapping(path, "params file"), overrides)


@dataclass(frozen=True)
class PresetApplied:
    """What `apply_preset` did: the new config, the values it changed (old, new), and the
    values it left as they were although they differ from the defaults (earlier changes,
    e.g. another preset's keys that this one does not set)."""

    config: Config
    changed: dict[str, tuple[Any, Any]]
    kept: dict[str, tuple[Any, Any]]


def apply_preset(
    params_path: str | Path, preset_path: str | Path, fresh: bool = False
) -> PresetApplied:
    """Merge a preset (a partial params file) into `params_path`, keeping its comments.

    `fresh`: reset every value to its default first, so the result is exactly the defaults
    plus the preset, whatever earlier changes params.yaml held. The merged result is
    validated before the file is rewritten (atomically), so a bad preset never leaves a
    broken params.yaml behind.
    """
    # Only `params apply` needs these: kept out of `invprop --help`, which imports config
    from ruamel.yaml import YAML

    from invprop.io import atomic_file

    params_path = Path(params_path)
    preset = read_yaml_mapping(preset_path, "preset")
    base = read_yaml_mapping(params_path, "params file") if params_path.exists() else {}
    before = config_from_dict(base)
    start = Config().to_dict() if fresh else base
    merged = deep_merge(start, preset)
    cfg = config_from_dict(merged)

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 100
    rt.representer.add_representer(float, _represent_float)
    document = rt.load(params_path.read_text()) if params_path.exists() else None
    if document is None:
        document = {}

    if fresh:
        merge_in_place(document, Config().to_dict())
    merge_in_place(document, preset)
    buffer = io.StringIO()
    rt.dump(document, buffer)
    if yaml_or_none(buffer.getvalue()) != merged:
        # ruamel can misplace an end-of-line comment when a list changes form
        raise InvpropError(
            f"params: could not merge {preset_path} into {params_path} with its comments "
            f"kept (a comment beside a list value?); {params_path} is unchanged: move that "
            "comment to a line of its own, or edit the values by hand"
        )
    with atomic_file(params_path) as tmp:
        tmp.write_text(buffer.getvalue())
    set_by_preset = set(flat_keys(preset))
    kept = {
        key: values
        for key, values in config_diff(Config(), cfg).items()
        if key not in set_by_preset and not any(key.startswith(k + ".") for k in set_by_preset)
    }
    return PresetApplied(cfg, config_diff(before, cfg), kept)


def _represent_float(representer: Any, value: float) -> Any:
    """A new float as YAML 1.1 and 1.2 both read it: ruamel writes 1e-07, which PyYAML (YAML
    1.1, the stages' reader) takes for a string; 1.0e-07 is a float to both."""
    if not math.isfinite(value):
        return representer.represent_float(value)
    text = repr(value)
    mantissa, exponent = text.partition("e")[::2]
    if exponent:
        mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
        exponent = exponent if exponent[0] in "+-" else f"+{exponent}"
        text = f"{mantissa}e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def yaml_or_none(text: str) -> Any:
    """The parsed YAML text, or None where it does not parse."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def flat_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested params mapping as {dotted key: leaf value} (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_keys(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Keys (dotted) whose values differ between two configs, with both values."""
    fa, fb = flat_keys(a.to_dict()), flat_keys(b.to_dict())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
