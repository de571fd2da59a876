"""torchrun DDP on the CPU (gloo): the synced BatchNorm and the row gathering against plain
references, and two ranks training exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from invprop.checkpoint import load_checkpoint
from invprop.config import config_from_dict
from invprop.distributed import CpuSyncBatchNorm, Ranks, all_gather_rows, sync_batchnorm
from invprop.errors import InvpropError
from invprop.method import MemoryBank
from invprop.models import Encoder
from invprop.stages.prepare import prepare
from invprop.training import check_fits

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
# 7 rows: shares of 4 and 3, so unequal shares are covered.
BATCH = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(0)) * 3 + 1
WEIGHTS = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(1))


def _sync_worker(rank: int, init_file: str, out_dir: str, channels_last: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    bn = CpuSyncBatchNorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    share = torch.tensor_split(BATCH, WORLD)[rank].clone()
    if channels_last:  # NHWC, as pretrain.channels_last gives it
        share = share.contiguous(memory_format=torch.channels_last)
    share.requires_grad_()
    out = bn(share)
    (out * torch.tensor_split(WEIGHTS, WORLD)[rank]).sum().backward()
    gathered = all_gather_rows(torch.arange(4 - rank) + 10 * rank)
    torch.save(
        {
            "out": out.detach(),
            "grad_input": share.grad,
            "grad_weight": bn.weight.grad,
            "grad_bias": bn.bias.grad,
            "running_mean": bn.running_mean,
            "running_var": bn.running_var,
            "gathered": gathered,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_synced_batchnorm_and_gather_match_one_process_on_the_whole_batch(
    tmp_path: Path, channels_last: bool
) -> None:
    args = (str(tmp_path / "init"), str(tmp_path), channels_last)
    mp.spawn(_sync_worker, args=args, nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    batch = BATCH.clone().requires_grad_()
    out = bn(batch)
    (out * WEIGHTS).sum().backward()

    close = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([r["grad_input"] for r in ranks]), batch.grad, **close)
    # Each rank holds its share's parameter gradient; DDP sums (averages) them.
    torch.testing.assert_close(sum(r["grad_weight"] for r in ranks), bn.weight.grad, **close)
    torch.testing.assert_close(sum(r["grad_bias"] for r in ranks), bn.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, **close)
        torch.testing.assert_close(r["running_var"], bn.running_var, **close)
        assert r["gathered"].tolist() == [0, 1, 2, 3, 10, 11, 12]  # rank order, sizes 4 + 3


def test_one_process_needs_no_process_group() -> None:
    assert not dist.is_initialized()
    rows = torch.arange(5)
    assert all_gather_rows(rows) is rows
    bn = CpuSyncBatchNorm(3)
    torch.testing.assert_close(bn(BATCH), nn.BatchNorm2d(3)(BATCH))


def test_sync_batchnorm_keeps_parameter_names_and_values() -> None:
    encoder = Encoder("small_cnn", 1, "mlp_hidden_out_bn", 8)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    synced = sync_batchnorm(encoder, torch.device("cpu"))
    assert any(isinstance(m, CpuSyncBatchNorm) for m in synced.modules())
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in synced.modules())
    after = synced.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_ranks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Ranks.from_env() == Ranks(0, 1, 0) and Ranks.from_env().is_main
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Ranks.from_env().distributed and not Ranks.from_env().is_main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InvpropError, match="RANK=2 is outside WORLD_SIZE=2"):
        Ranks.from_env()


# ---------------------------------------------------------------------------------------
# Two ranks against one, through the real entry point


# 200 images in batches of 32: six global batches of 34/34/33/33/33/33 images, so the two
# ranks' shares differ by one in four of the steps. One epoch: on tiny data this training
# is chaotic at float-noise level (one process with 1 or 2 threads ends 2 epochs 2e-4
# apart, docs/results.md). How far six steps carry the noise depends on the CPU's kernels:
# 1.8e-6 in weights on the 2026-11-26 machine, 4.7e-5 to 7.2e-5 on the 2026-11-29 one. So
# weights and bank are held to 1e-3; a real defect is far outside it (BatchNorm left
# unsynced: 0.47 in the first convolution, 0.18 in the bank, 1.5% of table rows equal),
# and each epoch's loss is still held to 1e-5.
WEIGHTS_BOUND = 1e-3
PARAMS = {
    "data": {"name": "synthetic", "image_size": 16, "train_limit": 200, "test_limit": 40},
    "model": {"dim": 16, "head": "mlp_hidden_bn"},
    "pretrain": {
        "epochs": 1,
        "batch_size": 32,
        "n_background": 64,
        "n_pos": 8,
        "snapshot_epochs": [],
        "threads": 1,
        "lr": 0.05,
        "table_refresh": "online",  # the authors' refresh: rows gathered from every rank
    },
    "embed": {"tags": ["final"]},
}


def run_pretrain(folder: Path, launcher: list[str], **pretrain: int) -> Path:
    """Run the pretrain stage in `folder` (prepared data linked in); return final.pt."""
    params = {**PARAMS, "pretrain": PARAMS["pretrain"] | pretrain}
    (folder / "data").mkdir(parents=True)
    (folder / "data/prepared").symlink_to(folder.parent / "data/prepared")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*launcher, str(ROOT / "stages/pretrain.py")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # Rank 0 alone reports: one progress line per epoch, one report.
    assert done.stderr.count("[pretrain] epoch=1") == 1, done.stderr
    assert (folder / "reports/pretrain.json").is_file()
    return folder / "models/pretrain/final.pt"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: per tensor, so tiny entries (BatchNorm biases) do not inflate it."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def weights(state: dict) -> torch.Tensor:
    return torch.cat([t.flatten() for t in state["model"].values() if t.is_floating_point()])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared tiny data, and the final checkpoint of one process training on it."""
    root = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepare(config_from_dict(PARAMS), "synthetic")
    return run_pretrain(root / "one", [sys.executable])


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.mark.parametrize(
    ("launcher", "processes"),
    [([*TORCHRUN, f"--nproc_per_node={WORLD}"], 1), ([sys.executable], WORLD)],
    ids=["torchrun", "pretrain.processes"],
)
def test_two_ranks_train_like_one_process(
    one_process: Path, launcher: list[str], processes: int
) -> None:
    folder = one_process.parents[2].parent / f"two-{processes}"
    a = load_checkpoint(one_process)
    b = load_checkpoint(run_pretrain(folder, launcher, processes=processes))
    assert a["params_hash"] == b["params_hash"]  # the process count is bookkeeping
    # Both ranks ended with the same bank (the stage checks their digests), rank 0's here.
    report = json.loads((folder / "reports/pretrain.json").read_text())
    assert report["ranks"] == WORLD
    assert report["bank_sha256"] == MemoryBank.digest_of(b["bank"])
    assert a["model"].keys() == b["model"].keys()
    assert relative_error(weights(b), weights(a)) <= WEIGHTS_BOUND
    for name, tensor in a["model"].items():
        if not tensor.is_floating_point():  # BatchNorm's step counters
            assert torch.equal(b["model"][name], tensor), name
    assert relative_error(b["bank"]["vectors"], a["bank"]["vectors"]) <= WEIGHTS_BOUND
    same_rows = (b["bank"]["neighbours"] == a["bank"]["neighbours"]).all(dim=1)
    assert same_rows.float().mean() >= 0.99  # near-ties may swap under float reordering
    for x, y in zip(a["history"], b["history"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)


def test_a_failing_rank_fails_the_relaunched_stage(one_process: Path) -> None:
    folder = one_process.parents[2].parent / "failing"
    with pytest.raises(AssertionError) as failed:  # run_pretrain asserts a 0 exit
        run_pretrain(folder, [sys.executable], processes=WORLD, n_background=500)
    message = str(failed.value)
    assert "pretrain.n_background = 500 is larger than the memory bank" in message
    assert "the pretrain stage failed in one of its 2 processes" in message
    assert not (folder / "models/pretrain/final.pt").exists()


def test_every_rank_needs_an_image_of_every_batch() -> None:
    cfg = config_from_dict(PARAMS, ["pretrain.batch_size=4"])
    check_fits(cfg, 200, world_size=4)
    with pytest.raises(InvpropError, match="batch_size = 4 is smaller than the 8 training"):
        check_fits(cfg, 200, world_size=8)
