"""The names of every kind of extension: one list per kind, for params and registries alike.

`invprop.config` accepts exactly these names as params values (a bad value's error lists
them), and each registry (`invprop.registry.Registry`) refuses to register a name that is
not listed here, so a name is declared once, here, and implemented once, where its code
registers it; tests/test_names.py checks that every registry holds exactly its list.
docs/extending.md says where each kind's code goes.

Torch-free (it imports `invprop.bounds` only), because params are validated before any
heavy import. No stage lists this module as a dependency (tests/test_stage_deps.py):
a name decides which code runs, never what it computes, so adding one reruns nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from invprop.bounds import max_positives

__all__ = [
    "BACKBONES",
    "BACKGROUNDS",
    "DATASETS",
    "HEADS",
    "HEAD_INITS",
    "NEIGHBOUR_BACKENDS",
    "NEIGHBOUR_INDEXES",
    "POSITIVES",
    "PROPAGATORS",
    "TABLE_REFRESHES",
    "TRAINING_BASELINES",
    "LargestSet",
]

# data.name and transfer.targets: readers in invprop/data/ (invprop.data.DATASETS).
DATASETS = (
    "fashion_mnist",
    "digits",
    "cifar10",
    "cifar100",
    "svhn",
    "stl10",
    "imagefolder",
    "synthetic",
)

# model.backbone: builders in invprop/models/ (invprop.models.BACKBONES).
BACKBONES = ("small_cnn", "resnet18_cifar", "resnet50")

# model.head and model.head_init (invprop.models.HEADS, invprop.models.HEAD_INITS).
HEADS = ("linear", "mlp_no_bn", "mlp_hidden_bn", "mlp_hidden_out_bn")
HEAD_INITS = ("torch", "xavier_uniform")

LargestSet = Callable[[int, int], int]
# pretrain.propagator (invprop.method.PROPAGATORS), each with its largest positive set as a
# function of (k, hops): params refuse a pretrain.n_pos above it, and every propagation is
# checked to be exactly that wide (the function invprop.method.propagate).
PROPAGATORS: dict[str, LargestSet] = {
    "exact": max_positives,
    "concat": max_positives,
}

# pretrain.positives and pretrain.background (invprop.method.POSITIVE_MODES, BACKGROUND_MODES).
POSITIVES = ("hard", "easy")
BACKGROUNDS = ("code", "code_inclusive", "paper")

# pretrain.table_refresh (invprop.training.TABLE_REFRESHES).
TABLE_REFRESHES = ("online", "bank", "clean")

# graph.backend, besides "auto" (invprop.neighbour_search.NEIGHBOUR_BACKENDS), and graph.index.
NEIGHBOUR_BACKENDS = ("faiss", "torch")
NEIGHBOUR_INDEXES = ("flat", "ivf", "hnsw")

# Baselines trained by a stage of their own, named as the baseline (invprop/stages/<name>.py,
# switched by evaluate.baselines.<name>), with their row in the report's results table.
TRAINING_BASELINES: dict[str, str] = {"instance_discrimination": "Instance discrimination"}
