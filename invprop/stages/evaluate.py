"""The evaluate stage: kNN, linear probe and baselines -> flat `reports/evaluate.json`.

Reads `artifacts/embeddings/final/` (embed stage), `models/pretrain/final.pt` (its memory
bank), `data/prepared/<data.name>/` (labels, and images for the baselines) and, when that
baseline is on, `artifacts/embeddings/<baseline>/` of each training baseline (its own stage,
invprop.baselines). Every input is checked before any work starts, with errors that name
the file and the stage to rerun.

Keys (all flat, "/"-separated, so DVC metrics, the report and `invprop metrics` read them
directly; K ranges over evaluate.knn_k, fractions are in [0, 1])::

    invp/knn_clean/{embeddings,features}/k{K}/{top1,top5}   clean train set (standard)
    invp/knn_clean/{embeddings,features}/seconds
    invp/knn_bank/k{K}/{top1,top5}, invp/knn_bank/seconds   memory bank as train set
    invp/linear/{top1,top5,c,seconds,protocol}               linear probe on features
    invp/val/...                                             the same kNN and L-BFGS probe
                                                             keys on the validation part
    invp/linear/authors_best_on_test/{top1,top5,epoch}      sgd_augmented: best test epoch
    invp/linear/layers/<layer>/{top1,top5}, .../authors_best_on_test/{top1,top5,epoch}
                                                             each of several probed layers
    invp/epoch
    pixels/knn/k{K}/{top1,top5}, pixels/knn/seconds          raw-pixel baseline
    pixels/linear/{top1,top5,c,seconds,protocol}
    random_init/extract/seconds                              the network before training
    random_init/knn_clean/{embeddings,features}/k{K}/{top1,top5}, .../seconds
    random_init/linear/{top1,top5,c,seconds,protocol}
    <training baseline>/...                                  same keys as invp (when on),
                                                             e.g. instance_discrimination/...
    <baseline>/status                                        why a baseline did not run
    evaluate/{seconds,device,num_classes,train_images,test_images}

`linear/top1` is the honest figure: the final model, with C chosen on held-out train rows
(`c`, L-BFGS) or every setting fixed in params beforehand (protocol sgd_augmented), the
final classifier of the last layer in evaluate.linear.layers. For sgd_augmented,
`linear/authors_best_on_test/{top1,top5,epoch}` sits beside it: the best test accuracy over
the probe's scorings, as the authors report it (selected on the test set, so optimistic;
for a like-with-like comparison with the paper only); `epoch` counts the epochs trained
before that scoring. With evaluate.linear.test_scoring before_each_epoch (the authors'
ImageNet script) the scorings come before each epoch, so the final classifier is never
among them and `epoch` runs from 0 (the untrained classifier) to epochs - 1.

Validation: `{name}/val/...` score the held-out validation part of train (a class-stratified
evaluate.val_fraction of the labelled train rows, drawn with data.seed, so every `seed`
is scored on the same rows) against the rest of train. Hyper-parameters are chosen on these
figures; the test figures are reported for the chosen ones. The validation probe is always
L-BFGS on frozen features (the augmented protocol trains on the whole train split).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invprop import names
from invprop.checkpoint import (
    build_encoder,
    checkpoint_config,
    encoder_from_checkpoint,
    load_checkpoint,
)
from invprop.config import Config
from invprop.errors import InvpropError
from invprop.inference import check_compatible, extract, resolve_device
from invprop.io import file_sha256
from invprop.knn_classifier import knn_metrics
from invprop.linear import lbfgs_probe, linear_metrics, sgd_augmented_probe
from invprop.logs import get_logger
from invprop.sampling import holdout_split
from invprop.workspace import (
    PRETRAIN,
    EmbeddingSet,
    baseline_embeddings,
    baseline_off,
    embeddings_dir,
    has_embeddings,
    load_embeddings,
    prepared_dataset,
    write_stage_report,
)

LOG = get_logger("evaluate")
__all__ = [
    "PIXEL_BUDGET_BYTES",
    "evaluate",
    "pixel_metrics",
    "random_init_metrics",
    "run",
    "validation_rows",
]

# The raw-pixel baseline is skipped when the labelled pixels would exceed this (float32).
PIXEL_BUDGET_BYTES = 4 << 30


# ---------------------------------------------------------------------------------------
# Building blocks: each returns flat metrics under a prefix


def validation_rows(train_labels: np.ndarray, cfg: Config) -> tuple[Tensor, Tensor]:
    """(fit, val): row indices of the labelled train rows kept for fitting and of the held-out
    validation part (class-stratified, evaluate.val_fraction, drawn with data.seed)."""
    labelled = np.flatnonzero(np.asarray(train_labels) >= 0)
    fit, val = holdout_split(
        np.asarray(train_labels)[labelled], cfg.evaluate.val_fraction, cfg.data.seed
    )
    if val.size == 0:
        raise InvpropError(
            f"params: evaluate.val_fraction = {cfg.evaluate.val_fraction} holds out no image "
            f"of the {labelled.size} labelled train images (each class rounds its share to 0); "
            "raise evaluate.val_fraction or train on more images"
        )
    return torch.from_numpy(labelled[fit]), torch.from_numpy(labelled[val])


def held_out_metrics(
    prefix: str,
    train: dict[str, Tensor],
    train_labels: Tensor,
    features: Tensor,
    cfg: Config,
    num_classes: int,
    device: torch.device,
    queries: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """kNN of each named train representation and the L-BFGS probe on `features`, scored on
    the validation rows of train against the fit rows: {prefix}/{kind}/... and
    {prefix}/linear/... . `queries` replaces a kind's validation rows (the bank kNN scores
    clean embeddings of the validation images against the bank's fit rows)."""
    fit, val = validation_rows(train_labels.numpy(), cfg)
    out: dict[str, Any] = {}
    for kind, vectors in train.items():
        query = (queries or {}).get(kind, vectors)
        out |= knn_metrics(
            f"{prefix}/{kind}",
            vectors[fit],
            train_labels[fit],
            query[val],
            train_labels[val],
            cfg.evaluate.knn_k,
            cfg.evaluate.knn_temperature,
            num_classes,
            device,
        )
    result = lbfgs_probe(
        features[fit], train_labels[fit], features[val], train_labels[val], cfg, num_classes, device
    )
    return out | linear_metrics(f"{prefix}/linear", result)


def _tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing `array`'s memory, or a copy when it is read-only (a memmap)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def representation_metrics(
    name: str,
    embeddings: EmbeddingSet,
    bank: Tensor | None,
    encoder_source: Any,
    prepared: Any,
    cfg: Config,
    device: torch.device,
) -> dict[str, Any]:
    """kNN (clean, and on the bank when given) and the linear probe of one trained run.

    `encoder_source`: a zero-argument callable returning the encoder, needed only by the
    sgd_augmented protocol (None: that protocol cannot run, L-BFGS on features is used).
    """
    num_classes = embeddings.num_classes
    train_y, test_y = _tensor(embeddings["train_labels"]), _tensor(embeddings["test_labels"])
    out: dict[str, Any] = {}
    for kind in ("embeddings", "features"):
        out |= knn_metrics(
            f"{name}/knn_clean/{kind}",
            _tensor(embeddings[f"train_{kind}"]),
            train_y,
            _tensor(embeddings[f"test_{kind}"]),
            test_y,
            cfg.evaluate.knn_k,
            cfg.evaluate.knn_temperature,
            num_classes,
            device,
        )
    if bank is not None:
        out |= knn_metrics(
            f"{name}/knn_bank",
            bank,
            train_y,
            _tensor(embeddings["test_embeddings"]),
            test_y,
            cfg.evaluate.knn_k,
            cfg.evaluate.knn_temperature,
            num_classes,
            device,
        )
    train = {
        f"knn_clean/{kind}": _tensor(embeddings[f"train_{kind}"])
        for kind in ("embeddings", "features")
    }
    queries = {}
    if bank is not None:
        train["knn_bank"] = bank.cpu()
        queries["knn_bank"] = train["knn_clean/embeddings"]
    out |= held_out_metrics(
        f"{name}/val",
        train,
        train_y,
        train["knn_clean/features"],
        cfg,
        num_classes,
        device,
        queries,
    )
    if cfg.evaluate.linear.protocol == "sgd_augmented" and encoder_source is not None:
        result = sgd_augmented_probe(encoder_source(), prepared, cfg, device)
    else:
        if cfg.evaluate.linear.protocol == "sgd_augmented":
            LOG.info(f"{name}: no checkpoint to train an augmented linear layer on; using L-BFGS")
        result = lbfgs_probe(
            _tensor(embeddings["train_features"]),
            train_y,
            _tensor(embeddings["test_features"]),
            test_y,
            cfg,
            num_classes,
            device,
        )
    return out | linear_metrics(f"{name}/linear", result)


def pixel_metrics(prepared: Any, cfg: Config, device: torch.device) -> dict[str, Any]:
    """Raw pixels: kNN on flattened, centred (train mean), L2-normalised pixels, and the
    L-BFGS probe on standardised pixels. Images as prepared (native channels, size)."""
    if prepared.format != "arrays":
        return {"pixels/status": "not run (an image-file dataset has no pixel array to use)"}
    train_labels = np.asarray(prepared.train.labels)
    labelled = np.flatnonzero(train_labels >= 0)
    dim = int(np.prod(prepared.shape))
    needed = (labelled.size + len(prepared.test)) * dim * 4
    if needed > PIXEL_BUDGET_BYTES:
        return {
            "pixels/status": f"not run (pixels would take {needed / 2**30:.1f} GiB, more than "
            f"{PIXEL_BUDGET_BYTES / 2**30:.0f} GiB)"
        }
    num_classes = len(prepared.classes)
    train_x = _tensor(np.asarray(prepared.train.images)[labelled].reshape(labelled.size, dim))
    test_x = _tensor(np.asarray(prepared.test.images).reshape(len(prepared.test), dim))
    train_x = train_x.to(device).float().div_(255)
    test_x = test_x.to(device).float().div_(255)
    mean = train_x.mean(dim=0)
    train_y = _tensor(train_labels[labelled])
    test_y = _tensor(np.asarray(prepared.test.labels))
    out = knn_metrics(
        "pixels/knn",
        train_x - mean,
        train_y,
        test_x - mean,
        test_y,
        cfg.evaluate.knn_k,
        cfg.evaluate.knn_temperature,
        num_classes,
        device,
    )
    result = lbfgs_probe(train_x, train_y, test_x, test_y, cfg, num_classes, device)
    out |= held_out_metrics(
        "pixels/val", {"knn": train_x - mean}, train_y, train_x, cfg, num_classes, device
    )
    if cfg.evaluate.linear.protocol != "lbfgs":
        LOG.info(
            "pixels: the linear probe on pixels always uses L-BFGS (no network to augment for)"
        )
    return out | linear_metrics("pixels/linear", result)


def random_init_metrics(
    prepared: Any, cfg: Config, device: torch.device, init_cfg: Config | None = None
) -> dict[str, Any]:
    """The network pretraining starts from, build_encoder(init_cfg) (default `cfg`; the
    stage passes the checkpoint's config): clean kNN on its features and embeddings, and
    the linear probe on its features."""
    init_cfg = init_cfg or cfg
    start = time.perf_counter()
    encoder = build_encoder(init_cfg).to(device).eval()
    arrays: dict[str, np.ndarray] = {}
    for split in (prepared.train, prepared.test):
        features, embeddings = extract(encoder, split, prepared.meta, cfg, device)
        arrays[f"{split.name}_features"] = features.numpy()
        arrays[f"{split.name}_embeddings"] = embeddings.numpy()
        arrays[f"{split.name}_labels"] = np.asarray(split.labels, dtype=np.int64)
    seconds = round(time.perf_counter() - start, 3)
    embedding_set = EmbeddingSet(
        Path("<random init>"), arrays, {"num_classes": len(prepared.classes)}
    )
    out = representation_metrics(
        "random_init", embedding_set, None, lambda: build_encoder(init_cfg), prepared, cfg, device
    )
    return {"random_init/extract/seconds": seconds} | out


# ---------------------------------------------------------------------------------------
# The stage


def _check_embeddings(embeddings: EmbeddingSet, prepared: Any, what: str) -> None:
    path = embeddings.path
    for split in (prepared.train, prepared.test):
        labels = embeddings[f"{split.name}_labels"]
        if labels.shape[0] != len(split.labels) or not np.array_equal(labels, split.labels):
            raise InvpropError(
                f"{path}: {split.name}_labels ({labels.shape[0]} rows) do not match "
                f"{prepared.path} ({len(split.labels)} {split.name} images); the {what} "
                "embeddings are from other data: rerun the embed stage (dvc repro embed)"
            )


def _bank_for(state: dict[str, Any], n_train: int, where: Path) -> Tensor:
    bank = state.get("bank", {}).get("vectors") if isinstance(state.get("bank"), dict) else None
    if not isinstance(bank, Tensor) or bank.dim() != 2:
        raise InvpropError(f"{where} has no memory bank (bank.vectors); rerun pretraining")
    if bank.shape[0] != n_train:
        raise InvpropError(
            f"{where}: the memory bank has {bank.shape[0]} rows but the train split has "
            f"{n_train} images; the checkpoint is from other data: rerun pretraining"
        )
    return bank.float()


def _load_run(
    folder: Path, prepared: Any, cfg: Config, what: str, checkpoint: Path | None
) -> tuple[EmbeddingSet, dict[str, Any] | None]:
    """Load and cross-check an embeddings folder and (when given and present) its checkpoint."""
    embeddings = load_embeddings(folder)
    _check_embeddings(embeddings, prepared, what)
    if checkpoint is None or not checkpoint.is_file():
        return embeddings, None
    expected = embeddings.meta.get("checkpoint_sha256")
    if expected is not None and expected != file_sha256(checkpoint):
        raise InvpropError(
            f"{folder}/meta.json was made from another version of {checkpoint} (sha256 "
            "differs); rerun the embed stage (dvc repro embed)"
        )
    state = load_checkpoint(checkpoint)
    check_compatible(checkpoint_config(state), cfg, prepared, str(checkpoint))
    return embeddings, state


def _load_baseline(
    name: str, prepared: Any, cfg: Config
) -> tuple[EmbeddingSet, Tensor | None, dict[str, Any] | None]:
    """The embeddings of training baseline `name`, with its checkpoint's bank and state when
    the checkpoint its meta.json names is present (so the bank kNN and the sgd_augmented
    probe can run too)."""
    folder = baseline_embeddings(name)
    if not has_embeddings(folder):
        raise InvpropError(
            f"evaluate.baselines.{name} is on but {folder}/ holds no embeddings; run its "
            f"stage first (dvc repro {name}) or turn the baseline off"
        )
    named = load_embeddings(folder).meta.get("checkpoint")
    checkpoint = Path(named) if named else None
    embeddings, state = _load_run(folder, prepared, cfg, name, checkpoint)
    bank = None
    if state is not None and checkpoint is not None:
        bank = _bank_for(state, len(prepared.train), checkpoint)
    return embeddings, bank, state


def _encoder_source(
    state: dict[str, Any] | None, device: torch.device
) -> Callable[[], torch.nn.Module] | None:
    """What builds the encoder of a checkpoint's state on `device`; None without one."""
    if state is None:
        return None
    return lambda: encoder_from_checkpoint(state, device)[0]


def evaluate(cfg: Config) -> dict[str, Any]:
    """Compute every metric of the evaluate stage and return them as one flat dict."""
    start = time.perf_counter()
    device = resolve_device(cfg.pretrain.device)
    prepared = prepared_dataset(cfg.data.name)

    # Everything is loaded and checked before any computation.
    checkpoint = PRETRAIN.final
    invp, state = _load_run(embeddings_dir("final"), prepared, cfg, "final", checkpoint)
    if state is None:
        raise InvpropError(f"checkpoint not found: {checkpoint}; run the pretrain stage first")
    bank = _bank_for(state, len(prepared.train), checkpoint)
    baselines = cfg.evaluate.baselines
    trained = {
        name: _load_baseline(name, prepared, cfg)
        for name in names.TRAINING_BASELINES
        if getattr(baselines, name)
    }

    metrics: dict[str, Any] = {"invp/epoch": int(state["epoch"])}
    LOG.info(f"invp: kNN (K = {cfg.evaluate.knn_k}) and linear probe on {device}")
    metrics |= representation_metrics(
        "invp", invp, bank, _encoder_source(state, device), prepared, cfg, device
    )
    for name in names.TRAINING_BASELINES:
        if name not in trained:
            metrics[f"{name}/status"] = baseline_off(name)
            continue
        LOG.info(f"{name} baseline")
        embeddings, baseline_bank, baseline_state = trained[name]
        source = _encoder_source(baseline_state, device)
        metrics |= representation_metrics(
            name, embeddings, baseline_bank, source, prepared, cfg, device
        )
    if baselines.pixels:
        LOG.info("pixels baseline")
        metrics |= pixel_metrics(prepared, cfg, device)
    else:
        metrics["pixels/status"] = baseline_off("pixels")
    if baselines.random_init:
        LOG.info("random-init baseline")
        metrics |= random_init_metrics(prepared, cfg, device, checkpoint_config(state))
    else:
        metrics["random_init/status"] = baseline_off("random_init")

    metrics |= {
        "evaluate/seconds": round(time.perf_counter() - start, 3),
        "evaluate/device": str(device),
        "evaluate/num_classes": len(prepared.classes),
        "evaluate/train_images": len(prepared.train),
        "evaluate/test_images": len(prepared.test),
    }
    return metrics


def run(cfg: Config) -> None:
    """The evaluate stage: write reports/evaluate.json (flat keys, see the module doc)."""
    metrics = evaluate(cfg)
    path = write_stage_report("evaluate", metrics)
    headline = [
        f"{key}={metrics[key]:.4f}"
        for key in (
            f"invp/knn_clean/embeddings/k{cfg.evaluate.knn_k[0]}/top1",
            f"invp/knn_bank/k{cfg.evaluate.knn_k[0]}/top1",
            "invp/linear/top1",
        )
    ]
    LOG.info(f"{' '.join(headline)} -> {path} ({metrics['evaluate/seconds']:.1f} s)")
