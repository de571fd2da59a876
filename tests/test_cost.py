"""`invprop params cost`: FLOPs of one counted training step, memory and disk from shapes,
each checked against a figure computed plainly here for a tiny config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from invprop.cli import app
from invprop.config import Config, config_from_dict
from invprop.cost import SplitSizes, run_cost, split_sizes
from invprop.data import SourceOptions, get_source
from invprop.errors import InvpropError
from invprop.stages.prepare import prepare
from invprop.training import train
from invprop.workspace import PRETRAIN

N, M = 64, 24  # train (bank rows) and test images
SIZE, DIM, K, BACKGROUND, GRAPH_K = 16, 16, 4, 32, 5
TINY = {
    "data": {"name": "synthetic", "image_size": SIZE, "train_limit": N, "test_limit": M},
    "model": {"backbone": "small_cnn", "head": "mlp_hidden_bn", "dim": DIM},
    "pretrain": {
        "epochs": 3,
        "batch_size": 20,
        "k": K,
        "n_background": BACKGROUND,
        "n_pos": 8,
        "snapshot_epochs": [2],
        "device": "cpu",
        "threads": 1,
    },
    "embed": {"tags": ["final", "epoch_0002"]},
    "graph": {"k": GRAPH_K},
    "propagate": {"k": 4},
    "transfer": {"targets": []},
}

# small_cnn on 16 x 16 grey images: (in, out, output side) of its four 3 x 3 convolutions
# (strides 1, 2, 2, 1), then the head's two Linear layers 256 -> 256 -> DIM.
CONVS = [(1, 32, 16), (32, 64, 8), (64, 128, 4), (128, 256, 4)]
LINEARS = [(256, 256), (256, DIM)]


def tiny(*overrides: str) -> Config:
    return config_from_dict(TINY, overrides)


def conv_flops(c_in: int, c_out: int, side: int) -> int:
    return 2 * c_in * c_out * 9 * side * side  # a multiply-add is 2 FLOPs


FORWARD = sum(conv_flops(*c) for c in CONVS) + sum(2 * a * b for a, b in LINEARS)
# backward: gradients of the weights and of the inputs (2 x forward), but the first
# convolution's input is the image, which needs no gradient
BACKWARD = 2 * FORWARD - conv_flops(*CONVS[0])
BANK_AND_LOSS = 2 * 2 * DIM * N  # S = v V^T [1 x N], forward and its gradient for v

PARAMETERS = (
    sum(c_in * c_out * 9 + 2 * c_out for c_in, c_out, _ in CONVS)  # conv weights, BN affine
    + sum(a * b + b for a, b in LINEARS)  # Linear weights and biases
    + 2 * 256  # the head's BatchNorm1d
)
BN_STATISTICS = sum(2 * c_out for _, c_out, _ in CONVS) + 2 * 256  # running mean and var
BN_COUNTERS = len(CONVS) + 1  # num_batches_tracked, int64
MODEL_BYTES = 4 * (PARAMETERS + BN_STATISTICS) + 8 * BN_COUNTERS


def test_flops_memory_and_disk_match_the_plain_figures() -> None:
    cfg = tiny()
    cost = run_cost(cfg, SplitSizes(N, M, "given"))
    f = cost["flops"]
    assert f["forward_per_image"] == FORWARD
    assert f["encoder_step_per_image"] == FORWARD + BACKWARD
    assert f["bank_and_loss_per_image"] == BANK_AND_LOSS
    assert f["augment_per_image"] == 0  # no blur
    assert f["step_per_image"] == FORWARD + BACKWARD + BANK_AND_LOSS

    # per epoch: N steps' images, the "clean" table rebuild (a forward pass of train and
    # the exact k-NN, N x N dot products), the kNN monitor (test forward, M x N products)
    rebuild = N * FORWARD + 2 * N * N * DIM
    monitor = M * FORWARD + 2 * M * N * DIM
    assert f["per_epoch"]["invp"] == {
        "steps": N * f["step_per_image"],
        "table_rebuild": rebuild,
        "knn_monitor": monitor,
    }
    # the baseline (InvP off) refreshes its table online, in the step
    assert f["per_epoch"]["instance_discrimination"]["table_rebuild"] == 0
    fill = N * FORWARD  # bank_init forward
    assert f["training"]["invp"] == 3 * (N * f["step_per_image"] + rebuild + monitor) + fill
    # embed: two tags and the baseline's final model; the L-BFGS probe runs no network
    assert f["embed_and_evaluate"] == 3 * (N + M) * FORWARD
    assert f["total"] == sum(f["training"].values()) + f["embed_and_evaluate"]

    memory = cost["memory_bytes"]
    assert memory["bank"] == N * DIM * 4
    assert memory["table"] == N * K * 8
    assert memory["similarities"] == 20 * N * 4
    assert memory["top_m"] == 20 * BACKGROUND * (4 + 8)
    assert memory["model"] == MODEL_BYTES
    assert memory["optimizer"] == 4 * PARAMETERS  # one momentum per parameter

    disk = cost["disk_bytes"]
    checkpoint = MODEL_BYTES + 4 * PARAMETERS + N * DIM * 4 + N * K * 8
    assert disk["checkpoint"] == disk["per_snapshot"] == disk["written_per_epoch"] == checkpoint
    assert disk["embeddings_per_tag"] == (N + M) * ((256 + DIM) * 4 + 8)
    assert disk["graph_per_tag"] == N * (GRAPH_K * (8 + 4) + 8)
    # last.pt, final.pt and a snapshot for InvP and for its baseline; three embeddings
    # (two tags and the baseline's), a graph per tag
    expected = 6 * checkpoint + 3 * disk["embeddings_per_tag"] + 2 * disk["graph_per_tag"]
    assert disk["total"] == expected
    assert cost["steps_per_epoch"] == 3 and cost["trainings"] == ["invp", "instance_discrimination"]


def test_the_blur_is_counted_as_the_augmentation_s() -> None:
    f = run_cost(tiny("augment.blur_p=1.0"), SplitSizes(N, M, "given"))["flops"]
    assert f["augment_per_image"] > 0
    assert f["bank_and_loss_per_image"] == BANK_AND_LOSS
    assert f["step_per_image"] == FORWARD + BACKWARD + BANK_AND_LOSS + f["augment_per_image"]


def test_the_augmented_probe_and_a_random_bank_are_counted() -> None:
    cfg = tiny(
        "evaluate.linear.protocol=sgd_augmented",
        "evaluate.linear.epochs=7",
        "evaluate.baselines.instance_discrimination=false",
        "pretrain.bank_init=random",
        "pretrain.table_refresh=online",
        "pretrain.monitor_knn=false",
    )
    f = run_cost(cfg, SplitSizes(N, M, "given"))["flops"]
    assert f["per_epoch"] == {
        "invp": {"steps": N * f["step_per_image"], "table_rebuild": 0, "knn_monitor": 0}
    }
    assert f["training"] == {"invp": 3 * N * f["step_per_image"]}  # no forward bank fill
    assert f["embed_and_evaluate"] == 2 * (N + M) * FORWARD + 7 * N * FORWARD


def test_a_checkpoint_on_disk_is_the_estimate_plus_its_zip_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny("pretrain.epochs=1", "pretrain.snapshot_epochs=[]", "embed.tags=[final]")
    prepare(cfg, "synthetic")
    train(cfg)
    estimate = run_cost(cfg, split_sizes(cfg))["disk_bytes"]["checkpoint"]
    size = PRETRAIN.final.stat().st_size
    assert estimate <= size <= estimate + 64 * 1024, (estimate, size)


def test_split_sizes_come_from_the_caller_the_prepared_data_or_the_published_splits(
    tmp_path: Path,
) -> None:
    cfg = config_from_dict({"data": {"name": "cifar10"}, "transfer": {"targets": []}})
    assert split_sizes(cfg, root=tmp_path) == SplitSizes(
        50_000, 10_000, "cifar10's published split sizes"
    )
    limited = config_from_dict(
        {"data": {"name": "cifar10", "train_limit": 700}, "transfer": {"targets": []}}
    )
    assert split_sizes(limited, root=tmp_path).train == 700
    assert split_sizes(cfg, 5, 6, root=tmp_path) == SplitSizes(5, 6, "given")
    assert split_sizes(cfg, train=5, root=tmp_path) == SplitSizes(
        5, 10_000, "cifar10's published split sizes"
    )

    prepared = tiny("data.train_limit=30")
    prepare(prepared, "synthetic", tmp_path / "data/prepared/synthetic", tmp_path / "p.json")
    sizes = split_sizes(prepared, root=tmp_path)
    assert (sizes.train, sizes.test) == (30, M)
    assert sizes.source.endswith("data/prepared/synthetic/meta.json")
    # prepared with other limits: the published sizes, limited, instead
    assert split_sizes(tiny(), root=tmp_path).source == "synthetic's published split sizes"

    folder = config_from_dict(
        {"data": {"name": "imagefolder", "root": "/data/imagenet"}, "transfer": {"targets": []}}
    )
    with pytest.raises(InvpropError, match="pass --train-images and --test-images"):
        split_sizes(folder, root=tmp_path)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_published_sizes_are_what_the_reader_gives(name: str) -> None:
    opts = SourceOptions(name, None, "data.root", False, 28, 1, None, None)
    raw = get_source(name).read(opts)
    assert get_source(name).sizes == (len(raw.train), len(raw.test))


def test_cli_prints_the_cost_as_a_table_and_as_json(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    runner = CliRunner()
    common = ["params", "cost", "--params", str(params), "--train-images", str(N)]
    result = runner.invoke(app, [*common, "--test-images", str(M), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == {"params": str(params), **run_cost(tiny(), SplitSizes(N, M, "given"))}

    result = runner.invoke(app, [*common, "--test-images", str(M), "--set", "pretrain.k=3"])
    assert result.exit_code == 0, result.output
    assert "FLOPs per trained image" in result.output
    assert re.search(r"neighbour table \(int64\) +│ 1\.5 KiB", result.output)  # 64 x 3 x 8 B

    folder = tmp_path / "folder.yaml"
    folder.write_text(yaml.safe_dump({"data": {"name": "imagefolder", "root": "/x"}}))
    result = runner.invoke(app, ["params", "cost", "--params", str(folder)])
    assert result.exit_code == 2
    assert result.output.startswith("error: the size of imagefolder") and "\n" not in (
        result.output.strip()
    )
