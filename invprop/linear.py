"""Linear probes on frozen representations.

Default protocol (``lbfgs``): multinomial logistic regression (softmax, L2 on the weights,
bias unpenalised) on standardised features, trained full-batch with torch's L-BFGS in
float32 on the GPU when there is one. The objective is scikit-learn's, divided by C * n:

    mean_i CE(W x_i + b, y_i) + |W|^2 / (2 C n)

so C means what it means in ``sklearn.linear_model.LogisticRegression``. C is chosen from
a grid on a seeded, class-stratified held-out part of the TRAIN split (the test split is
never looked at until the chosen C is refit on the whole train split), which makes the
figure a clean estimate and the choice reproducible. Zero initialisation, full batch and a
fixed iteration cap make two runs on the same device identical.

The authors' protocol (``sgd_augmented``) is in :func:`sgd_augmented_probe`: a linear layer
on the frozen pooled backbone, trained with SGD on augmented images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invprop.augment import AugmentConfig, BatchAugment
from invprop.data import as_tensor, convert_channels, decode_batches
from invprop.inference import extract, inference_autocast, normalisation
from invprop.logs import track
from invprop.sampling import holdout_split

if TYPE_CHECKING:
    from invprop.config import Config
    from invprop.models import Encoder

__all__ = [
    "LinearProbeResult",
    "fit_logistic",
    "lbfgs_probe",
    "linear_metrics",
    "linear_probe",
    "sgd_augmented_probe",
    "standardise",
    "topk_accuracy",
]


@dataclass
class LinearProbeResult:
    """What a probe reports: test top-1/top-5 (fractions), the chosen C and its evidence."""

    top1: float
    top5: float
    c: float | None = None
    val_top1: dict[str, float] = field(default_factory=dict)  # str(C) -> held-out top-1
    seconds: float = 0.0
    protocol: str = "lbfgs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def standardise(fit: Tensor, *others: Tensor, eps: float = 1e-6) -> list[Tensor]:
    """Scale every tensor with the per-column mean and std of ``fit`` only (float32).

    Columns constant on ``fit`` (e.g. the always-black border pixels of MNIST-like images)
    are only centred: dividing by a zero std would blow up any other value they take.
    """
    fit = fit.float()
    mean = fit.mean(dim=0)
    std = fit.std(dim=0, unbiased=False)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return [(x.float() - mean) / std for x in (fit, *others)]


def topk_accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """(top-1, top-min(5, C)) accuracy of logits [N, C] against labels [N]."""
    top_n = min(5, logits.shape[1])
    best = logits.topk(top_n, dim=1).indices
    correct = best == labels.to(best.device).view(-1, 1)
    n = max(1, labels.numel())
    return float(correct[:, 0].sum()) / n, float(correct.any(dim=1).sum()) / n


def fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Fit softmax regression with L2 strength 1/C on (x [N, F], y [N]) with full-batch L-BFGS.

    Runs on x's device in float32 from zero weights; at most ``max_iter`` L-BFGS iterations
    (it stops earlier only when converged, which is deterministic too).
    Returns (weight [C, F], bias [C]).
    """
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    x = x.float()
    y = y.to(device=x.device, dtype=torch.long)
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    penalty = 1.0 / (2.0 * c * x.shape[0])
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    c_grid: Sequence[float],
    val_fraction: float,
    max_iter: int,
    seed: int,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """Choose C on a held-out part of train, refit on all of train, score test.

    train_x [N, F] / test_x [M, F]: frozen features (any scale; standardised here with the
    statistics of the rows being fitted); labels LongTensor in [0, num_classes). Train rows
    labelled -1 are dropped. Ties in held-out accuracy go to the smaller C (the simpler
    model). ``device`` None: CUDA when available, else CPU.
    """
    start = time.perf_counter()
    if not c_grid:
        raise ValueError("c_grid must hold at least one C")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(
            f"features and labels disagree: train {train_x.shape[0]} vs {train_y.shape[0]}, "
            f"test {test_x.shape[0]} vs {test_y.shape[0]}"
        )
    dev = _device(device)
    labelled = train_y >= 0
    train_x, train_y = train_x[labelled].to(dev), train_y[labelled].to(dev, torch.long)
    test_x, test_y = test_x.to(dev), test_y.to(dev, torch.long)
    grid = sorted(float(c) for c in c_grid)

    val_top1: dict[str, float] = {}
    if len(grid) > 1:
        fit_idx, val_idx = holdout_split(train_y.cpu().numpy(), val_fraction, seed)
        if val_idx.size == 0:
            raise ValueError(
                f"val_fraction = {val_fraction} leaves no held-out rows among "
                f"{train_y.numel()} train rows; raise it or give c_grid a single value"
            )
        fit_t = torch.from_numpy(fit_idx).to(dev)
        val_t = torch.from_numpy(val_idx).to(dev)
        fit_x, val_x = standardise(train_x[fit_t], train_x[val_t])
        for c in track(grid, "linear probe: choosing C", unit="fits"):
            weight, bias = fit_logistic(fit_x, train_y[fit_t], num_classes, c, max_iter)
            val_top1[str(c)] = topk_accuracy(val_x @ weight.t() + bias, train_y[val_t])[0]
        best_c = max(grid, key=lambda c: (val_top1[str(c)], -c))
    else:
        best_c = grid[0]

    fit_x, eval_x = standardise(train_x, test_x)
    weight, bias = fit_logistic(fit_x, train_y, num_classes, best_c, max_iter)
    top1, top5 = topk_accuracy(eval_x @ weight.t() + bias, test_y)
    return LinearProbeResult(
        top1=top1,
        top5=top5,
        c=best_c,
        val_top1=val_top1,
        seconds=time.perf_counter() - start,
    )


def linear_metrics(prefix: str, result: LinearProbeResult) -> dict[str, Any]:
    """{prefix}/{top1,top5,c,seconds,protocol} of a probe result (c only when chosen)."""
    out: dict[str, Any] = {
        f"{prefix}/top1": result.top1,
        f"{prefix}/top5": result.top5,
        f"{prefix}/seconds": round(result.seconds, 3),
        f"{prefix}/protocol": result.protocol,
    }
    if result.c is not None:
        out[f"{prefix}/c"] = result.c
    return out


def lbfgs_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    cfg: Config,
    num_classes: int,
    device: torch.device,
) -> LinearProbeResult:
    """The linear probe with cfg.evaluate.linear's settings; unlabeled test rows (-1) are
    left out of the accuracy."""
    lin = cfg.evaluate.linear
    counted = test_y >= 0
    return linear_probe(
        train_x,
        train_y,
        test_x[counted],
        test_y[counted],
        num_classes,
        lin.c_grid,
        lin.val_fraction,
        lin.max_iter,
        cfg.data.seed,
        device,
    )


def _linear_eval_augment(cfg: Config, height: int) -> Any:
    """The authors' linear-evaluation augmentation for this image size.

    WangFeng18/InvariancePropagation@13cc3796a889e2949db0dcf21025e4d2d2c89d61,
    downstream/eval_linear.py (ImageNet: RandomResizedCrop(scale 0.08-1), RandomGrayscale
    0.2, ColorJitter 0.4 x 4, flip) and @a290ae12d6e0ced62c19f0bbc395ded8e5e308df,
    datasets/cifar.py `get_linear_dataloader` (small images: horizontal flip only).
    """
    if height <= 64:
        return AugmentConfig(
            crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0
        )
    return AugmentConfig(
        crop_scale=(0.08, 1.0),
        jitter_p=1.0,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.4,
        grayscale_p=0.2,
    )


class ImageSource:
    """uint8 image batches of a split on `device`, addressed by dataset index.

    "arrays": the whole split is copied to the device once (as pretraining does);
    "files": a DataLoader decodes each batch with `num_workers` workers.
    """

    def __init__(self, split: Any, channels: int, device: torch.device, num_workers: int):
        self.split, self.channels, self.device = split, channels, device
        self.num_workers = num_workers
        self.images = None
        if isinstance(split.images, np.ndarray):
            self.images = convert_channels(as_tensor(split), channels).to(device)

    def batches(self, batches: list[np.ndarray]) -> Any:
        """Yield (images [B, C, H, W] uint8, indices [B] int64) for each index batch."""
        if self.images is not None:
            for batch in batches:
                index = torch.from_numpy(batch).to(self.device)
                yield self.images[index], index
            return
        yield from decode_batches(self.split, self.channels, batches, self.device, self.num_workers)


def sgd_augmented_probe(
    encoder: Encoder,
    prepared: Any,
    cfg: Config,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """The authors' linear evaluation: a linear layer on the frozen, pooled backbone,
    trained with SGD on augmented train images, scored on clean test images.

    Follows WangFeng18/InvariancePropagation@13cc3796a889e2949db0dcf21025e4d2d2c89d61,
    downstream/eval_linear.py (backbone in eval mode, SGD momentum 0.9, no weight decay,
    lr cfg.evaluate.linear.lr, batch cfg.evaluate.linear.batch_size, epochs
    cfg.evaluate.linear.epochs), with two deliberate differences: a cosine learning-rate
    schedule (per step) instead of steps at epochs 40/60/80, and the figure reported is the
    LAST epoch's test accuracy, not the best over epochs (which selects on the test set).
    Augmentation: see `_linear_eval_augment`, applied with invprop.augment.BatchAugment.
    Unlabeled train images (label -1) are skipped. Seeded: batch order and augmentation
    are functions of (cfg.seed, epoch), the classifier starts at zero.
    """
    start = time.perf_counter()
    lin = cfg.evaluate.linear
    dev = _device(device)
    encoder = encoder.to(dev).eval()  # frozen: BN running statistics, no gradients
    num_classes = len(prepared.meta["classes"])
    labels_all = torch.from_numpy(np.array(prepared.train.labels, dtype=np.int64))
    rows = np.flatnonzero(labels_all.numpy() >= 0)
    if rows.size == 0:
        raise ValueError("the train split has no labelled images to train a linear layer on")
    labels_dev = labels_all.to(dev)
    mean, std = normalisation(prepared.meta, cfg.data.channels)
    augment = BatchAugment(
        _linear_eval_augment(cfg, prepared.shape[1]), cfg.data.image_size, mean, std
    ).to(dev)
    source = ImageSource(prepared.train, cfg.data.channels, dev, cfg.pretrain.num_workers)

    classifier = torch.nn.Linear(encoder.feature_dim, num_classes).to(dev)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lin.lr, momentum=0.9)
    steps_per_epoch = math.ceil(rows.size / lin.batch_size)
    total_steps = lin.epochs * steps_per_epoch
    step = 0
    for epoch in range(1, lin.epochs + 1):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_000 + epoch)
        order = torch.randperm(rows.size, generator=generator)
        batches = [rows[chunk.numpy()] for chunk in torch.split(order, lin.batch_size)]
        steps = track(
            source.batches(batches),
            f"linear layer, epoch {epoch}/{lin.epochs}",
            total=len(batches),
            images=lambda batch: len(batch[1]),
        )
        for images, index in steps:
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lin.lr * (1 + math.cos(math.pi * step / total_steps))
            x = augment(images, index, cfg.seed, epoch)
            with torch.no_grad(), inference_autocast(cfg, dev):
                features = encoder.features(x)
            loss = F.cross_entropy(classifier(features.float()), labels_dev[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

    test_features, _ = extract(encoder, prepared.test, prepared.meta, cfg, dev, out_device=dev)
    test_labels = torch.from_numpy(np.array(prepared.test.labels, dtype=np.int64)).to(dev)
    counted = test_labels >= 0
    with torch.no_grad():
        logits = classifier(test_features[counted])
    top1, top5 = topk_accuracy(logits, test_labels[counted])
    return LinearProbeResult(
        top1=top1, top5=top5, seconds=time.perf_counter() - start, protocol="sgd_augmented"
    )
