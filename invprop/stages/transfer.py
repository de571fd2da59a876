"""The transfer stage: semi-supervised fine-tuning and transfer to other datasets.

Reads `models/pretrain/final.pt`, `data/prepared/<data.name>/` and
`data/prepared/<target>/` for each of transfer.targets. Writes `reports/transfer.json`
(flat keys, below) and `artifacts/transfer/` (atomically, as one folder)::

    subsets/<dataset>_<pct>.npy   sorted int64 train indices of each semi-supervised subset
    meta.json                     dataset, seed, fractions, rule, per-class count, sizes

Protocols (docs/method.md, "Evaluation protocols"):

* Semi-supervised: for each fraction in transfer.semi_fractions, an exactly class-balanced
  subset of the pretraining dataset's labelled train images (`balanced_subset`) fine-tunes
  the whole pretrained backbone plus a new linear classifier (`finetune`); test top-1/top-5
  on the clean test split.
* Transfer: for each target, (a) the linear probe of the evaluate stage on frozen pooled
  backbone features (L-BFGS, evaluate.linear; or the authors' sgd_augmented protocol when
  evaluate.linear.protocol says so), and (b) `finetune` on the target's whole train split.
  Target images are converted to data.channels and resized to data.image_size (8x8 digits
  are upsampled) by the same `center` / `BatchAugment` every stage uses.
* Baseline (evaluate.baselines.random_init): the same protocols from the network
  pretraining started from (`build_encoder` of the checkpoint's config), with the same
  data order and augmentations, so each row shows what pretraining buys.

Every fine-tune runs the one loop of `finetune`: backbone + a zero-initialised linear
classifier, cross-entropy on FINETUNE_AUGMENT views (light crop, no flip, no colour),
SGD (momentum 0.9) with transfer.finetune's lr / weight_decay / batch_size and a per-step
cosine schedule. transfer.finetune.epochs counts passes over the training set, but an
epoch is never shorter than MIN_STEPS_PER_EPOCH = 20 steps (`finetune_steps`), so a 1%
subset still trains: 600 images, batch 128 -> 5 epochs of 20 steps (25 passes).

Keys (`<pct>` is the fraction in percent: 0.01 -> `1pct`, 0.005 -> `0.5pct`)::

    semi/<pct>/{labels,per_class}                     subset size and images per class
    semi/<pct>/finetune/{top1,top5,seconds,steps,passes,train_loss}
    semi/{dataset,test_images,num_classes}
    transfer/<target>/{train_images,test_images,num_classes}
    transfer/<target>/linear/{top1,top5,c,seconds,protocol}
    transfer/<target>/finetune/{top1,top5,seconds,steps,passes,train_loss}
    random_init/semi/<pct>/finetune/...               baseline, same keys
    random_init/transfer/<target>/{linear,finetune}/...
    random_init/status                                when the baseline is off
    transfer/{seconds,device,checkpoint_epoch}

Accuracies are fractions in [0, 1]; `train_loss` is the mean loss of the last pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from invprop.batches import batch_sizes, epoch_batches
from invprop.checkpoint import (
    build_encoder,
    checkpoint_config,
    encoder_from_checkpoint,
    load_checkpoint,
)
from invprop.config import AugmentConfig, Config
from invprop.errors import InvpropError
from invprop.inference import (
    check_compatible,
    extract,
    inference_autocast,
    resolve_device,
    uses_channels_last,
)
from invprop.linear import (
    augmented_training_source,
    lbfgs_probe,
    linear_metrics,
    sgd_augmented_probe,
    topk_accuracy,
)
from invprop.logs import get_logger, progress
from invprop.sampling import balanced_subset
from invprop.workspace import (
    PRETRAIN,
    prepared_dataset,
    prepared_dir,
    save_transfer_subsets,
    write_stage_report,
)

if TYPE_CHECKING:
    from invprop.data import PreparedDataset, Split
    from invprop.models import Encoder

LOG = get_logger("transfer")
__all__ = [
    "FINETUNE_AUGMENT",
    "MIN_STEPS_PER_EPOCH",
    "FinetuneResult",
    "cosine_lr",
    "finetune",
    "finetune_steps",
    "fraction_label",
    "linear_transfer",
    "load_target",
    "run",
    "transfer",
]


# The fine-tuning augmentation, one recipe for every fine-tune (semi-supervised, transfer,
# baseline): a light random resized crop (area 80-100%, aspect 3/4-4/3), no flip, no
# colour. Labels must survive it on every target: a horizontal flip changes what a digit
# means (digits, SVHN), and half-area crops of an 8x8 digit cut away what tells it apart.
# Measured on 2 shared CPU cores, 2025-11-26, 100 steps (lr 0.05), network after one epoch
# of the default pretraining, test top-1 of crop (0.5, 1) + flip / (0.8, 1) + flip /
# (0.8, 1) no flip / no augmentation: Fashion-MNIST 1% 0.715 / 0.727 / 0.735 / 0.738,
# digits 0.841 / 0.852 / 0.933 / 0.950. The crop is kept as mild regularisation for longer
# schedules, where a 1% subset is seen hundreds of times.
FINETUNE_AUGMENT = AugmentConfig(
    crop_scale=(0.8, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
)

# An epoch is one pass over the training set or this many SGD steps, whichever is more, so
# that a 1% subset (600 Fashion-MNIST images: 4 batches of 128) still trains.
MIN_STEPS_PER_EPOCH = 20

SUBSET_RULE = (
    "per class floor(fraction * N / C) images (N labelled train images, C classes with a "
    "labelled image), at least 1 and at most the smallest class's count; each class's "
    "images are a prefix of a permutation seeded by (data.seed, class), so subsets are nested"
)


# ---------------------------------------------------------------------------------------
# Subsets


def fraction_label(fraction: float) -> str:
    """A fraction as a key part in percent: 0.01 -> "1pct", 0.1 -> "10pct", 0.005 -> "0.5pct"."""
    return f"{round(fraction * 100, 6):g}pct"


# ---------------------------------------------------------------------------------------
# Fine-tuning: one loop for semi-supervised, transfer and the baseline


@dataclass
class FinetuneResult:
    """Test top-1/top-5 (fractions) of a fine-tuned network, and how it was trained."""

    top1: float
    top5: float
    seconds: float
    steps: int
    passes: int
    train_loss: float

    def metrics(self, prefix: str) -> dict[str, Any]:
        """{prefix}/{top1,top5,seconds,steps,passes,train_loss}."""
        return {
            f"{prefix}/top1": self.top1,
            f"{prefix}/top5": self.top5,
            f"{prefix}/seconds": round(self.seconds, 3),
            f"{prefix}/steps": self.steps,
            f"{prefix}/passes": self.passes,
            f"{prefix}/train_loss": self.train_loss,
        }


def finetune_steps(n: int, epochs: int, batch_size: int) -> tuple[int, int]:
    """(steps per pass, total steps) for fine-tuning on `n` images.

    A pass is the batches `invprop.batches.epoch_batches` cuts; an epoch is one pass
    or MIN_STEPS_PER_EPOCH steps, whichever is more; training runs `epochs` epochs.
    """
    per_pass = len(batch_sizes(n, batch_size))
    return per_pass, epochs * max(per_pass, MIN_STEPS_PER_EPOCH)


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from `base` at step 0 towards 0 at step `total` (per step, no warm-up)."""
    return 0.5 * base * (1 + math.cos(math.pi * step / max(1, total)))


def finetune(
    encoder: Encoder,
    train: Split,
    rows: np.ndarray,
    test: Split,
    meta: dict[str, Any],
    num_classes: int,
    cfg: Config,
    device: torch.device,
    name: str,
) -> FinetuneResult:
    """Fine-tune `encoder`'s backbone (in place) plus a new linear classifier on the train
    images `rows` of `train`; return its accuracy on the clean `test` split.

    Cross-entropy on FINETUNE_AUGMENT views at data.image_size (channels converted to
    data.channels, `meta`'s normalisation), SGD with momentum 0.9 and
    transfer.finetune.{lr, weight_decay, batch_size}, a per-step cosine schedule over
    `finetune_steps` steps. The classifier starts at zero. Pass p (1, 2, ...) orders the
    rows with `epoch_batches(len(rows), batch_size, cfg.seed, p)` and augments with
    (cfg.seed, p), so two networks fine-tuned on the same rows see the same batches and
    views. bf16 autocast and channels_last as pretrain.precision and pretrain.channels_last
    ask (as every stage does); the loss and the classifier's output are fp32. Test rows
    labelled -1 are not scored.
    """
    start = time.perf_counter()
    ft = cfg.transfer.finetune
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError(f"{name}: no training rows")
    labels = torch.from_numpy(np.array(train.labels, dtype=np.int64)).to(device)
    if bool((labels[torch.from_numpy(rows).to(device)] < 0).any()):
        raise ValueError(f"{name}: training rows include unlabeled images (label -1)")
    channels_last = uses_channels_last(cfg, device)
    encoder = encoder.to(device)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    classifier = torch.nn.Linear(encoder.feature_dim, num_classes).to(device)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(
        [*encoder.backbone.parameters(), *classifier.parameters()],
        lr=ft.lr,
        momentum=0.9,
        weight_decay=ft.weight_decay,
        fused=device.type == "cuda",
    )
    source, augment = augmented_training_source(train, meta, cfg, device, FINETUNE_AUGMENT)

    _, total = finetune_steps(rows.size, ft.epochs, ft.batch_size)
    encoder.train()
    step = passes = 0
    loss_sum = torch.zeros((), device=device)
    with progress(f"fine-tuning {name}", total, logger=LOG) as shown:
        while step < total:
            passes += 1
            order = epoch_batches(rows.size, ft.batch_size, cfg.seed, passes)[: total - step]
            loss_sum.zero_()
            for images, index in source.batches(
                [rows[batch.numpy()] for batch in order], cfg.seed, passes
            ):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(ft.lr, step, total)
                x = augment(images, index, cfg.seed, passes)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with inference_autocast(cfg, device):
                    features = encoder.features(x)
                loss = F.cross_entropy(classifier(features.float()), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
                shown.advance(1, len(index))
            train_loss = float(loss_sum) / len(order)  # one host sync per pass
            if not math.isfinite(train_loss):
                raise InvpropError(
                    f"{name}: the fine-tuning loss became {train_loss} in pass {passes}; "
                    "lower transfer.finetune.lr (or use pretrain.precision fp32)"
                )

    test_labels = torch.from_numpy(np.array(test.labels, dtype=np.int64)).to(device)
    counted = test_labels >= 0
    features, _ = extract(encoder, test, meta, cfg, device, out_device=device)
    with torch.no_grad():
        logits = classifier(features[counted])
    top1, top5 = topk_accuracy(logits, test_labels[counted])
    result = FinetuneResult(top1, top5, time.perf_counter() - start, total, passes, train_loss)
    LOG.info(
        f"{name}: fine-tuned on {rows.size} images, {total} steps ({passes} passes): "
        f"test top1 {top1:.4f} top5 {top5:.4f} ({result.seconds:.1f} s)"
    )
    return result


# ---------------------------------------------------------------------------------------
# Linear probe on frozen features (the evaluate stage's protocol, on a target)


def linear_transfer(
    encoder: Encoder, target: PreparedDataset, cfg: Config, device: torch.device, name: str
) -> dict[str, Any]:
    """{name}/linear/{top1,top5,c,seconds,protocol}: evaluate.linear's probe of the frozen
    pooled features of `encoder` on `target` (features via `extract`, clean view)."""
    num_classes = len(target.classes)
    if cfg.evaluate.linear.protocol == "sgd_augmented":
        result = sgd_augmented_probe(encoder, target, cfg, device)
    else:
        features = {}
        for split in (target.train, target.test):
            features[split.name], _ = extract(encoder, split, target.meta, cfg, device)
        train_y = torch.from_numpy(np.array(target.train.labels, dtype=np.int64))
        test_y = torch.from_numpy(np.array(target.test.labels, dtype=np.int64))
        result = lbfgs_probe(
            features["train"], train_y, features["test"], test_y, cfg, num_classes, device
        )
    LOG.info(f"{name}: linear probe ({result.protocol}) test top1 {result.top1:.4f}")
    return linear_metrics(f"{name}/linear", result)


# ---------------------------------------------------------------------------------------
# The stage


def load_target(name: str) -> PreparedDataset:
    """The prepared transfer target `name`, checked: present, labelled, 1 or 3 channels."""
    folder = prepared_dir(name)
    if not folder.exists():
        raise InvpropError(
            f"transfer target {name!r}: {folder} not found; prepare it with "
            f"`dvc repro prepare_target@{name}` (or `invprop stage prepare {name}`)"
        )
    target = prepared_dataset(name)
    if target.shape[0] not in (1, 3):
        raise InvpropError(f"{folder}/meta.json: shape {target.shape} must have 1 or 3 channels")
    for split in (target.train, target.test):
        unlabeled = int((np.asarray(split.labels) < 0).sum())
        if unlabeled:
            raise InvpropError(
                f"transfer target {name!r}: {unlabeled} of {len(split)} {split.name} images in "
                f"{folder} are unlabeled (-1); transfer needs a labelled dataset, remove "
                f"{name} from transfer.targets"
            )
    return target


def transfer(
    cfg: Config, checkpoint: Path = PRETRAIN.final
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run every protocol; return (flat metrics, {"<dataset>_<pct>": subset indices}).

    Every input is loaded and checked before any training starts.
    """

    start = time.perf_counter()
    device = resolve_device(cfg.pretrain.device)
    if cfg.pretrain.threads:
        torch.set_num_threads(cfg.pretrain.threads)
    checkpoint = Path(checkpoint)

    # Validate everything up front.
    state = load_checkpoint(checkpoint)
    ckpt_cfg = checkpoint_config(state)
    main = prepared_dataset(cfg.data.name)
    check_compatible(ckpt_cfg, cfg, main, str(checkpoint))
    targets = {name: load_target(name) for name in cfg.transfer.targets}
    labels = {fraction_label(f): f for f in cfg.transfer.semi_fractions}
    if len(labels) != len(cfg.transfer.semi_fractions):
        raise InvpropError(
            f"params: transfer.semi_fractions = {cfg.transfer.semi_fractions} has duplicates "
            "(equal in percent to 6 decimals)"
        )
    train_labels = np.asarray(main.train.labels)
    if labels and not (train_labels >= 0).any():
        raise InvpropError(
            f"{main.path}: the train split has no labels, so there is nothing to fine-tune on "
            "for transfer.semi_fractions; set it to [] for an unlabeled dataset"
        )
    if labels and not (np.asarray(main.test.labels) >= 0).any():
        raise InvpropError(
            f"{main.path}: the test split has no labels to score semi-supervised fine-tuning "
            "on; set transfer.semi_fractions to []"
        )
    subsets = {
        f"{cfg.data.name}_{label}": balanced_subset(train_labels, fraction, cfg.data.seed)
        for label, fraction in labels.items()
    }

    def pretrained() -> Encoder:
        return encoder_from_checkpoint(state, device)[0]

    def random_init() -> Encoder:
        return build_encoder(ckpt_cfg).to(device)

    networks = {"": pretrained}
    metrics: dict[str, Any] = {}
    if cfg.evaluate.baselines.random_init:
        networks["random_init/"] = random_init
    else:
        metrics["random_init/status"] = "not run (evaluate.baselines.random_init is off)"
    LOG.info(
        f"{len(labels)} semi-supervised fractions, {len(targets)} targets, "
        f"{len(networks)} network(s) on {device}"
    )

    main_classes = len(main.classes)
    for label in labels:
        rows = subsets[f"{cfg.data.name}_{label}"]
        metrics[f"semi/{label}/labels"] = int(rows.size)
        metrics[f"semi/{label}/per_class"] = int(rows.size // np.unique(train_labels[rows]).size)
        for prefix, network in networks.items():
            name = f"{prefix}semi/{label}"
            result = finetune(
                network(), main.train, rows, main.test, main.meta, main_classes, cfg, device, name
            )
            metrics |= result.metrics(f"{name}/finetune")
    if labels:
        metrics |= {
            "semi/dataset": cfg.data.name,
            "semi/test_images": int((np.asarray(main.test.labels) >= 0).sum()),
            "semi/num_classes": main_classes,
        }

    for target_name, target in targets.items():
        metrics |= {
            f"transfer/{target_name}/train_images": len(target.train),
            f"transfer/{target_name}/test_images": len(target.test),
            f"transfer/{target_name}/num_classes": len(target.classes),
        }
        rows = np.arange(len(target.train), dtype=np.int64)
        for prefix, network in networks.items():
            name = f"{prefix}transfer/{target_name}"
            metrics |= linear_transfer(network().eval(), target, cfg, device, name)
            result = finetune(
                network(),
                target.train,
                rows,
                target.test,
                target.meta,
                len(target.classes),
                cfg,
                device,
                name,
            )
            metrics |= result.metrics(f"{name}/finetune")

    metrics |= {
        "transfer/seconds": round(time.perf_counter() - start, 3),
        "transfer/device": str(device),
        "transfer/checkpoint_epoch": int(state["epoch"]),
    }
    return metrics, subsets


def run(cfg: Config) -> None:
    """The transfer stage: artifacts/transfer/ (subsets) and reports/transfer.json."""
    metrics, subsets = transfer(cfg)
    save_transfer_subsets(
        subsets,
        {
            "dataset": cfg.data.name,
            "data_seed": cfg.data.seed,
            "fractions": {fraction_label(f): f for f in cfg.transfer.semi_fractions},
            "sizes": {name: int(indices.size) for name, indices in subsets.items()},
            "rule": SUBSET_RULE,
        },
    )
    report = write_stage_report("transfer", metrics)
    headline = " ".join(
        f"{key}={value:.4f}"
        for key, value in metrics.items()
        if key.endswith("/top1") and not key.startswith("random_init/")
    )
    LOG.info(f"{headline} -> {report} ({metrics['transfer/seconds']:.1f} s)")
