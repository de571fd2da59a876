"""The linear probes (invprop.linear): the L-BFGS probe (known answers, clean C selection,
determinism) and the authors' SGD protocol (schedules, the eval-mode BatchNorm, several
layers, scoring order) on a tiny network."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from invprop.config import config_from_dict
from invprop.data.prepared import PreparedDataset, Split
from invprop.errors import InvpropError
from invprop.linear import (
    fit_logistic,
    layer_outputs,
    linear_eval_lr,
    linear_metrics,
    linear_probe,
    sgd_augmented_probe,
    standardise,
    topk_accuracy,
    train_linear_classifiers,
)
from invprop.models import Encoder
from invprop.sampling import holdout_split


def blobs(seed, n_per_class, classes=4, dim=10, spread=0.3, shift=5.0):
    """Gaussian blobs around far-apart centres: linearly separable with margin."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * shift
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(labels.numel(), dim, generator=gen)
    perm = torch.randperm(labels.numel(), generator=gen)
    return x[perm] * 7 + 3, labels[perm]  # off-scale on purpose: the probe standardises


def probe(train_x, train_y, test_x, test_y, classes, **kw):
    options = {"c_grid": [0.01, 0.1, 1.0], "val_fraction": 0.2, "max_iter": 60, "seed": 0}
    options.update(kw)
    return linear_probe(train_x, train_y, test_x, test_y, classes, device="cpu", **options)


def test_separable_blobs_are_classified_perfectly():
    train_x, train_y = blobs(0, 60)
    test_x, test_y = blobs(1, 50)
    result = probe(train_x, train_y, test_x, test_y, 4)
    assert result.top1 == 1.0 and result.top5 == 1.0
    assert result.c in (0.01, 0.1, 1.0)
    assert set(result.val_top1) == {"0.01", "0.1", "1.0"}


def test_random_labels_give_chance():
    gen = torch.Generator().manual_seed(3)
    train_x, test_x = torch.randn(400, 20, generator=gen), torch.randn(800, 20, generator=gen)
    train_y = torch.randint(0, 4, (400,), generator=gen)
    test_y = torch.randint(0, 4, (800,), generator=gen)
    result = probe(train_x, train_y, test_x, test_y, 4)
    assert 0.15 < result.top1 < 0.35  # chance is 0.25


def test_chosen_c_never_depends_on_test_labels():
    # Noisy overlapping blobs, so that the held-out accuracy differs between Cs.
    train_x, train_y = blobs(4, 40, dim=30, spread=12.0)
    test_x, test_y = blobs(5, 40, dim=30, spread=12.0)
    grid = [1e-4, 1e-2, 1.0, 100.0]
    first = probe(train_x, train_y, test_x, test_y, 4, c_grid=grid)
    shuffled = test_y[torch.randperm(test_y.numel(), generator=torch.Generator().manual_seed(0))]
    second = probe(train_x, train_y, test_x, shuffled, 4, c_grid=grid)
    assert first.c == second.c
    assert first.val_top1 == second.val_top1
    assert first.top1 != second.top1  # the test labels did change what is scored
    # ...and the choice does depend on the train labels: it is really made on train.
    assert len(set(first.val_top1.values())) > 1


def test_two_runs_are_identical():
    train_x, train_y = blobs(6, 30, spread=3.0)
    test_x, test_y = blobs(7, 30, spread=3.0)
    a = probe(train_x, train_y, test_x, test_y, 4)
    b = probe(train_x, train_y, test_x, test_y, 4)
    assert (a.top1, a.top5, a.c, a.val_top1) == (b.top1, b.top5, b.c, b.val_top1)
    x = standardise(train_x)[0]
    w1, b1 = fit_logistic(x, train_y, 4, 0.1, 50)
    w2, b2 = fit_logistic(x, train_y, 4, 0.1, 50)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)


def test_objective_is_sklearns_logistic_regression():
    # Same C, same data: the same minimiser as sklearn's multinomial L2 logistic regression.
    train_x, train_y = blobs(8, 50, classes=3, dim=5, spread=3.0)
    x = standardise(train_x)[0]
    weight, bias = fit_logistic(x, train_y, 3, 0.5, 500)
    sk = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(x.numpy(), train_y.numpy())
    np.testing.assert_allclose(weight.numpy(), sk.coef_, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(bias.numpy(), sk.intercept_, atol=2e-3, rtol=2e-3)


def test_stronger_regularisation_shrinks_weights():
    train_x, train_y = blobs(9, 30)
    x = standardise(train_x)[0]
    small = fit_logistic(x, train_y, 4, 0.001, 100)[0].norm()
    large = fit_logistic(x, train_y, 4, 10.0, 100)[0].norm()
    assert small < large


def test_holdout_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), [10, 20, 30, 1, 40])
    fit, val = holdout_split(labels, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0
    assert np.union1d(fit, val).size == labels.size
    assert np.bincount(labels[val], minlength=5).tolist() == [1, 2, 3, 0, 4]
    again_fit, again_val = holdout_split(labels, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(fit, again_fit)
    assert not np.array_equal(val, holdout_split(labels, 0.1, seed=1)[1])


def test_unlabeled_train_rows_are_ignored():
    train_x, train_y = blobs(10, 30)
    test_x, test_y = blobs(11, 20)
    noise = torch.randn(50, train_x.shape[1]) * 100
    a = probe(train_x, train_y, test_x, test_y, 4)
    b = probe(
        torch.cat([train_x, noise]), torch.cat([train_y, torch.full((50,), -1)]), test_x, test_y, 4
    )
    assert (a.top1, a.c, a.val_top1) == (b.top1, b.c, b.val_top1)


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0.0, 1, 2, 3, 4, 5]])
    assert topk_accuracy(logits, torch.tensor([0, 0])) == (0.5, 0.5)
    assert topk_accuracy(logits, torch.tensor([1, 1])) == (0.0, 1.0)


def test_mismatched_rows_raise():
    train_x, train_y = blobs(12, 10)
    with pytest.raises(ValueError, match="disagree"):
        probe(train_x, train_y[:-1], train_x, train_y, 4)


def _eval_linear_lr(epoch, lr=30.0, milestones=(40, 60, 80), rate=0.2):
    """eval_linear.py's adjust_learning_rate (CIFAR), written out: 1-based epochs, decayed
    by `rate` once per milestone the epoch is strictly past."""
    steps = int(np.sum(epoch > np.asarray(milestones)))
    return lr * rate**steps if steps > 0 else lr


def _multistep_lr(epoch, lr=1.0, milestones=(50, 80, 100), gamma=0.1):
    """linear_classification.py (ImageNet): MultiStepLR stepped after each 0-based epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
    for _ in range(epoch - 1):  # epochs 0 .. epoch-2 done
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_step_schedules_are_the_authors():
    cifar = config_from_dict(
        {"evaluate": {"linear": {"schedule": "step", "milestones": [40, 60, 80], "lr_decay": 0.2}}}
    ).evaluate.linear
    imagenet = config_from_dict(
        {
            "evaluate": {
                "linear": {
                    "schedule": "step",
                    "lr": 1.0,
                    "epochs": 120,
                    "milestones": [50, 80, 100],
                    "lr_decay": 0.1,
                }
            }
        }
    ).evaluate.linear
    for epoch in range(1, 101):
        assert linear_eval_lr(cifar, epoch, 0, 1) == pytest.approx(_eval_linear_lr(epoch))
    for epoch in range(1, 121):
        assert linear_eval_lr(imagenet, epoch, 0, 1) == pytest.approx(_multistep_lr(epoch))
    assert [linear_eval_lr(cifar, e, 0, 1) for e in (40, 41, 61, 81)] == pytest.approx(
        [30.0, 6.0, 1.2, 0.24]
    )
    cosine = config_from_dict({}).evaluate.linear
    assert linear_eval_lr(cosine, 1, 0, 10) == 30.0
    assert linear_eval_lr(cosine, 1, 5, 10) == pytest.approx(15.0)


# ---------------------------------------------------------------------------------------
# The authors' SGD protocol on a tiny network: small_cnn on 8 x 8 grey images of 2 classes


def tiny_prepared(train: int = 24, test: int = 8) -> PreparedDataset:
    """Two classes that differ in brightness, in memory (format "arrays")."""
    rng = np.random.default_rng(0)
    labels = np.arange(train + test) % 2
    images = rng.integers(0, 80, (train + test, 1, 8, 8)) + labels[:, None, None, None] * 120
    images = images.astype(np.uint8)
    meta = {
        "dataset": "synthetic",
        "format": "arrays",
        "classes": ["dark", "bright"],
        "shape": [1, 8, 8],
        "mean": [0.4],
        "std": [0.3],
    }
    return PreparedDataset(
        Path("in-memory"),
        meta,
        Split("train", images[:train], labels[:train]),
        Split("test", images[train:], labels[train:]),
    )


def sgd_config(**linear: object) -> object:
    options = {"protocol": "sgd_augmented", "epochs": 3, "lr": 0.5, "batch_size": 8, **linear}
    return config_from_dict(
        {
            "data": {"name": "synthetic", "image_size": 8, "channels": 1},
            "evaluate": {"linear": options},
            "transfer": {"targets": []},
        }
    )


def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder("small_cnn", 1, "linear", 8)


def test_eval_mode_batchnorm_keeps_running_statistics_0_and_1_through_training():
    """The authors' ImageNet probe: BatchNorm1d under network.eval() is a learned affine map."""
    cfg = sgd_config(batchnorm="eval")
    trained = train_linear_classifiers(tiny_encoder(), tiny_prepared(), cfg, "cpu")
    norm = trained.classifiers[0][0]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    assert torch.equal(norm.running_mean, torch.zeros(256))
    assert torch.equal(norm.running_var, torch.ones(256))
    assert norm.num_batches_tracked.item() == 0
    # ...while its scale and shift did train, so it is x * gamma / sqrt(1 + eps) + beta
    assert not torch.equal(norm.weight, torch.ones(256)) and norm.bias.abs().sum() > 0
    x = torch.randn(5, 256)
    norm.train()  # even in training mode it would now normalise; the probe never lets it
    affine = x * norm.weight / math.sqrt(1 + norm.eps) + norm.bias
    torch.testing.assert_close(norm.eval()(x), affine)
    # a BatchNorm in training mode (batchnorm: train) does update its estimates
    moved = train_linear_classifiers(tiny_encoder(), tiny_prepared(), sgd_config(batchnorm="train"))
    assert moved.classifiers[0][0].num_batches_tracked.item() == 9  # 3 epochs x 3 batches
    assert not torch.equal(moved.classifiers[0][0].running_var, torch.ones(256))


@pytest.mark.parametrize(
    ("scoring", "scored_epochs"),
    [("after_each_epoch", [1, 2, 3]), ("before_each_epoch", [0, 1, 2])],
)
def test_scoring_order(scoring, scored_epochs):
    cfg = sgd_config(test_scoring=scoring)
    (scores,) = train_linear_classifiers(tiny_encoder(), tiny_prepared(), cfg, "cpu").scores
    assert [row[0] for row in scores.scored] == scored_epochs
    if scoring == "before_each_epoch":
        # the untrained (zero) classifier first; the final one is never among the scorings
        assert scores.scored[0][1:] == (0.5, 1.0)  # every logit 0: class 0, half the images
    else:
        assert scores.scored[-1][1:] == scores.final
    figures = scores.figures()
    best = max(scores.scored, key=lambda row: (row[1], -row[0]))
    assert (figures["best_on_test_top1"], figures["best_on_test_epoch"]) == (best[1], best[0])
    assert (figures["top1"], figures["top5"]) == scores.final


def test_layers_are_the_pooled_outputs_of_the_named_modules():
    encoder = tiny_encoder().eval()
    layers = sgd_config(
        layers=[{"name": "3", "grid": 2}, {"name": "features", "grid": 1}]
    ).evaluate.linear.layers
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), layer_outputs(encoder, layers) as outputs:
        conv, features = outputs(x)
    with torch.no_grad():
        by_hand = torch.nn.Sequential(*list(encoder.backbone)[:4])(x)  # 2nd conv: [4, 64, 4, 4]
        want_conv = by_hand.reshape(4, 64, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1)
        torch.testing.assert_close(conv, want_conv)  # 2 x 2 cells, channel-major
        torch.testing.assert_close(features, encoder.features(x))
    assert not encoder.backbone[3]._forward_hooks  # removed on exit
    missing = sgd_config(layers=[{"name": "layer9"}]).evaluate.linear.layers
    error = r"no layer 'layer9'; use features or one of 0, 1, 2"
    with pytest.raises(InvpropError, match=error), layer_outputs(encoder, missing):
        pass


def test_a_classifier_trains_the_same_beside_others():
    """Why the authors' 13 unscored heads can be left out: one optimizer over summed losses
    gives each classifier exactly the gradient of its own loss."""
    alone = train_linear_classifiers(tiny_encoder(), tiny_prepared(), sgd_config(), "cpu")
    beside = sgd_config(layers=[{"name": "3", "grid": 2}, {"name": "features"}])
    together = train_linear_classifiers(tiny_encoder(), tiny_prepared(), beside, "cpu")
    for mine, theirs in zip(
        alone.classifiers[0].parameters(), together.classifiers[1].parameters(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert together.scores[1].scored == alone.scores[0].scored


def test_initial_weights_zero_or_normal():
    prepared = tiny_prepared()
    zero = train_linear_classifiers(tiny_encoder(), prepared, sgd_config(epochs=1, lr=1e-9))
    drawn = train_linear_classifiers(
        tiny_encoder(), prepared, sgd_config(epochs=1, lr=1e-9, init_std=0.5)
    )
    assert zero.classifiers[0][0].weight.abs().max() < 1e-6
    weight = drawn.classifiers[0][0].weight
    assert weight.std().item() == pytest.approx(0.5, rel=0.2)
    assert drawn.classifiers[0][0].bias.abs().max() < 1e-6


def test_several_layers_report_each_and_the_last_as_the_headline():
    layers = [{"name": "3", "grid": 2}, {"name": "features"}]
    cfg = sgd_config(layers=layers, batchnorm="eval", test_scoring="before_each_epoch")
    metrics = linear_metrics(
        "invp/linear", sgd_augmented_probe(tiny_encoder(), tiny_prepared(), cfg)
    )
    for name in ("3", "features"):
        for key in ("top1", "top5", "authors_best_on_test/top1", "authors_best_on_test/epoch"):
            assert f"invp/linear/layers/{name}/{key}" in metrics
    for key in ("top1", "top5", "authors_best_on_test/top1", "authors_best_on_test/epoch"):
        assert metrics[f"invp/linear/{key}"] == metrics[f"invp/linear/layers/features/{key}"]
    assert 0 <= metrics["invp/linear/authors_best_on_test/epoch"] <= 2
    single = linear_metrics("p", sgd_augmented_probe(tiny_encoder(), tiny_prepared(), sgd_config()))
    assert not any("/layers/" in key for key in single)
