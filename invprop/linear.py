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

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invprop.augment import AugmentConfig, BatchAugment, CroppedImageFiles
from invprop.data.tensors import as_tensor, convert_channels, load_batches
from invprop.errors import InvpropError
from invprop.inference import extract_outputs, inference_autocast, input_normalisation
from invprop.logs import track
from invprop.sampling import holdout_split

if TYPE_CHECKING:
    from invprop.config import Config, LinearConfig, LinearLayerConfig
    from invprop.models import Encoder

__all__ = [
    "LayerScores",
    "LinearProbeResult",
    "TrainedClassifiers",
    "fit_logistic",
    "layer_outputs",
    "lbfgs_probe",
    "linear_classifier",
    "linear_eval_lr",
    "linear_metrics",
    "linear_probe",
    "sgd_augmented_probe",
    "standardise",
    "topk_accuracy",
    "train_linear_classifiers",
]


@dataclass
class LinearProbeResult:
    """What a probe reports: test top-1/top-5 (fractions) of the final model, the chosen C
    and its evidence, and for the authors' protocol their best-on-test figure."""

    top1: float
    top5: float
    c: float | None = None
    val_top1: dict[str, float] = field(default_factory=dict)  # str(C) -> held-out top-1
    seconds: float = 0.0
    protocol: str = "lbfgs"
    # sgd_augmented only: the authors' figure, the best test accuracy over epochs (selected
    # on the test set, so optimistic; reported beside the final epoch's, never instead).
    best_on_test_top1: float | None = None
    best_on_test_top5: float | None = None
    best_on_test_epoch: int | None = None
    # several layers (evaluate.linear.layers): layer name -> the figures above for it
    layers: dict[str, dict[str, float | int]] = field(default_factory=dict)

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
    """{prefix}/{top1,top5,c,seconds,protocol} of a probe result (c only when chosen),
    {prefix}/authors_best_on_test/{top1,top5,epoch} when the protocol computed it, and the
    same for each layer, {prefix}/layers/<name>/..., when several were trained."""
    out: dict[str, Any] = {
        f"{prefix}/top1": result.top1,
        f"{prefix}/top5": result.top5,
        f"{prefix}/seconds": round(result.seconds, 3),
        f"{prefix}/protocol": result.protocol,
    }
    if result.c is not None:
        out[f"{prefix}/c"] = result.c
    if result.best_on_test_top1 is not None:
        out[f"{prefix}/authors_best_on_test/top1"] = result.best_on_test_top1
        out[f"{prefix}/authors_best_on_test/top5"] = result.best_on_test_top5
        out[f"{prefix}/authors_best_on_test/epoch"] = result.best_on_test_epoch
    for name, figures in result.layers.items():
        where = f"{prefix}/layers/{name}"
        out[f"{where}/top1"], out[f"{where}/top5"] = figures["top1"], figures["top5"]
        for key in ("top1", "top5", "epoch"):
            out[f"{where}/authors_best_on_test/{key}"] = figures[f"best_on_test_{key}"]
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


def _linear_eval_augment(height: int) -> AugmentConfig:
    """The authors' linear-evaluation augmentation for this image size.

    Small images (CIFAR): horizontal flip only, datasets/cifar.py `get_linear_dataloader`
    (WangFeng18/InvariancePropagation@cad924e, used by eval_linear.py). Larger ones
    (ImageNet): RandomResizedCrop(scale 0.08-1) + flip,
    downstream/linear_classification/linear_classification.py, the script the README runs.
    """
    off = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    if height <= 64:
        return AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **off)
    return AugmentConfig(crop_scale=(0.08, 1.0), **off)


def linear_eval_lr(lin: LinearConfig, epoch: int, step: int, total_steps: int) -> float:
    """The probe's learning rate in `epoch` (from 1) at global `step` (from 0).

    step: ``lr * lr_decay ** (number of milestones m with epoch > m)``, which is both
    eval_linear.py's `adjust_learning_rate` (1-based epochs, ``epoch > milestone``) and
    linear_classification.py's MultiStepLR stepped after each 0-based epoch. cosine: per
    step, from lr down towards 0.
    """
    if lin.schedule == "step":
        return lin.lr * lin.lr_decay ** sum(epoch > m for m in lin.milestones)
    return 0.5 * lin.lr * (1 + math.cos(math.pi * step / total_steps))


class ImageSource:
    """uint8 training batches of a split on `device`, addressed by dataset index, for
    `augment` (its crop settings) at `size` pixels.

    "arrays": the whole split is copied to the device once (as pretraining does), and the
    batches come whole: build the BatchAugment with ``crop=True``. "files": DataLoader
    workers decode each image whole (at most `shorter_side` on its short side, when set)
    and take its random crop there (`CroppedImageFiles`), so the batches come at
    ``size x size``: build it with ``crop=not crops_in_workers``.
    """

    def __init__(
        self,
        split: Any,
        channels: int,
        device: torch.device,
        num_workers: int,
        augment: AugmentConfig,
        size: int,
        shorter_side: int | None = None,
    ) -> None:
        self.split, self.channels, self.device = split, channels, device
        self.num_workers, self.augment, self.size = num_workers, augment, size
        self.shorter_side = shorter_side
        self.images = None
        if isinstance(split.images, np.ndarray):
            self.images = convert_channels(as_tensor(split), channels).to(device)
        self.crops_in_workers = self.images is None

    def batches(self, batches: list[np.ndarray], seed: int, epoch: int) -> Any:
        """Yield (images [B, C, H, W] uint8, indices [B] int64) for each index batch."""
        if self.images is not None:
            for batch in batches:
                index = torch.from_numpy(batch).to(self.device)
                yield self.images[index], index
            return
        crops = CroppedImageFiles(
            self.split,
            self.channels,
            self.size,
            self.augment,
            seed,
            epoch,
            self.shorter_side,
        )
        yield from load_batches(crops, batches, self.device, self.num_workers)


def augmented_training_source(
    split: Any,
    meta: dict[str, Any],
    cfg: Config,
    device: torch.device,
    augment_config: AugmentConfig,
) -> tuple[ImageSource, BatchAugment]:
    """The train batches of `split` on `device` and the BatchAugment that finishes them:
    the crop runs in the DataLoader workers for image files and in BatchAugment otherwise,
    so the two must be built together (the linear probe and fine-tuning both train so)."""
    mean, std = input_normalisation(meta, cfg)
    size = cfg.data.image_size
    source = ImageSource(
        split,
        cfg.data.channels,
        device,
        cfg.pretrain.num_workers,
        augment_config,
        size,
        cfg.augment.shorter_side,
    )
    augment = BatchAugment(augment_config, size, mean, std, crop=not source.crops_in_workers)
    return source, augment.to(device)


@dataclass
class LayerScores:
    """Test top-1/top-5 (fractions) of one layer's classifier: after training (``final``)
    and at each scoring of the authors' protocol, as (epochs trained, top1, top5)."""

    name: str
    final: tuple[float, float]
    scored: list[tuple[int, float, float]]

    def figures(self) -> dict[str, float | int]:
        """top1, top5 of the final classifier, and best_on_test_{top1,top5,epoch}: the best
        scored top-1 (the first on a tie) and the epochs trained before it, the authors'
        figure (selected on the test set)."""
        epochs, top1, top5 = max(self.scored, key=lambda row: (row[1], -row[0]))
        return {
            "top1": self.final[0],
            "top5": self.final[1],
            "best_on_test_top1": top1,
            "best_on_test_top5": top5,
            "best_on_test_epoch": epochs,
        }


@dataclass
class TrainedClassifiers:
    """What `train_linear_classifiers` leaves: one classifier per layer of
    evaluate.linear.layers, in order, and their scores."""

    classifiers: list[torch.nn.Sequential]
    scores: list[LayerScores]


def _keep_pooled(
    kept: dict[str, Tensor], name: str, grid: int, _module: Any, _inputs: Any, output: Tensor
) -> None:
    """Forward hook: keep `output` average-pooled to grid x grid and flattened, [B, C*g*g]
    (channel-major, as the authors' Flatten), taken before any later in-place op."""
    if output.dim() == 4:
        kept[name] = F.adaptive_avg_pool2d(output, grid).flatten(1)
    elif output.dim() == 2 and grid == 1:
        kept[name] = output
    else:
        raise InvpropError(
            f"evaluate.linear.layers: layer {name!r} gives outputs of shape "
            f"{tuple(output.shape)}; grid {grid} needs [B, C, H, W] (or [B, F] with grid 1)"
        )


@contextlib.contextmanager
def layer_outputs(
    encoder: Encoder, layers: Sequence[LinearLayerConfig]
) -> Iterator[Callable[[Tensor], list[Tensor]]]:
    """A function x -> [the pooled, flattened output [B, D] of each layer] for one pass of
    the backbone: ``features`` is the encoder's pooled output, any other name a module of
    the backbone, read by a forward hook (removed on exit)."""
    modules = dict(encoder.backbone.named_modules())
    kept: dict[str, Tensor] = {}
    handles = []
    try:
        for layer in layers:
            if layer.name == "features":
                continue
            if not layer.name or layer.name not in modules:
                blocks = [name for name in modules if name and name.count(".") <= 1]
                raise InvpropError(
                    f"evaluate.linear.layers: the backbone has no layer {layer.name!r}; use "
                    f"features or one of {', '.join(blocks)}"
                )
            hook = functools.partial(_keep_pooled, kept, layer.name, layer.grid)
            handles.append(modules[layer.name].register_forward_hook(hook))

        def outputs(x: Tensor) -> list[Tensor]:
            features = encoder.features(x)
            return [
                features if layer.name == "features" else kept.pop(layer.name) for layer in layers
            ]

        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def linear_classifier(
    in_dim: int, num_classes: int, lin: LinearConfig, generator: torch.Generator
) -> torch.nn.Sequential:
    """[BatchNorm1d(in_dim) unless lin.batchnorm is none] + Linear(in_dim, num_classes), its
    weights zero (lin.init_std 0) or drawn N(0, init_std) from `generator`, biases zero."""
    linear = torch.nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * lin.init_std)
        linear.bias.zero_()
    if lin.batchnorm == "none":
        return torch.nn.Sequential(linear)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(in_dim), linear)


@torch.no_grad()
def _test_accuracy(
    classifier: torch.nn.Module, features: Tensor, labels: Tensor, chunk: int = 8192
) -> tuple[float, float]:
    """(top-1, top-5) of `classifier` in eval mode on test features, in chunks of rows."""
    classifier.eval()
    logits = torch.cat([classifier(part) for part in features.split(chunk)])
    return topk_accuracy(logits, labels)


def train_linear_classifiers(
    encoder: Encoder,
    prepared: Any,
    cfg: Config,
    device: str | torch.device | None = None,
) -> TrainedClassifiers:
    """Train a linear classifier on each layer of evaluate.linear.layers of the frozen
    encoder with SGD on augmented train images, and score them on clean test images.

    The authors' protocols, WangFeng18/InvariancePropagation@cad924e: downstream/
    linear_classification/eval_linear.py for CIFAR (one classifier on the pooled features,
    scored after each epoch) and linear_classification.py for ImageNet (a BatchNorm1d
    before each classifier, kept in eval mode by ``network.eval()`` in ``train``, line 232,
    so its running statistics stay 0 and 1; classifiers on 17 layers at once, of which
    layers 13-16 are scored, each epoch before it is trained, lines 185-186 and 195-198).
    Backbone in eval mode, SGD momentum 0.9, no weight decay, one optimizer for all the
    classifiers (their losses are summed; each classifier's gradient is its own loss's, as
    in the authors' sum); lr, schedule, epochs, batch, BatchNorm, initialisation, layers and
    scoring order come from cfg.evaluate.linear. Augmentation: `_linear_eval_augment`,
    applied with invprop.augment.BatchAugment. Unlabeled train images (label -1) are
    skipped. Seeded: initial weights, batch order and augmentation are functions of
    cfg.seed (and the epoch).
    """
    lin = cfg.evaluate.linear
    dev = _device(device)
    encoder = encoder.to(dev).eval()  # frozen: BN running statistics, no gradients
    num_classes = len(prepared.meta["classes"])
    labels_all = torch.from_numpy(np.array(prepared.train.labels, dtype=np.int64))
    rows = np.flatnonzero(labels_all.numpy() >= 0)
    if rows.size == 0:
        raise ValueError("the train split has no labelled images to train a linear layer on")
    labels_dev = labels_all.to(dev)
    source, augment = augmented_training_source(
        prepared.train, prepared.meta, cfg, dev, _linear_eval_augment(prepared.shape[1])
    )
    with layer_outputs(encoder, lin.layers) as outputs:
        # The encoder is frozen, so the clean test features are computed once.
        test_features = extract_outputs(
            encoder, outputs, prepared.test, prepared.meta, cfg, dev, out_device=dev
        )
        test_labels = torch.from_numpy(np.array(prepared.test.labels, dtype=np.int64)).to(dev)
        counted = test_labels >= 0
        test_features = [features[counted] for features in test_features]
        test_labels = test_labels[counted]

        weights = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 700_000)
        classifiers = [
            linear_classifier(features.shape[1], num_classes, lin, weights).to(dev)
            for features in test_features
        ]
        parameters = [p for classifier in classifiers for p in classifier.parameters()]
        optimizer = torch.optim.SGD(parameters, lr=lin.lr, momentum=0.9)
        scored: list[list[tuple[int, float, float]]] = [[] for _ in classifiers]

        def score(epochs_trained: int) -> None:
            for history, classifier, features in zip(
                scored, classifiers, test_features, strict=True
            ):
                history.append((epochs_trained, *_test_accuracy(classifier, features, test_labels)))

        steps_per_epoch = math.ceil(rows.size / lin.batch_size)
        total_steps = lin.epochs * steps_per_epoch
        step = 0
        for epoch in range(1, lin.epochs + 1):
            if lin.test_scoring == "before_each_epoch":
                score(epoch - 1)
            for classifier in classifiers:
                classifier.train(lin.batchnorm == "train")  # "eval": the authors' eval mode
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_000 + epoch)
            order = torch.randperm(rows.size, generator=generator)
            batches = [rows[chunk.numpy()] for chunk in torch.split(order, lin.batch_size)]
            steps = track(
                source.batches(batches, cfg.seed, epoch),
                f"linear layer, epoch {epoch}/{lin.epochs}",
                total=len(batches),
                images=lambda batch: len(batch[1]),
            )
            for images, index in steps:
                for group in optimizer.param_groups:
                    group["lr"] = linear_eval_lr(lin, epoch, step, total_steps)
                x = augment(images, index, cfg.seed, epoch)
                with torch.no_grad(), inference_autocast(cfg, dev):
                    inputs = outputs(x)
                target = labels_dev[index]
                loss = sum(
                    F.cross_entropy(classifier(features.float()), target)
                    for classifier, features in zip(classifiers, inputs, strict=True)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
            if lin.test_scoring == "after_each_epoch":
                score(epoch)
    return TrainedClassifiers(
        classifiers,
        [
            LayerScores(layer.name, _test_accuracy(classifier, features, test_labels), history)
            for layer, classifier, features, history in zip(
                lin.layers, classifiers, test_features, scored, strict=True
            )
        ],
    )


def sgd_augmented_probe(
    encoder: Encoder,
    prepared: Any,
    cfg: Config,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """The authors' linear evaluation (`train_linear_classifiers`) as a probe result.

    Two figures for the last layer of evaluate.linear.layers: ``top1``/``top5`` of the
    final classifier (every setting fixed in params beforehand, nothing looked up on test),
    and ``best_on_test_*``, the best test accuracy over the scorings of
    evaluate.linear.test_scoring, which is how the authors report (it selects on the test
    set). With several layers, ``layers`` holds both figures for each of them.
    """
    start = time.perf_counter()
    trained = train_linear_classifiers(encoder, prepared, cfg, device)
    per_layer = {scores.name: scores.figures() for scores in trained.scores}
    headline = per_layer[trained.scores[-1].name]
    return LinearProbeResult(
        top1=float(headline["top1"]),
        top5=float(headline["top5"]),
        seconds=time.perf_counter() - start,
        protocol="sgd_augmented",
        best_on_test_top1=float(headline["best_on_test_top1"]),
        best_on_test_top5=float(headline["best_on_test_top5"]),
        best_on_test_epoch=int(headline["best_on_test_epoch"]),
        layers=per_layer if len(per_layer) > 1 else {},
    )
